"""Call control through the (fake, loopback) Twilio REST API: ``hangup`` and ``transfer``
commands become exactly one form-encoded call update each and a ``command_result``;
Twilio's refusals are recorded as failures with Twilio's code and message; after a
restart, in-progress calls are redirected to a fresh ``<Connect><Stream>`` and the new
stream attaches to the same call."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from provider_support import PUBLIC_URL, ProviderNode, provider_node
from server_support import eventually
from twilio_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FakeTwilio,
    TwilioPhone,
    fake_twilio,
    media_stream,
    sid,
    status_params,
    stream_of,
    voice_params,
)

from providers.config import TwilioConfig
from providers.twilio.twiml import CALL_ID_PARAM, TOKEN_PARAM


async def live_call(srv: ProviderNode) -> tuple[str, int]:
    """An answered inbound call: (CallSid, call id)."""
    phone = TwilioPhone(srv.http_url, PUBLIC_URL)
    call_sid = sid("CA")
    ans = await phone.post("/providers/twilio/voice", voice_params(call_sid))
    assert ans.status == 200
    call_id = int(stream_of(ans.body)[1][CALL_ID_PARAM])
    st = await phone.post("/providers/twilio/status", status_params(call_sid, "in-progress", 1))
    assert st.status == 204
    return call_sid, call_id


def command(srv: ProviderNode, command_id: int) -> dict[str, Any]:
    (row,) = srv.sql("SELECT * FROM call_commands WHERE id = $1", [command_id])
    return row


async def finished(srv: ProviderNode, command_id: int) -> dict[str, Any]:
    await eventually(lambda: command(srv, command_id)["status"] in ("done", "failed"))
    return command(srv, command_id)


def config(cloud: FakeTwilio) -> TwilioConfig:
    return TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, api_base_url=cloud.base_url)


async def test_hangup_posts_status_completed_once(tmp_path: Path) -> None:
    async with fake_twilio() as cloud, provider_node(tmp_path, twilio=config(cloud)) as srv:
        call_sid, call_id = await live_call(srv)
        client = srv.adapters["twilio"].ctx.client
        res = await client.call("hangup", {"call_id": call_id}, request_id="test:hangup")
        row = await finished(srv, res["command_id"])
        assert row["status"] == "done", row
        assert row["result"]["sid"] == call_sid and row["result"]["status"] == "completed"
        (req,) = cloud.updates()
        assert req.method == "POST"
        assert req.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call_sid}.json"
        assert req.content_type.startswith("application/x-www-form-urlencoded")
        assert req.auth == (ACCOUNT_SID, AUTH_TOKEN)
        assert req.form == {"Status": ["completed"]}
        # a repeated hangup request is the same command: nothing more reaches Twilio
        again = await client.call("hangup", {"call_id": call_id}, request_id="test:hangup2")
        assert again["command_id"] == res["command_id"]
        await eventually(lambda: srv.adapters["twilio"].executor.performed == 1)
        assert len(cloud.updates()) == 1


async def test_transfer_sends_dial_twiml(tmp_path: Path) -> None:
    async with fake_twilio() as cloud, provider_node(tmp_path, twilio=config(cloud)) as srv:
        client = srv.adapters["twilio"].ctx.client
        for target, noun in (("sip:agent@pbx.example.com", "Sip"), ("+15551234567", "Number")):
            call_sid, call_id = await live_call(srv)
            res = await client.call("transfer", {"call_id": call_id, "target": target})
            row = await finished(srv, res["command_id"])
            assert row["status"] == "done", row
            (req,) = cloud.updates(call_sid)
            assert set(req.form) == {"Twiml"}
            root = ET.fromstring(req.form["Twiml"][0])
            el = root.find(f"./Dial/{noun}")
            assert el is not None and el.text == target


async def test_the_stop_of_a_transfer_does_not_end_the_call(tmp_path: Path) -> None:
    """Twilio stops the media stream when voicehub replaces the TwiML (transfer): that stop
    is the redirect's; a stop voicehub did not cause is the caller hanging up."""
    async with fake_twilio() as cloud, provider_node(tmp_path, twilio=config(cloud)) as srv:
        client = srv.adapters["twilio"].ctx.client
        phone = TwilioPhone(srv.http_url, PUBLIC_URL)

        async def streamed_call() -> tuple[str, int, dict[str, str]]:
            call_sid = sid("CA")
            ans = await phone.post("/providers/twilio/voice", voice_params(call_sid))
            params = stream_of(ans.body)[1]
            return call_sid, int(params[CALL_ID_PARAM]), params

        def status(call_id: int) -> str:
            return str(srv.sql("SELECT status FROM calls WHERE id = $1", [call_id])[0]["status"])

        call_sid, call_id, params = await streamed_call()
        async with media_stream(srv.ws_base, call_sid) as tw:
            await tw.connected()
            await tw.start(params)
            await eventually(lambda: srv.sessions.get(call_id) is not None)
            res = await client.call("transfer", {"call_id": call_id, "target": "+15551234567"})
            assert (await finished(srv, res["command_id"]))["status"] == "done"
            await tw.stop()
            await eventually(lambda: srv.sessions.get(call_id) is None)
        assert status(call_id) == "in_progress"
        other_sid, other_id, other = await streamed_call()
        async with media_stream(srv.ws_base, other_sid) as tw:
            await tw.connected()
            await tw.start(other)
            await eventually(lambda: srv.sessions.get(other_id) is not None)
            await tw.stop()
        await eventually(lambda: status(other_id) == "ended")


async def test_twilio_refusal_is_a_failed_command(tmp_path: Path) -> None:
    async with fake_twilio() as cloud, provider_node(tmp_path, twilio=config(cloud)) as srv:
        call_sid, call_id = await live_call(srv)
        cloud.errors[call_sid] = (400, 21220, "Call is not in-progress. Cannot redirect.")
        client = srv.adapters["twilio"].ctx.client
        res = await client.call("transfer", {"call_id": call_id, "target": "+15551234567"})
        row = await finished(srv, res["command_id"])
        assert row["status"] == "failed"
        assert "21220" in row["error"] and "Cannot redirect" in row["error"]
        assert len(cloud.updates(call_sid)) == 1


async def test_wrong_credentials_fail_with_twilio_auth_error(tmp_path: Path) -> None:
    async with fake_twilio() as cloud:
        cfg = TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, api_base_url=cloud.base_url)
        cloud.auth_token = "rotated"
        async with provider_node(tmp_path, twilio=cfg) as srv:
            _, call_id = await live_call(srv)
            client = srv.adapters["twilio"].ctx.client
            res = await client.call("hangup", {"call_id": call_id})
            row = await finished(srv, res["command_id"])
            assert row["status"] == "failed" and "20003" in row["error"]


async def test_restart_reattaches_in_progress_calls(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with fake_twilio() as cloud:
        async with provider_node(data, twilio=config(cloud)) as srv:
            call_sid, call_id = await live_call(srv)
            ended_sid, _ = await live_call(srv)
            phone = TwilioPhone(srv.http_url, PUBLIC_URL)
            done = status_params(ended_sid, "completed", 2)
            assert (await phone.post("/providers/twilio/status", done)).status == 204
            assert not cloud.updates()
        async with provider_node(data, twilio=config(cloud)) as srv:
            outcome = await srv.adapters["twilio"].reattached_all()
            assert outcome[call_id]["ok"] is True
            (req,) = cloud.updates()  # the ended call is left alone
            assert req.call_sid == call_sid
            url, params = stream_of(req.form["Twiml"][0])
            assert url == "wss://voice.example.test/providers/twilio/media"
            assert params[CALL_ID_PARAM] == str(call_id)
            async with media_stream(srv.ws_base, call_sid) as tw:
                await tw.connected()
                await tw.start(params)
                await eventually(lambda: srv.sessions.get(call_id) is not None)
                session = srv.sessions.get(call_id)
                assert session is not None and session.provider_call_id == call_sid
            (call,) = srv.sql("SELECT status FROM calls WHERE id = $1", [call_id])
            assert call["status"] == "in_progress"
            assert len(srv.sql("SELECT id FROM calls WHERE provider_call_id = $1", [call_sid])) == 1
            assert params[TOKEN_PARAM]
