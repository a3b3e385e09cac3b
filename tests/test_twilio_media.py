"""Twilio Media Streams over a real WebSocket: the documented message sequence reaches the
call session in canonical audio, DTMF is recorded, marks resolve, stop ends the session
(not the call); forged, replayed and expired tokens and unsigned upgrades are refused with
no session; malformed frames are survived; outbound audio is paced at 20 ms."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from provider_support import PUBLIC_URL, ProviderNode, provider_node
from server_support import eventually
from twilio_support import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    MediaClient,
    TwilioPhone,
    fake_twilio,
    media_stream,
    pcm16,
    samples16,
    sid,
    stream_of,
    tone,
    ulaw_decode,
    ulaw_encode,
    voice_params,
)
from voice_support import state

from providers.config import TwilioConfig
from providers.session import AudioFrame, CallSession, Dtmf, InboundEvent, StreamEnded
from providers.tokens import StreamTokens
from providers.twilio.twiml import CALL_ID_PARAM, TOKEN_PARAM


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[ProviderNode, TwilioPhone]]:
    async with fake_twilio() as cloud:
        cfg = TwilioConfig(ACCOUNT_SID, AUTH_TOKEN, api_base_url=cloud.base_url)
        async with provider_node(tmp_path / "data", twilio=cfg) as srv:
            yield srv, TwilioPhone(srv.http_url, PUBLIC_URL)


async def answer(phone: TwilioPhone) -> tuple[str, dict[str, str]]:
    """A new inbound call: its CallSid and the <Stream> parameters of the TwiML answer."""
    call_sid = sid("CA")
    ans = await phone.post("/providers/twilio/voice", voice_params(call_sid))
    assert ans.status == 200, ans.body
    return call_sid, stream_of(ans.body)[1]


async def session_of(srv: ProviderNode, call_id: int) -> CallSession:
    await eventually(lambda: srv.sessions.get(call_id) is not None)
    s = srv.sessions.get(call_id)
    assert s is not None
    return s


async def drain(session: CallSession) -> list[InboundEvent]:
    out: list[InboundEvent] = []

    async def run() -> None:
        async for ev in session.events():
            out.append(ev)

    await asyncio.wait_for(run(), 5)
    return out


def best_correlation(a: list[int], b: list[int], max_lag: int = 4) -> float:
    best = -1.0
    n = min(len(a), len(b)) - 2 * max_lag
    for lag in range(-max_lag, max_lag + 1):
        xs = a[max_lag : max_lag + n]
        ys = b[max_lag + lag : max_lag + lag + n]
        num = sum(x * y for x, y in zip(xs, ys))
        den = (sum(x * x for x in xs) * sum(y * y for y in ys)) ** 0.5
        best = max(best, num / den if den else 0.0)
    return best


async def test_documented_sequence(node: tuple[ProviderNode, TwilioPhone]) -> None:
    srv, phone = node
    call_sid, params = await answer(phone)
    call_id = int(params[CALL_ID_PARAM])
    payloads = [ulaw_encode(c) for c in _chunks(tone(440, 1000), 160)]  # 50 × 20 ms
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.connected()
        await tw.start(params)
        session = await session_of(srv, call_id)
        assert session.provider == "twilio" and session.provider_call_id == call_sid
        for p in payloads:
            await tw.media(p)
        await eventually(lambda: session.frames_in >= len(payloads) - 1)
        await tw.dtmf("5")
        # a mark round trip: voicehub asks, Twilio echoes when playback got there
        fut = session.play(b"\x00" * 640, mark="m0")
        assert fut is not None
        out = await tw.recv()
        assert out["event"] == "media" and out["streamSid"] == tw.stream_sid
        assert len(base64.b64decode(out["media"]["payload"])) == 160
        mark = await tw.recv()
        assert mark == {"event": "mark", "streamSid": tw.stream_sid, "mark": {"name": "m0"}}
        await tw.mark("m0")
        assert await asyncio.wait_for(fut, 5) is True
        await eventually(lambda: bool(srv.sql("SELECT * FROM dtmf_events")))
        await tw.stop()
        await eventually(lambda: session.ended is not None)
    assert session.ended == "stopped" and srv.sessions.get(call_id) is None
    events = await drain(session)
    frames = [e for e in events if isinstance(e, AudioFrame)]
    assert len(frames) in (len(payloads) - 1, len(payloads))
    assert all(len(f.pcm) == 640 for f in frames)
    assert [f.timestamp_ms for f in frames] == [20 * i for i in range(len(frames))]
    # the canonical audio is the caller's tone at 16 kHz: compare with an independent
    # μ-law expansion upsampled by linear interpolation
    got = samples16(b"".join(f.pcm for f in frames))
    ref8 = [s for p in payloads for s in ulaw_decode(p)]
    ref16 = [v for i, s in enumerate(ref8) for v in (s, (s + ref8[min(i + 1, len(ref8) - 1)]) // 2)]
    assert best_correlation(got, ref16) > 0.99
    assert [e for e in events if isinstance(e, Dtmf)] == [Dtmf("5", frames[-1].timestamp_ms)]
    assert isinstance(events[-1], StreamEnded)
    (d,) = srv.sql("SELECT call_id, digits FROM dtmf_events")
    assert d == {"call_id": call_id, "digits": "5"}
    # a stop voicehub did not cause is the caller hanging up: the call ended
    await eventually(
        lambda: srv.sql("SELECT status FROM calls WHERE id = $1", [call_id])[0]["status"] == "ended"
    )


def _chunks(samples: list[int], n: int) -> list[list[int]]:
    return [samples[i : i + n] for i in range(0, len(samples), n)]


async def _refused_start(srv: ProviderNode, call_sid: str, custom: dict[str, str]) -> int:
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.connected()
        await tw.start(custom)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await tw.recv()
        assert info.value.rcvd is not None
        return info.value.rcvd.code


def _voice_state(srv: ProviderNode) -> dict[str, Any]:
    return {k: v for k, v in state(srv.node.db).items() if k != "auth_audit"}


async def test_bad_tokens_are_refused_without_a_session(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid, params = await answer(phone)
    other_sid, other = await answer(phone)
    call_id = int(params[CALL_ID_PARAM])
    before = _voice_state(srv)
    tok = params[TOKEN_PARAM]
    forged = {**params, TOKEN_PARAM: tok[:-1] + ("0" if tok[-1] != "0" else "1")}
    assert await _refused_start(srv, call_sid, forged) == 1008
    # another call's valid token does not open this call's stream
    assert await _refused_start(srv, call_sid, other) == 1008
    key = srv.node.hub.auth.signer.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    expired = StreamTokens(key, ttl_s=-5).issue(call_id)
    assert await _refused_start(srv, call_sid, {**params, TOKEN_PARAM: expired}) == 1008
    assert await _refused_start(srv, call_sid, {CALL_ID_PARAM: str(call_id)}) == 1008
    assert not srv.sessions.sessions
    assert _voice_state(srv) == before  # refusals change nothing but the audit
    # the real token works once; a replay is refused and the live session is untouched
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.connected()
        await tw.start(params)
        session = await session_of(srv, call_id)
        assert await _refused_start(srv, call_sid, params) == 1008
        assert srv.sessions.get(call_id) is session and session.ended is None
    reasons = {r["detail"]["reason"] for r in srv.audit_rows()}
    assert reasons == {"stream_token_invalid", "stream_call_mismatch"}
    assert other_sid != call_sid


async def test_unsigned_or_forged_upgrade_is_refused(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid, params = await answer(phone)
    audits = len(srv.audit_rows())
    for signature in (None, "forged=", "AAAA"):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with media_stream(srv.ws_base, call_sid, signature=signature):
                pass
        assert info.value.response.status_code == 403
    # signed for the loopback address instead of the public URL
    with pytest.raises(websockets.InvalidStatus):
        async with media_stream(srv.ws_base, call_sid, public_ws=srv.ws_base):
            pass
    assert not srv.sessions.sessions
    assert len(srv.audit_rows()) > audits
    # the token was not consumed by the refused upgrades
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.start(params)
        await session_of(srv, int(params[CALL_ID_PARAM]))


async def test_malformed_frames_are_logged_and_the_stream_continues(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid, params = await answer(phone)
    call_id = int(params[CALL_ID_PARAM])
    adapter = srv.adapters["twilio"]
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.connected()
        await tw.media(b"\xff" * 160)  # media before start
        await tw.start(params)
        session = await session_of(srv, call_id)
        s = tw.stream_sid
        bad: list[Any] = [
            "not json",
            "[1, 2]",
            json.dumps({"event": "bogus", "streamSid": s}),
            json.dumps({"event": "media", "streamSid": s, "media": {"payload": "%%%"}}),
            json.dumps({"event": "media", "streamSid": s, "media": {"timestamp": "0"}}),
            json.dumps({"event": "dtmf", "streamSid": s, "sequenceNumber": "9", "dtmf": {}}),
            json.dumps({"event": "mark", "streamSid": s}),
            json.dumps({"event": "media", "streamSid": "MZother", "media": {}}),
        ]
        for frame in bad:
            await tw.send(frame)
        await tw.ws.send(b"\x00\x01")  # a binary frame
        for _ in range(5):
            await tw.media(ulaw_encode(tone(300, 20)))
        await eventually(lambda: session.frames_in >= 4)
        (stream,) = adapter.streams
        assert stream.malformed == len(bad) + 2
        assert session.ended is None
        (call,) = srv.sql("SELECT status FROM calls WHERE id = $1", [call_id])
        assert call["status"] == "in_progress"


class Receiver:
    """Twilio's side receiving outbound messages, timestamped on arrival."""

    def __init__(self, tw: MediaClient) -> None:
        self.tw = tw
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async for raw in self.tw.ws:
            self.got.append((loop.time(), json.loads(raw)))

    def of(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.got if m["event"] == event]

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, websockets.ConnectionClosed):
            pass


def check_pacing(times: list[float], tolerance_s: float = 0.08) -> None:
    """No burst (consecutive frames not bunched together) and no drift (frame n arrives
    within ``tolerance_s`` of t0 + n·20 ms)."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    bunched = sum(1 for g in gaps if g < 0.005)
    assert bunched <= max(3, len(gaps) // 20), f"{bunched} of {len(gaps)} frames bunched"
    t0 = times[0]
    lags = [t - (t0 + n * 0.020) for n, t in enumerate(times)]
    worst = max(abs(x) for x in lags)
    assert worst < tolerance_s, f"worst drift {worst * 1000:.0f} ms"
    assert abs(lags[-1]) < tolerance_s


async def _live(srv: ProviderNode, phone: TwilioPhone) -> tuple[Any, ...]:
    call_sid, params = await answer(phone)
    return call_sid, params, int(params[CALL_ID_PARAM])


async def test_play_is_paced_then_marked_and_clear_drops_it(
    node: tuple[ProviderNode, TwilioPhone],
) -> None:
    srv, phone = node
    call_sid, params, call_id = await _live(srv, phone)
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.start(params)
        session = await session_of(srv, call_id)
        rx = Receiver(tw)
        pcm_3s = pcm16(tone(440, 3000, rate=16000))
        fut = session.play(pcm_3s, mark="m1")
        assert fut is not None
        await eventually(lambda: bool(rx.of("mark")), timeout=10)
        media = rx.of("media")
        assert len(media) == 150
        assert all(m["streamSid"] == tw.stream_sid for _, m in media)
        assert rx.got[-1][1] == {
            "event": "mark",
            "streamSid": tw.stream_sid,
            "mark": {"name": "m1"},
        }
        assert rx.got[-1][0] >= media[-1][0]
        check_pacing([t for t, _ in media])
        sent = b"".join(base64.b64decode(m["media"]["payload"]) for _, m in media)
        assert len(sent) == 150 * 160
        assert best_correlation(ulaw_decode(sent), tone(440, 3000, rate=8000)) > 0.98
        assert not fut.done()
        await tw.mark("m1")
        assert await asyncio.wait_for(fut, 5) is True
        # barge-in: clear drops queued audio and resolves pending marks False
        fut2 = session.play(pcm_3s, mark="m2")
        assert fut2 is not None
        await eventually(lambda: len(rx.of("media")) >= 155)
        await session.clear()
        assert await asyncio.wait_for(fut2, 1) is False
        await eventually(lambda: bool(rx.of("clear")))
        ((t_clear, clear),) = rx.of("clear")
        assert clear == {"event": "clear", "streamSid": tw.stream_sid}
        await asyncio.sleep(0.2)
        late = [t for t, _ in rx.of("media") if t > t_clear]
        assert len(late) <= 1
        assert len(rx.of("media")) < 150 + 150 // 2
        await rx.stop()


async def _drift(srv: ProviderNode, phone: TwilioPhone, seconds: int) -> None:
    call_sid, params, call_id = await _live(srv, phone)
    async with media_stream(srv.ws_base, call_sid) as tw:
        await tw.start(params)
        session = await session_of(srv, call_id)
        rx = Receiver(tw)
        fut = session.play(b"\x00" * (32000 * seconds), mark="end")
        assert fut is not None
        await eventually(lambda: bool(rx.of("mark")), timeout=seconds + 10)
        times = [t for t, _ in rx.of("media")]
        assert len(times) == seconds * 50
        check_pacing(times)
        await rx.stop()


async def test_no_drift_over_five_seconds(node: tuple[ProviderNode, TwilioPhone]) -> None:
    await _drift(*node, 5)


@pytest.mark.slow
async def test_no_drift_over_a_minute(node: tuple[ProviderNode, TwilioPhone]) -> None:
    await _drift(*node, 60)
