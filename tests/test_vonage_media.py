"""The Vonage media WebSocket over a real socket: the documented sequence (connected with
our headers, binary 16 kHz L16 frames incl. odd and partial messages, DTMF, close), token
refusals, malformed text, paced outbound audio with notify marks and clear, and re-attach
(a synchronous ``disconnected`` event, and the REST transfer at start after a restart)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import websockets
from vonage_support import (
    VonageNode,
    eventually,
    fake_vonage,
    media,
    status_event,
    vonage_node,
    websocket_endpoint,
)

from providers.codecs import CANONICAL_FRAME_BYTES
from providers.session import AudioFrame, CallSession, Dtmf, InboundEvent, StreamEnded
from providers.vonage.ncco import CALL_ID_HEADER, TOKEN_HEADER


def tone_frames(n: int, seed: int = 0) -> list[bytes]:
    """n distinct 640-byte frames (every sample encodes its frame and position)."""
    return [
        struct.pack("<320h", *(((seed + i) * 331 + j * 7) % 30000 - 15000 for j in range(320)))
        for i in range(n)
    ]


class Consumer:
    """A media worker: records every session opened and its inbound events."""

    def __init__(self, srv: VonageNode) -> None:
        self.sessions: list[CallSession] = []
        self.events: dict[int, list[InboundEvent]] = {}
        srv.sessions.on_session(self._run)

    async def _run(self, session: CallSession) -> None:
        self.sessions.append(session)
        got = self.events.setdefault(id(session), [])
        async for ev in session.events():
            got.append(ev)

    def of(self, session: CallSession) -> list[InboundEvent]:
        return self.events.get(id(session), [])


async def _call(srv: VonageNode, uuid: str) -> tuple[int, dict[str, Any]]:
    r = await srv.answer(uuid)
    assert r.status == 200, r.body
    ep = websocket_endpoint(r.json())
    return int(ep["headers"][CALL_ID_HEADER]), ep["headers"]


async def test_documented_sequence_reaches_the_session_unchanged(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(tmp_path, fake) as srv:
        consumer = Consumer(srv)
        call_id, headers = await _call(srv, "u-media-1")
        frames = tone_frames(40)
        async with media(srv.media_url()) as vonage:
            await vonage.connected(headers)
            await eventually(lambda: srv.sessions.get(call_id) is not None)
            session = srv.sessions.get(call_id)
            assert srv.call_row(call_id)["status"] == "in_progress"  # answered on connect
            for f in frames[:10]:
                await vonage.ws.send(f)
            blob = b"".join(frames[10:14])  # odd and partial message boundaries
            for piece in (blob[:641], blob[641:1000], blob[1000:1001], blob[1001:]):
                await vonage.ws.send(piece)
            await vonage.ws.send("{oops")  # malformed text: logged, skipped
            await vonage.ws.send(json.dumps([1, 2]))
            await vonage.ws.send(json.dumps({"event": "websocket:dtmf", "digit": "X"}))
            await vonage.ws.send(json.dumps({"event": "websocket:unknown"}))
            for f in frames[14:30]:
                await vonage.ws.send(f)
            await vonage.dtmf("5")
            for f in frames[30:]:
                await vonage.ws.send(f)
            await vonage.dtmf("#")
            await eventually(lambda: len(srv.rows("SELECT id FROM dtmf_events")) == 2)
            assert session is not None and session.ended is None
        await eventually(lambda: session.ended is not None)
        assert srv.sessions.get(call_id) is None
        await eventually(lambda: any(isinstance(e, StreamEnded) for e in consumer.of(session)))
        evs = consumer.of(session)
        audio = [e for e in evs if isinstance(e, AudioFrame)]
        assert b"".join(a.pcm for a in audio) == b"".join(frames)
        assert all(len(a.pcm) == CANONICAL_FRAME_BYTES for a in audio)
        assert [a.timestamp_ms for a in audio] == [20 * i for i in range(40)]
        dtmf = [e for e in evs if isinstance(e, Dtmf)]
        assert [(d.digits, d.timestamp_ms) for d in dtmf] == [("5", 600), ("#", 800)]
        rows = srv.rows(
            "SELECT digits, audio_offset_ms FROM dtmf_events WHERE call_id = $1 ORDER BY id",
            [call_id],
        )
        assert rows == [("5", 600), ("#", 800)]
        assert srv.adapter.media.stats.malformed == 3
        assert srv.call_row(call_id)["status"] == "in_progress"  # the socket is not the call
        assert srv.refusals == []


async def _refused(srv: VonageNode, first: str | bytes) -> int | None:
    async with media(srv.media_url()) as vonage:
        await vonage.ws.send(first)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(vonage.ws.recv(), 5)
        return vonage.ws.close_code


async def test_bad_tokens_are_refused_and_open_no_session(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        consumer = Consumer(srv)
        call_id, headers = await _call(srv, "u-tok")
        other_id, other_headers = await _call(srv, "u-tok-other")
        tokens = srv.host.tokens
        good = headers[TOKEN_HEADER]
        parts = good.split(".")
        forged = ".".join([*parts[:4], "0" * 32])
        retargeted = ".".join([parts[0], str(other_id), *parts[2:]])
        clock = tokens._clock
        tokens._clock = lambda: clock() - 3600
        expired = tokens.issue(call_id)
        tokens._clock = clock

        def connected(**h: Any) -> str:
            return json.dumps(
                {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", **h}
            )

        cases = {
            "forged": connected(**{CALL_ID_HEADER: str(call_id), TOKEN_HEADER: forged}),
            "retargeted": connected(**{CALL_ID_HEADER: str(other_id), TOKEN_HEADER: retargeted}),
            "expired": connected(**{CALL_ID_HEADER: str(call_id), TOKEN_HEADER: expired}),
            "no_token": connected(**{CALL_ID_HEADER: str(call_id)}),
            "other_call": connected(
                **{CALL_ID_HEADER: str(call_id), TOKEN_HEADER: other_headers[TOKEN_HEADER]}
            ),
            "not_json": "hello",
            "binary_first": b"\x00" * 640,
            "bad_rate": connected(**headers).replace("rate=16000", "rate=44100"),
        }
        before = srv.state()
        for name, first in cases.items():
            n = len(srv.refusals)
            code = await _refused(srv, first)
            assert code == 1008, (name, code)
            assert len(srv.refusals) == n + 1, name
        assert consumer.sessions == [] and srv.sessions.sessions == {}
        assert srv.state() == before, "refused sockets changed the store"
        # the genuine token works once; its replay is refused
        async with media(srv.media_url()) as vonage:
            await vonage.connected(headers)
            await eventually(lambda: srv.sessions.get(call_id) is not None)
            code = await _refused(srv, connected(**headers))
            assert code == 1008
            assert srv.refusals[-1][0] == "bad_stream_token"
            assert "already used" in srv.refusals[-1][1]["detail"]
            assert len(consumer.sessions) == 1


async def test_outbound_audio_is_paced_and_marks_resolve_on_notify(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        call_id, headers = await _call(srv, "u-out")
        async with media(srv.media_url()) as vonage:
            vonage.start_reading()
            await vonage.connected(headers)
            await eventually(lambda: srv.sessions.get(call_id) is not None)
            session = srv.sessions.get(call_id)
            assert session is not None
            frames = tone_frames(150, seed=7)  # 3 s
            fut = session.play(b"".join(frames), mark="m1")
            assert fut is not None
            await eventually(lambda: len(vonage.texts) >= 1, timeout=10)
            got = [m for m in vonage.log if isinstance(m, bytes)]
            assert got == frames, "outbound frames arrive unchanged, in order"
            assert vonage.log[-1] == {"action": "notify", "payload": {"mark": "m1"}}
            times = [t for t, _ in vonage.audio]
            span = times[-1] - times[0]
            assert span >= 149 * 0.020 * 0.95, f"burst: 150 frames in {span:.3f} s"
            assert span <= 149 * 0.020 + 0.5, f"too slow: {span:.3f} s"
            assert not fut.done()  # played only when Vonage says so
            await vonage.ws.send(
                json.dumps({"event": "websocket:notify", "payload": {"mark": "m1"}})
            )
            assert await asyncio.wait_for(fut, 5) is True
            # barge-in: clear drops the rest and tells Vonage to drop its buffer
            fut2 = session.play(b"".join(tone_frames(100)), mark="m2")
            await eventually(lambda: len(vonage.audio) > 155)
            await session.clear()
            assert fut2 is not None and await asyncio.wait_for(fut2, 5) is False
            await eventually(lambda: {"action": "clear"} in vonage.texts)
            await vonage.ws.send(json.dumps({"event": "websocket:cleared"}))
            await asyncio.sleep(0.1)
            assert len(vonage.audio) < 150 + 100


async def _paced(srv: VonageNode, uuid: str, seconds: float) -> None:
    call_id, headers = await _call(srv, uuid)
    n = int(seconds * 50)
    async with media(srv.media_url()) as vonage:
        vonage.start_reading()
        await vonage.connected(headers)
        await eventually(lambda: srv.sessions.get(call_id) is not None)
        session = srv.sessions.get(call_id)
        assert session is not None
        session.play(b"".join(tone_frames(n)), mark="end")
        await eventually(lambda: len(vonage.texts) >= 1, timeout=seconds + 10)
        times = [t for t, _ in vonage.audio]
        assert len(times) == n
        t0 = times[0]
        lateness = [t - (t0 + i * 0.020) for i, t in enumerate(times)]
        assert min(lateness) > -0.015, f"a frame left early (burst): {min(lateness):.3f}"
        # drift would grow with n; allow a loaded CI machine some jitter, not accumulation
        assert max(lateness) < 0.150, f"frames drifted late by {max(lateness):.3f} s"
        assert session.stats.reanchors == 0 or max(lateness) < 0.25


async def test_no_drift_over_5_seconds(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        await _paced(srv, "u-drift5", 5.0)


@pytest.mark.slow
async def test_no_drift_over_60_seconds(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        await _paced(srv, "u-drift60", 60.0)


async def test_disconnected_event_reattaches_to_the_same_call(tmp_path: Path) -> None:
    async with fake_vonage() as fake, vonage_node(None, fake) as srv:
        consumer = Consumer(srv)
        call_id, headers = await _call(srv, "u-re")
        async with media(srv.media_url()) as vonage:
            await vonage.connected(headers)
            await eventually(lambda: srv.sessions.get(call_id) is not None)
            await vonage.ws.send(tone_frames(1)[0])
        first = consumer.sessions[0]
        await eventually(lambda: first.ended is not None)
        ev = status_event("ws-leg", "disconnected", "2026-01-01T00:01:00Z", to=srv.media_url())
        ev["headers"] = headers
        r = await srv.event(ev)
        fresh = websocket_endpoint(r.json())["headers"]
        assert fresh[TOKEN_HEADER] != headers[TOKEN_HEADER]
        async with media(srv.media_url()) as vonage:
            await vonage.connected(fresh)
            await eventually(lambda: len(consumer.sessions) == 2)
            second = consumer.sessions[1]
            assert second.call_id == call_id and second.ended is None
            assert srv.sessions.get(call_id) is second
        assert len(srv.rows("SELECT id FROM calls")) == 1
        assert srv.call_row(call_id)["status"] == "in_progress"


async def test_restart_transfers_in_progress_calls_to_a_fresh_connect(tmp_path: Path) -> None:
    async with fake_vonage() as fake:
        async with vonage_node(tmp_path, fake) as srv:
            call_id, headers = await _call(srv, "u-restart")
            ended_id, _ = await _call(srv, "u-restart-ended")
            await srv.event(status_event("u-restart-ended", "completed", "2026-01-01T00:00:01Z"))
            async with media(srv.media_url()) as vonage:
                await vonage.connected(headers)
                await eventually(lambda: srv.sessions.get(call_id) is not None)
        assert fake.calls == []  # a live stream needs no transfer
        async with vonage_node(tmp_path, fake) as srv2:
            consumer = Consumer(srv2)
            assert srv2.adapter.restart_transfers == {call_id: "ok"}
            (put,) = fake.calls
            assert put.uuid == "u-restart"
            assert put.body["action"] == "transfer"
            assert put.body["destination"]["type"] == "ncco"
            ncco = put.body["destination"]["ncco"]
            ep = websocket_endpoint(ncco)
            assert ep["uri"] == srv2.media_url()
            assert ep["headers"][CALL_ID_HEADER] == str(call_id)
            async with media(srv2.media_url()) as vonage:
                await vonage.connected(ep["headers"])
                await eventually(lambda: srv2.sessions.get(call_id) is not None)
                assert consumer.sessions[0].call_id == call_id
            assert srv2.call_row(call_id)["status"] == "in_progress"
            assert srv2.call_row(ended_id)["status"] == "ended"
