"""The Vonage answer and event webhooks over real HTTP on a real node: signed-webhook
verification (HS256 JWT + payload_hash + iat, produced here independently of the adapter),
the answer NCCO built from the SDK's models, idempotent retries, out-of-order events, and
the synchronous ``disconnected`` event of the media connect."""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from vonage_support import (
    APPLICATION_ID,
    CALLER,
    SIGNATURE_SECRET,
    VIRTUAL_NUMBER,
    VonageNode,
    compact,
    fake_vonage,
    request,
    sign,
    status_event,
    vonage_node,
    websocket_endpoint,
)

from providers.vonage.ncco import CALL_ID_HEADER, CONTENT_TYPE, TOKEN_HEADER


async def _answered(srv: VonageNode, uuid: str) -> tuple[int, list[dict[str, Any]]]:
    r = await srv.answer(uuid)
    assert r.status == 200, r.body
    ncco = r.json()
    ep = websocket_endpoint(ncco)
    return int(ep["headers"][CALL_ID_HEADER]), ncco


async def test_answer_creates_the_call_once_and_connects_it_to_the_media_socket(
    tmp_path: Path,
) -> None:
    async with fake_vonage() as fake, vonage_node(tmp_path, fake) as srv:
        call_id, ncco = await _answered(srv, "u-answer-1")
        ep = websocket_endpoint(ncco)
        assert ep["uri"] == srv.media_url()
        assert ep["content-type"] == CONTENT_TYPE == "audio/l16;rate=16000"
        assert ep["headers"][TOKEN_HEADER].startswith(f"v1.{call_id}.")
        assert ep["headers"]["uuid"] == "u-answer-1"
        (connect,) = [a for a in ncco if a["action"] == "connect"]
        assert connect["eventType"] == "synchronous"
        assert connect["eventUrl"] == [f"{srv.http_url}/providers/vonage/event"]
        assert connect["from"] == CALLER
        row = srv.call_row(call_id)
        assert (row["provider"], row["provider_call_id"], row["status"]) == (
            "vonage",
            "u-answer-1",
            "ringing",
        )
        assert (row["from_number"], row["to_number"]) == (f"+{CALLER}", f"+{VIRTUAL_NUMBER}")
        before = srv.state()
        again, ncco2 = await _answered(srv, "u-answer-1")  # Vonage retried the webhook
        assert again == call_id
        assert websocket_endpoint(ncco2)["headers"][TOKEN_HEADER] != ep["headers"][TOKEN_HEADER]
        assert srv.state()["calls"] == before["calls"]
        assert srv.state()["participants"] == before["participants"]
        assert len(srv.rows("SELECT id FROM calls")) == 1
        # POST with a JSON body works the same
        body = compact({"uuid": "u-answer-2", "from": CALLER, "to": VIRTUAL_NUMBER})
        r = await request(
            "POST",
            f"{srv.http_url}/providers/vonage/answer",
            body,
            {"Authorization": sign(body), "Content-Type": "application/json"},
        )
        assert r.status == 200 and websocket_endpoint(r.json())["headers"][CALL_ID_HEADER]
        assert len(srv.rows("SELECT id FROM calls")) == 2
        assert srv.adapter.console_urls() == {
            "Answer URL (GET)": f"{srv.http_url}/providers/vonage/answer",
            "Event URL (POST)": f"{srv.http_url}/providers/vonage/event",
        }


def _forgeries(body: bytes) -> dict[str, str | None]:
    return {
        "missing": "",
        "not_bearer": "Basic abc",
        "garbage": "Bearer not.a.jwt",
        "two_parts": "Bearer abc.def",
        "other_secret": sign(body, secret="another-secret-entirely-0123456789abcdef"),
        "stale_iat": sign(body, iat=time.time() - 3600),
        "future_iat": sign(body, iat=time.time() + 3600),
        "expired": sign(body, exp=int(time.time()) - 10),
        "tampered": sign(body + b" "),  # hash of another body
        "wrong_hash": sign(body, payload_hash=hashlib.sha256(b"x").hexdigest()),
        "no_hash": sign(body, omit_hash=True),
        "other_app": sign(body, application_id="ffffffff-0000-0000-0000-000000000000"),
        "none_alg": "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpYXQiOjF9.",
    }


async def test_event_signatures_are_verified_and_rejections_change_nothing(
    tmp_path: Path,
) -> None:
    async with fake_vonage() as fake, vonage_node(tmp_path, fake) as srv:
        call_id, _ = await _answered(srv, "u-sig")
        body = compact(status_event("u-sig", "answered", "2026-01-01T00:00:01.000Z"))
        before = srv.state()
        for name, auth in _forgeries(body).items():
            n = len(srv.refusals)
            r = await srv.event({}, auth=auth, raw=body)
            assert r.status == 401, (name, r.status, r.body)
            assert len(srv.refusals) == n + 1, name
            assert srv.state() == before, f"{name}: a refused webhook changed the store"
        assert srv.call_row(call_id)["status"] == "ringing"
        reasons = {reason for reason, _ in srv.refusals}
        assert {"missing_signature", "malformed_signature", "forged_signature"} <= reasons
        assert {"stale_signature", "payload_mismatch", "wrong_account"} <= reasons
        assert srv.audit_rows(), "refusals reach the security audit"
        # the genuine one is accepted and applied
        r = await srv.event({}, raw=body)
        assert r.status == 200
        assert srv.call_row(call_id)["status"] == "in_progress"
        # a replay of the identical event (same id) is idempotent
        n_events = len(srv.rows("SELECT id FROM call_events"))
        r = await srv.event({}, raw=body)
        assert r.status == 200
        assert len(srv.rows("SELECT id FROM call_events")) == n_events


async def test_answer_webhook_must_be_signed(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(tmp_path, fake) as srv:
        q = {"to": VIRTUAL_NUMBER, "from": CALLER, "uuid": "u-unsigned"}
        url = f"{srv.http_url}/providers/vonage/answer?{urllib.parse.urlencode(q)}"
        assert (await request("GET", url)).status == 401
        forged = sign(q, secret="x" * 40)
        assert (await request("GET", url, headers={"Authorization": forged})).status == 401
        tampered = dict(q, to="15550000000")
        bad = sign(tampered)
        assert (await request("GET", url, headers={"Authorization": bad})).status == 401
        assert srv.rows("SELECT id FROM calls") == []
        assert [r for r, _ in srv.refusals] == [
            "missing_signature",
            "forged_signature",
            "payload_mismatch",
        ]
        good = sign(q)
        assert (await request("GET", url, headers={"Authorization": good})).status == 200
        assert len(srv.rows("SELECT id FROM calls")) == 1
        # a captured answer webhook replayed verbatim gets no second media token
        replay = await request("GET", url, headers={"Authorization": good})
        assert replay.status == 401 and srv.refusals[-1][0] == "replayed_signature"
        assert SIGNATURE_SECRET and APPLICATION_ID  # the node was configured with these


@pytest.mark.parametrize(
    ("order", "status", "end_reason"),
    [
        (["started", "ringing", "answered", "completed"], "ended", "completed"),
        (["completed", "answered", "ringing"], "ended", "completed"),
        (["answered", "ringing", "started", "answered"], "in_progress", None),
        (["answered", "busy", "timeout"], "in_progress", None),
        (["busy", "answered"], "ended", "busy"),
        (["unanswered"], "ended", "no_answer"),
        (["cancelled", "answered"], "ended", "canceled"),
        (["rejected"], "ended", "failed"),
    ],
)
async def test_events_in_and_out_of_order(
    tmp_path: Path, order: list[str], status: str, end_reason: str | None
) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id, _ = await _answered(srv, "u-order")
        sent = []
        for i, st in enumerate(order):
            ev = status_event("u-order", st, f"2026-01-01T00:00:0{i}.000Z")
            sent.append(ev)
            assert (await srv.event(ev)).status == 200
        for ev in sent:  # every event delivered twice (Vonage retries)
            assert (await srv.event(ev)).status == 200
        row = srv.call_row(call_id)
        assert (row["status"], row["end_reason"]) == (status, end_reason)
        events = srv.rows("SELECT provider_event_id FROM call_events")
        assert len(events) == len(order)


async def test_websocket_leg_events_never_end_the_call(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id, ncco = await _answered(srv, "u-wsleg")
        await srv.event(status_event("u-wsleg", "answered", "2026-01-01T00:00:01Z"))
        ws_to = websocket_endpoint(ncco)["uri"]
        for st in ("completed", "failed"):
            ev = status_event("ws-leg-1", st, "2026-01-01T00:00:02Z", to=ws_to)
            ev["headers"] = {CALL_ID_HEADER: str(call_id)}
            r = await srv.event(ev)
            assert r.status == 200
        assert srv.call_row(call_id)["status"] == "in_progress"
        kinds = {
            k for (k,) in srv.rows("SELECT kind FROM call_events WHERE call_id = $1", [call_id])
        }
        assert {"websocket_completed", "websocket_failed"} <= kinds


async def test_disconnected_event_answers_a_fresh_connect(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id, ncco = await _answered(srv, "u-disc")
        first = websocket_endpoint(ncco)
        await srv.event(status_event("u-disc", "answered", "2026-01-01T00:00:01Z"))
        ev = status_event("ws-leg-2", "disconnected", "2026-01-01T00:00:05Z", to=first["uri"])
        ev["headers"] = dict(first["headers"])
        r = await srv.event(ev)
        assert r.status == 200
        again = websocket_endpoint(r.json())
        assert again["uri"] == first["uri"] and again["content-type"] == CONTENT_TYPE
        assert again["headers"][CALL_ID_HEADER] == str(call_id)
        assert again["headers"][TOKEN_HEADER] != first["headers"][TOKEN_HEADER]
        assert srv.adapter.ctx.tokens.check(again["headers"][TOKEN_HEADER]) == call_id
        # a non-disconnect event gets no NCCO
        r = await srv.event(status_event("u-disc", "ringing", "2026-01-01T00:00:06Z"))
        assert r.status == 200 and r.body == b""
        # once the call ended, a disconnect gets a goodbye instead of a reconnect
        await srv.event(status_event("u-disc", "completed", "2026-01-01T00:00:07Z"))
        ev["timestamp"] = "2026-01-01T00:00:08Z"
        r = await srv.event(ev)
        assert [a["action"] for a in r.json()] == ["talk"]


async def test_mounted_by_the_lead_harness_behind_a_public_https_url(tmp_path: Path) -> None:
    from provider_support import PUBLIC_URL, provider_node
    from vonage_support import vonage_config

    async with fake_vonage() as fake, provider_node(None, vonage=vonage_config(fake.port)) as srv:
        adapter = srv.adapters["vonage"]
        assert adapter.console_urls()["Event URL (POST)"] == f"{PUBLIC_URL}/providers/vonage/event"
        q = {"to": VIRTUAL_NUMBER, "from": CALLER, "uuid": "u-public"}
        url = f"{srv.http_url}/providers/vonage/answer?{urllib.parse.urlencode(q)}"
        r = await request("GET", url, headers={"Authorization": sign(q)})
        assert r.status == 200, r.body
        ep = websocket_endpoint(r.json())
        assert ep["uri"] == "wss://voice.example.test/providers/vonage/media"
        assert (await request("GET", url)).status == 401
        assert [row["event"] for row in srv.audit_rows()] == ["provider_request_refused"]
