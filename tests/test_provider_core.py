"""The provider-neutral layer: codecs, stream tokens, the paced call session, the
in-process client, the command executor, and the provider configuration of the node."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from provider_support import provider_node
from server_support import running

from core.sql.query import run_query
from providers.codecs import (
    CANONICAL_FRAME_BYTES,
    Decoder,
    Encoder,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)
from providers.commands import CommandExecutor, ProviderError
from providers.config import TwilioConfig, VonageConfig, load_twilio, load_vonage
from providers.session import CallSession, MarkReached, SessionRegistry, StreamEnded
from providers.tokens import StreamTokens, TokenError
from voicehub.app import Settings, StartupError, provider_plan
from voicehub.client.errors import ServerError
from voicehub.provider_host import RefusalAudit
from voicehub.server.local import LocalClient

# ---------------------------------------------------------------- codecs


def g711_ulaw_decode(b: int) -> int:
    """ITU-T G.711 μ-law expansion, written out from the standard (independent oracle)."""
    b = ~b & 0xFF
    sign, exponent, mantissa = b & 0x80, (b >> 4) & 0x07, b & 0x0F
    sample = ((mantissa << 3) + 0x84) << exponent
    sample -= 0x84
    return -sample if sign else sample


def test_ulaw_decoding_matches_g711() -> None:
    data = bytes(range(256))
    pcm = ulaw_to_pcm16(data)
    got = struct.unpack("<256h", pcm)
    assert list(got) == [g711_ulaw_decode(b) for b in data]
    assert ulaw_to_pcm16(pcm16_to_ulaw(pcm)) == pcm  # decoded values are exact code points


def tone(seconds: float, rate: int, freq: float = 440.0, amp: int = 8000) -> bytes:
    n = int(seconds * rate)
    return struct.pack(
        f"<{n}h", *(int(amp * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    )


def test_decoder_frames_are_canonical_and_chunking_does_not_matter() -> None:
    ulaw = pcm16_to_ulaw(tone(1.0, 8000))
    whole = Decoder("mulaw", 8000).decode(ulaw)
    d = Decoder("mulaw", 8000)
    pieces = [f for i in range(0, len(ulaw), 160) for f in d.decode(ulaw[i : i + 160])]
    assert all(len(f) == CANONICAL_FRAME_BYTES for f in whole)
    assert b"".join(pieces) == b"".join(whole)
    assert 49 <= len(pieces) <= 50  # 1 s of 8 kHz audio is 50 frames at 16 kHz (minus a sample)
    l16 = tone(0.1, 16000)
    assert b"".join(Decoder("l16", 16000).decode(l16)) == l16  # canonical already
    with pytest.raises(ValueError, match="odd number"):
        Decoder("l16", 16000).decode(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="unsupported"):
        Decoder("opus", 48000)


def test_encoder_round_trip_keeps_the_tone() -> None:
    src = tone(1.0, 16000, freq=300.0)
    enc = Encoder("mulaw", 8000)
    out = [f for i in range(0, len(src), 640) for f in enc.encode(src[i : i + 640])]
    assert all(len(f) == 160 for f in out)
    back = b"".join(Decoder("mulaw", 8000).decode(b"".join(out)))
    n = min(len(src), len(back)) // 2
    a = struct.unpack(f"<{n}h", src[: n * 2])
    b = struct.unpack(f"<{n}h", back[: n * 2])
    # same energy within a few percent: a 300 Hz tone survives 8 kHz μ-law
    ea, eb = sum(x * x for x in a[800:]), sum(x * x for x in b[800:])
    assert abs(ea - eb) / ea < 0.1


# ---------------------------------------------------------------- tokens


def test_stream_tokens() -> None:
    now = [1000.0]
    t = StreamTokens(b"k" * 32, ttl_s=60, clock=lambda: now[0])
    tok = t.issue(42)
    assert t.check(tok) == 42
    assert t.redeem(tok) == 42
    with pytest.raises(TokenError, match="already used"):
        t.redeem(tok)
    forged = tok.replace("v1.42.", "v1.43.")
    with pytest.raises(TokenError, match="signature"):
        t.redeem(forged)
    with pytest.raises(TokenError, match="signature"):
        StreamTokens(b"o" * 32, clock=lambda: now[0]).redeem(t.issue(1))
    late = t.issue(7)
    now[0] += 61
    with pytest.raises(TokenError, match="expired"):
        t.redeem(late)
    for bad in ("", "v1.x", "v2.1.2.3.4", "v1.a.b.c.d"):
        with pytest.raises(TokenError):
            t.redeem(bad)


# ---------------------------------------------------------------- session pacing


class Recorder:
    """A transport that records what the session sends; with ``echo``, it reports each mark
    as played the moment it is sent (a provider whose buffer is empty)."""

    def __init__(self, echo: bool = False) -> None:
        self.sent: list[tuple[float, str, Any]] = []
        self.echo = echo
        self.session: CallSession | None = None

    async def send_audio(self, pcm: bytes) -> None:
        self.sent.append((time.monotonic(), "audio", len(pcm)))

    async def send_mark(self, name: str) -> None:
        self.sent.append((time.monotonic(), "mark", name))
        if self.echo and self.session is not None:
            self.session.mark_reached(name)

    async def send_clear(self) -> None:
        self.sent.append((time.monotonic(), "clear", None))


async def test_playback_is_paced_without_burst_or_drift() -> None:
    tr = Recorder(echo=True)
    s = CallSession(1, "test", "x", tr)
    tr.session = s
    done = s.play(tone(2.0, 16000), mark="end")
    assert done is not None
    assert await asyncio.wait_for(done, 5) is True
    audio = [t for t, kind, _ in tr.sent if kind == "audio"]
    assert len(audio) == 100
    assert tr.sent[-1][1:] == ("mark", "end")  # the mark goes after the last frame
    t0 = audio[0]
    drift = [abs((t - t0) - i * 0.02) for i, t in enumerate(audio)]
    gaps = [b - a for a, b in itertools.pairwise(audio)]
    assert max(drift) < 0.06, f"drifted {max(drift) * 1000:.1f} ms"
    assert min(gaps) > 0.008, f"burst: two frames {min(gaps) * 1000:.1f} ms apart"
    await s.close()


async def test_marks_resolve_once_and_clear_drops_the_queue() -> None:
    tr = Recorder()
    s = CallSession(1, "test", "x", tr)
    first = s.play(tone(0.1, 16000), mark="a")
    second = s.play(tone(5.0, 16000), mark="b")
    assert first is not None and second is not None
    await asyncio.sleep(0.2)
    s.mark_reached("a")  # the provider echoes the first mark
    assert await first is True
    await s.clear()
    assert await second is False
    assert tr.sent[-1][1] == "clear"
    sent = sum(1 for _, k, _ in tr.sent if k == "audio")
    await asyncio.sleep(0.1)
    assert sum(1 for _, k, _ in tr.sent if k == "audio") == sent, "audio after clear"
    s.mark_reached("b")  # a late echo of a cleared mark is ignored
    s.push_audio(b"\x00" * 640, 0)
    s.end("stopped")
    kinds = []
    async for ev in s.events():
        kinds.append(type(ev).__name__ if not isinstance(ev, MarkReached) else (ev.name, ev.played))
    assert kinds == [("a", True), ("b", False), "AudioFrame", "StreamEnded"]
    assert isinstance(ev, StreamEnded) and ev.reason == "stopped"
    with pytest.raises(RuntimeError, match="ended"):
        s.play(b"\x00" * 640)


async def test_registry_hands_sessions_to_consumers() -> None:
    reg = SessionRegistry()
    seen: list[int] = []

    async def consumer(s: CallSession) -> None:
        seen.append(s.call_id)
        async for _ in s.events():
            pass
        seen.append(-s.call_id)

    reg.on_session(consumer)
    a = CallSession(5, "test", "x", Recorder())
    reg.open(a)
    b = CallSession(5, "test", "x", Recorder())
    reg.open(b)  # a reconnected stream replaces the old one
    await asyncio.sleep(0.05)
    assert a.ended == "replaced" and reg.get(5) is b
    reg.close(b)
    await asyncio.sleep(0.05)
    assert sorted(seen) == [-5, -5, 5, 5]  # each session seen by the consumer, to its end
    await reg.shutdown()


# ---------------------------------------------------------------- in-process client


async def test_local_client_calls_subscribes_and_deduplicates(tmp_path: Path) -> None:
    async with running(tmp_path / "d") as srv:
        hub = srv.node.hub
        auth = srv.node.auth
        ident = auth.declare_system_identity("test-adapter")
        client = LocalClient(hub, auth.for_identity(ident, "system"), name="t")
        seen: list[Any] = []
        sub = await client.subscribe(
            "SELECT id, provider_call_id, status FROM calls", on_insert=seen.append
        )
        assert sub.rows == [] and sub.key == ("id",)
        args = {
            "provider": "test",
            "provider_call_id": "C1",
            "direction": "inbound",
            "from_number": "+15005550006",
            "to_number": "+15005550001",
        }
        out = await client.call_outcome("call_started", args, request_id="start:C1")
        # the call returns once the subscription holds its effect
        assert [r[1] for r in sub.rows] == ["C1"] and len(seen) == 1
        again = await client.call_outcome("call_started", args, request_id="start:C1")
        assert again.replayed and again.value == out.value and again.offset == out.offset
        got = await client.query("SELECT status FROM calls WHERE provider_call_id = $1", ["C1"])
        assert got.rows == [("ringing",)]
        with pytest.raises(ServerError) as e:
            await client.call("no_such_reducer", {})
        assert e.value.code == "no_such_reducer"
        with pytest.raises(ServerError):
            await client.call("call_answered", {"call_id": 999})
        await client.call("call_answered", {"call_id": out.value["call_id"]})
        assert [r[2] for r in sub.rows] == ["in_progress"]
        await sub.unsubscribe()
        await client.close()
        with pytest.raises(ServerError, match="closed"):
            await client.call("call_answered", {"call_id": 1})


class FakeControl:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    async def hangup(self, provider_call_id: str) -> dict[str, Any]:
        self.calls.append(("hangup", provider_call_id))
        if self.fail:
            raise ProviderError("20404: the requested resource was not found")
        return {"status": "completed"}

    async def transfer(self, provider_call_id: str, target: str) -> dict[str, Any]:
        self.calls.append(("transfer", provider_call_id, target))
        return {"to": target}


async def test_command_executor_performs_each_command_once(tmp_path: Path) -> None:
    async with running(tmp_path / "d") as srv:
        auth = srv.node.auth
        ident = auth.declare_system_identity("test-adapter")
        client = LocalClient(srv.node.hub, auth.for_identity(ident, "system"), name="t")
        control = FakeControl()
        ex = CommandExecutor(client, "test", control, SessionRegistry())
        await ex.start()
        started = await client.call(
            "call_started",
            {
                "provider": "test",
                "provider_call_id": "C9",
                "direction": "inbound",
                "from_number": "+1",
                "to_number": "+2",
            },
        )
        cid = started["call_id"]
        await client.call("call_answered", {"call_id": cid})
        await client.call("transfer", {"call_id": cid, "target": "+18005550100"})
        await client.call("hangup", {"call_id": cid})
        await client.call("hangup", {"call_id": cid})  # the same command (idempotent key)

        async def settled() -> list[tuple]:
            while True:
                r = await client.query("SELECT kind, status FROM call_commands ORDER BY id")
                if all(s in ("done", "failed") for _, s in r.rows) and len(r.rows) == 2:
                    return list(r.rows)
                await asyncio.sleep(0.02)

        assert await asyncio.wait_for(settled(), 5) == [("transfer", "done"), ("hangup", "done")]
        assert control.calls == [("transfer", "C9", "+18005550100"), ("hangup", "C9")]
        await ex.stop()
        # a second executor (a restart) finds nothing left to do
        control2 = FakeControl()
        ex2 = CommandExecutor(client, "test", control2, SessionRegistry())
        await ex2.start()
        await asyncio.sleep(0.1)
        assert control2.calls == []
        await ex2.stop()
        await client.close()


async def test_a_failed_provider_request_is_recorded(tmp_path: Path) -> None:
    async with running(None) as srv:
        auth = srv.node.auth
        ident = auth.declare_system_identity("test-adapter")
        client = LocalClient(srv.node.hub, auth.for_identity(ident, "system"), name="t")
        ex = CommandExecutor(client, "test", FakeControl(fail=True), SessionRegistry())
        await ex.start()
        a = {"provider": "test", "provider_call_id": "C", "direction": "inbound"}
        cid = (await client.call("call_started", {**a, "from_number": "1", "to_number": "2"}))[
            "call_id"
        ]
        await client.call("hangup", {"call_id": cid})
        for _ in range(200):
            r = await client.query("SELECT status, error FROM call_commands")
            if r.rows and r.rows[0][0] == "failed":
                break
            await asyncio.sleep(0.02)
        assert r.rows == [("failed", "20404: the requested resource was not found")]
        await ex.stop()
        await client.close()


# ---------------------------------------------------------------- configuration


def test_provider_credentials_from_the_environment() -> None:
    assert load_twilio({}, {}) is None and load_vonage({}, {}) is None
    cfg = load_twilio({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "sekrit"}, {})
    assert cfg == TwilioConfig("AC1", "sekrit")
    assert "sekrit" not in repr(cfg)
    with pytest.raises(ValueError, match=r"missing TWILIO_AUTH_TOKEN"):
        load_twilio({"TWILIO_ACCOUNT_SID": "AC1"}, {})
    with pytest.raises(ValueError, match=r"VONAGE_APPLICATION_ID.*VONAGE_PRIVATE_KEY"):
        load_vonage({"VONAGE_API_KEY": "k", "VONAGE_API_SECRET": "s"}, {})
    section = {
        "api_key": "k",
        "api_secret": "s",
        "application_id": "app",
        "private_key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
        "signature_secret": "sig",
    }
    v = load_vonage({}, section)
    assert isinstance(v, VonageConfig) and v.application_id == "app"
    assert "sig" not in repr(v) and "BEGIN" not in repr(v)
    with pytest.raises(ValueError, match="neither PEM text nor a readable file"):
        load_vonage({}, {**section, "private_key": "/nonexistent/key.pem"})


def test_enabled_providers_need_a_public_url() -> None:
    env = {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}
    with pytest.raises(StartupError, match="public base URL"):
        provider_plan(Settings(), env)
    plan = provider_plan(Settings(public_url="https://voice.example.com/"), env)
    assert plan.public_url == "https://voice.example.com" and plan.twilio is not None
    assert not plan.twilio.simulated
    assert provider_plan(Settings(simulator=False), {}).twilio is None
    with pytest.raises(StartupError, match="partly configured"):
        provider_plan(Settings(), {"VONAGE_API_KEY": "k"})


def test_without_twilio_credentials_the_simulator_is_mounted(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d", port=9999)
    plan = provider_plan(s, {})
    assert plan.twilio is not None and plan.twilio.simulated
    assert plan.public_url == "http://127.0.0.1:9999"
    f = tmp_path / "d" / "simulator.json"
    assert f.stat().st_mode & 0o777 == 0o600
    doc = json.loads(f.read_text())
    assert doc["auth_token"] == plan.twilio.auth_token and doc["public_url"] == plan.public_url
    again = provider_plan(s, {})  # the token is kept across starts
    assert again.twilio is not None and again.twilio.auth_token == plan.twilio.auth_token


async def test_refusals_are_audited_and_rate_limited(tmp_path: Path) -> None:
    async with provider_node(tmp_path / "d") as srv:  # no provider enabled
        assert srv.node.providers is None
    async with running(None) as srv2:
        audit = RefusalAudit(srv2.node.hub, interval_s=60)
        for _ in range(5):
            audit("twilio", "bad signature", {"path": "/providers/twilio/voice"}, "10.0.0.1")
        audit("twilio", "bad signature", {}, "10.0.0.2")
        rows = run_query(
            srv2.node.db,
            "SELECT remote, ok FROM auth_audit WHERE event = 'provider_request_refused'",
        ).rows
        assert sorted(rows) == [("10.0.0.1", False), ("10.0.0.2", False)]
        assert audit.refused == 6


async def test_audio_sink_gets_frames_at_once_in_order_and_hands_over_its_failure() -> None:
    now = [100.0]
    s = CallSession(7, "test", "x", Recorder(), clock=lambda: now[0])
    got: list[int] = []
    s.push_audio(b"\x00" * 640, 0)  # before the sink: queued
    s.audio_sink = lambda f: got.append(f.timestamp_ms)
    s.push_audio(b"\x00" * 640, 20)  # something is queued: it queues behind it
    assert got == [] and s.inbound_backlog == 2
    events = s.events()
    assert (await anext(events)).timestamp_ms == 0  # type: ignore[union-attr]
    assert (await anext(events)).timestamp_ms == 20  # type: ignore[union-attr]
    now[0] += 0.02
    s.push_audio(b"\x00" * 640, 40)  # nothing queued: straight to the sink
    assert got == [40] and s.inbound_backlog == 0
    assert s.lag_ms(40) == 0
    now[0] += 0.5  # handled half a second after it was due
    assert s.lag_ms(40) == 500

    def broken(_f: object) -> None:
        raise OSError("disk full")

    s.audio_sink = broken
    s.push_audio(b"\x00" * 640, 60)  # the frame is kept, the failure goes to the consumer
    assert s.audio_sink is None and s.inbound_backlog == 1
    with pytest.raises(OSError, match="disk full"):
        await anext(events)
    await events.aclose()
