"""The Twilio voice webhook, status and recording callbacks on a real node (uvicorn on
loopback, adapter mounted by the composition root): rows written once however often
Twilio retries, TwiML with the stream URL and parameters, every unsigned, forged or
tampered request refused with 403 and nothing but an audit entry, out-of-order status
callbacks that never move a call backwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from provider_support import PUBLIC_URL, ProviderNode, provider_node
from twilio_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    TwilioPhone,
    fake_twilio,
    sid,
    status_params,
    stream_of,
    twilio_signature,
    voice_params,
)
from voice_support import state

from providers.config import TwilioConfig
from providers.twilio.twiml import CALL_ID_PARAM, TOKEN_PARAM

VOICE = "/providers/twilio/voice"
STATUS = "/providers/twilio/status"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[ProviderNode, TwilioPhone]]:
    async with fake_twilio() as cloud:
        cfg = TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, api_base_url=cloud.base_url)
        async with provider_node(tmp_path / "data", twilio=cfg) as srv:
            yield srv, TwilioPhone(srv.http_url, PUBLIC_URL)


def calls(srv: ProviderNode, pcid: str) -> list[dict[str, Any]]:
    return srv.sql("SELECT * FROM calls WHERE provider_call_id = $1", [pcid])


async def test_inbound_call_creates_its_rows_once(node: tuple[ProviderNode, TwilioPhone]) -> None:
    srv, phone = node
    call_sid = sid("CA")
    params = voice_params(call_sid, Unknown_Future_Field="whatever")
    first = await phone.post(VOICE, params)
    assert first.status == 200, first.body
    assert first.content_type.startswith("text/xml")
    url, ps = stream_of(first.body)
    assert url == "wss://voice.example.test/providers/twilio/media"
    (call,) = calls(srv, call_sid)
    assert ps[CALL_ID_PARAM] == str(call["id"])
    assert srv.adapters["twilio"].ctx.tokens.check(ps[TOKEN_PARAM]) == call["id"]
    assert call["direction"] == "inbound" and call["status"] == "ringing"
    assert call["from_number"] == "+14155550100"
    assert call["jurisdiction"] in ("US-CA", "US-WA")  # the strictest of the two
    parts = srv.sql(
        "SELECT role, identity, jurisdiction FROM participants WHERE call_id = $1", [call["id"]]
    )
    assert sorted((p["role"], p["identity"], p["jurisdiction"]) for p in parts) == [
        ("ai", "+12065550199", "US-WA"),
        ("caller", "+14155550100", "US-CA"),
    ]
    before = state(srv.node.db)["participants"]
    again = await phone.post(VOICE, params)  # Twilio retrying the webhook
    assert again.status == 200
    assert len(calls(srv, call_sid)) == 1
    assert state(srv.node.db)["participants"] == before
    assert stream_of(again.body)[1][CALL_ID_PARAM] == str(call["id"])


async def test_outbound_and_non_us_directions(node: tuple[ProviderNode, TwilioPhone]) -> None:
    srv, phone = node
    for direction in ("outbound-api", "outbound-dial"):
        call_sid = sid("CA")
        over = {"Direction": direction, "ToCountry": "GB", "ToState": "London"}
        assert (await phone.post(VOICE, voice_params(call_sid, **over))).status == 200
        (call,) = calls(srv, call_sid)
        assert call["direction"] == "outbound"
        callee = srv.sql(
            "SELECT identity, jurisdiction FROM participants"
            " WHERE call_id = $1 AND role = 'callee'",
            [call["id"]],
        )
        assert callee == [{"identity": "+12065550199", "jurisdiction": "GB"}]


def _without_audit(s: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    return {k: v for k, v in s.items() if k != "auth_audit"}


async def test_forged_requests_are_refused_and_leave_only_an_audit_entry(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid = sid("CA")
    params = voice_params(call_sid)
    good = twilio_signature(AUTH_TOKEN, PUBLIC_URL + VOICE, params)
    attempts = {
        "missing": dict(signature=None),
        "forged": dict(signature=twilio_signature("not-the-token", PUBLIC_URL + VOICE, params)),
        "wrong_url": dict(signed_url="https://evil.example/providers/twilio/voice"),
        "loopback_url": dict(signed_url=srv.http_url + VOICE),
        "garbage": dict(signature="AAAA"),
    }
    before = _without_audit(state(srv.node.db))
    audits = len(srv.audit_rows())
    for name, kw in attempts.items():
        ans = await phone.post(VOICE, params, **kw)  # type: ignore[arg-type]
        assert ans.status == 403, name
    # tampered: a valid signature, one parameter changed in flight
    tampered = {**params, "From": "+19995550000"}
    assert (await phone.post(VOICE, tampered, signature=good)).status == 403
    # the same on the status callback
    st = status_params(call_sid, "completed", 3)
    assert (await phone.post(STATUS, st, signature="bogus")).status == 403
    assert _without_audit(state(srv.node.db)) == before
    rows = srv.audit_rows()
    assert len(rows) > audits  # rate-limited per reason/address, but recorded
    assert not calls(srv, call_sid)


async def test_port_variants_and_query_strings_are_accepted(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    a, b, c = sid("CA"), sid("CA"), sid("CA")
    with_port = "https://voice.example.test:443" + VOICE
    assert (await phone.post(VOICE, voice_params(a), signed_url=with_port)).status == 200
    assert (await phone.post(VOICE, voice_params(b), query="tenant=acme&x=1")).status == 200
    # the query string is signed: dropping it from the signed URL is a tamper
    signed = PUBLIC_URL + VOICE
    ans = await phone.post(VOICE, voice_params(c), query="tenant=acme", signed_url=signed)
    assert ans.status == 403
    assert calls(srv, a) and calls(srv, b) and not calls(srv, c)


async def test_status_callbacks_in_and_out_of_order(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid = sid("CA")
    assert (await phone.post(VOICE, voice_params(call_sid))).status == 200
    # completed (seq 3) overtakes in-progress (seq 2); Twilio retries completed
    for p in (
        status_params(call_sid, "ringing", 1),
        status_params(call_sid, "completed", 3),
        status_params(call_sid, "completed", 3),
        status_params(call_sid, "in-progress", 2),
        status_params(call_sid, "in-progress", 2),
    ):
        ans = await phone.post(STATUS, p)
        assert ans.status == 204, ans.body
    (call,) = calls(srv, call_sid)
    assert call["status"] == "ended" and call["end_reason"] == "completed"
    events = srv.sql(
        "SELECT provider_event_id, kind, applied FROM call_events WHERE provider_call_id = $1",
        [call_sid],
    )
    by_kind = sorted((e["kind"], e["applied"]) for e in events)
    assert by_kind == [("completed", True), ("ringing", False), ("stale_in_progress", False)]
    assert len({e["provider_event_id"] for e in events}) == 3


async def test_status_callbacks_in_order_answer_then_end(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid = sid("CA")
    assert (await phone.post(VOICE, voice_params(call_sid))).status == 200
    assert (await phone.post(STATUS, status_params(call_sid, "in-progress", 1))).status == 204
    (call,) = calls(srv, call_sid)
    assert call["status"] == "in_progress" and call["answered_at"] is not None
    # a stale no-answer (lower sequence) cannot end an answered call
    assert (await phone.post(STATUS, status_params(call_sid, "no-answer", 0))).status == 204
    assert calls(srv, call_sid)[0]["status"] == "in_progress"
    assert (await phone.post(STATUS, status_params(call_sid, "completed", 2))).status == 204
    (call,) = calls(srv, call_sid)
    assert call["status"] == "ended" and call["end_reason"] == "completed"


async def test_busy_outbound_call_known_only_from_callbacks(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid = sid("CA")
    over = {"Direction": "outbound-api"}
    assert (await phone.post(STATUS, status_params(call_sid, "initiated", 0, **over))).status == 204
    assert (await phone.post(STATUS, status_params(call_sid, "busy", 1, **over))).status == 204
    (call,) = calls(srv, call_sid)
    assert call["direction"] == "outbound"
    assert call["status"] == "ended" and call["end_reason"] == "busy"


async def test_recording_and_stream_callbacks_are_events(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid = sid("CA")
    assert (await phone.post(VOICE, voice_params(call_sid))).status == 200
    rec = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call_sid,
        "RecordingSid": sid("RE"),
        "RecordingStatus": "completed",
        "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC/Recordings/RE1",
        "RecordingDuration": "12",
        "RecordingChannels": "1",
        "RecordingSource": "StartCallRecordingAPI",
        "RecordingStartTime": "Mon, 16 Aug 2010 03:45:01 +0000",
    }
    for _ in range(2):
        assert (await phone.post("/providers/twilio/recording", rec)).status == 204
    stream = {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call_sid,
        "StreamSid": sid("MZ"),
        "StreamName": "voicehub",
        "StreamEvent": "stream-started",
        "Timestamp": "2026-01-01T00:00:00.000Z",
    }
    assert (await phone.post("/providers/twilio/stream-status", stream)).status == 204
    assert (await phone.post("/providers/twilio/recording", rec, signature=None)).status == 403
    events = srv.sql(
        "SELECT kind, payload FROM call_events WHERE provider_call_id = $1", [call_sid]
    )
    kinds = sorted(e["kind"] for e in events)
    assert kinds == ["recording_completed", "stream_started"]
    recorded = next(e for e in events if e["kind"] == "recording_completed")
    assert recorded["payload"]["RecordingUrl"] == rec["RecordingUrl"]


async def test_console_urls(node: tuple[ProviderNode, TwilioPhone]) -> None:
    srv, _ = node
    urls = srv.adapters["twilio"].console_urls()
    assert urls["Voice webhook (POST)"] == PUBLIC_URL + VOICE
    assert urls["Status callback (POST)"] == PUBLIC_URL + STATUS


def test_the_cached_stream_answer_equals_a_freshly_built_one() -> None:
    from providers.twilio import twiml

    for hold, cb in ((0, None), (120, "https://x.example/providers/twilio/stream-status")):
        got = twiml.connect_stream("wss://x.example/m", 42, "v1.42.9.ab12.cd34", cb, hold)
        want = twiml._build_stream("wss://x.example/m", "42", "v1.42.9.ab12.cd34", cb, hold)
        assert got == want
    with pytest.raises(ValueError, match="stream token"):
        twiml.connect_stream("wss://x.example/m", 1, 'v1"/><Hangup/>', None, 0)
