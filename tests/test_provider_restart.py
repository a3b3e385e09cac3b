"""A provider's acknowledged webhooks survive kill -9 of ``voicehub serve``.

A real server subprocess with Twilio credentials (from the environment, as in production)
answers a signed voice webhook with its TwiML (200) and is then killed with SIGKILL before
the next event; after a restart the call is there, the call's status callback applies to
it, and Twilio's retry of the same webhook is answered for the same call.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from server_support import Spawned, free_port, http
from twilio_support import ACCOUNT_SID, AUTH_TOKEN, TwilioPhone, sid, status_params, voice_params
from twilio_support import stream_of as twiml_stream

from providers.twilio.twiml import CALL_ID_PARAM

PUBLIC = "https://voice.example.test"
ENV = {
    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "VOICEHUB_PUBLIC_URL": PUBLIC,
    "VOICEHUB_MEDIA": "false",
}


async def start(data: Path) -> Spawned:
    s = Spawned(data, free_port(), env=ENV)
    await s.ready()
    return s


async def sql(s: Spawned, query: str, params: Any = None) -> list[dict[str, Any]]:
    owner = (s.data_dir / "owner.token").read_text().strip()
    status, body = await http(
        "POST",
        s.http_url + "/v1/sql",
        {"sql": query, "params": params},
        {"Authorization": f"Bearer {owner}"},
    )
    assert status == 200, body
    return [dict(zip(body["columns"], r)) for r in body["rows"]]


async def test_an_acknowledged_webhook_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = await start(data)
    try:
        phone = TwilioPhone(s.http_url, PUBLIC)
        call_sid = sid("CA")
        ans = await phone.post("/providers/twilio/voice", voice_params(call_sid))
        assert ans.status == 200, ans.body
        call_id = int(twiml_stream(ans.body)[1][CALL_ID_PARAM])
        st = await phone.post("/providers/twilio/status", status_params(call_sid, "ringing", 1))
        assert st.status == 204
    finally:
        assert await s.stop(signal.SIGKILL) == -signal.SIGKILL
    s = await start(data)
    try:
        (call,) = await sql(
            s, "SELECT id, status FROM calls WHERE provider_call_id = $1", [call_sid]
        )
        assert call == {"id": call_id, "status": "ringing"}
        phone = TwilioPhone(s.http_url, PUBLIC)
        st = await phone.post("/providers/twilio/status", status_params(call_sid, "in-progress", 2))
        assert st.status == 204
        (call,) = await sql(s, "SELECT status FROM calls WHERE id = $1", [call_id])
        assert call["status"] == "in_progress"
        events = await sql(
            s, "SELECT kind, applied FROM call_events WHERE call_id = $1 ORDER BY id", [call_id]
        )
        assert [(e["kind"], e["applied"]) for e in events] == [
            ("ringing", False),
            ("in_progress", True),
        ]
        again = await phone.post("/providers/twilio/voice", voice_params(call_sid))  # a retry
        assert again.status == 200
        assert int(twiml_stream(again.body)[1][CALL_ID_PARAM]) == call_id
        assert len(await sql(s, "SELECT id FROM calls")) == 1
    finally:
        await s.stop(signal.SIGKILL)
