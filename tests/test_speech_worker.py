"""The async speech pool: work off the event loop, finals never lost, partials shed first
under overload (counted and logged), TTS streamed, bounded and refused when full.

Fake engines (sleeps model CPU cost, deterministically) exercise the queueing; one test
runs the real default engines through the pool end to end.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from speech_support import (
    DEFAULTS,
    YES,
    FakeStream,
    FakeStt,
    FakeTts,
    frames,
    need_modules,
    phone_line,
    piper_clip,
    shared_engines,
    silence,
    tone,
)

from media.speech import Engines, Final, Partial, SegmenterConfig, SegmentEvent, SpeechConfig
from media.speech.base import FRAME_BYTES
from media.speech.stt import normalize_text
from media.speech.vad import EnergyVad
from media.speech.worker import PoolLimits, SpeechOverloaded, SpeechPool

QUIET = b"\x00" * FRAME_BYTES
LOUD = tone(20, 4000)


def utterances(n: int, speech_frames: int = 25, gap_frames: int = 40) -> list[bytes]:
    """n bursts of 'speech' (a tone) separated by silence longer than the hangover."""
    return ([QUIET] * 10 + ([LOUD] * speech_frames + [QUIET] * gap_frames) * n) + [QUIET] * 5


def fake_engines(
    partial: FakeStt | None = None, final: FakeStt | None = None, tts: FakeTts | None = None
) -> Engines:
    cfg = SpeechConfig(segmenter=SegmenterConfig(end_silence_ms=300))
    return Engines(cfg, vad=EnergyVad(), stt_partial=partial, stt_final=final, tts=tts)


async def test_finals_arrive_in_order_with_partials_and_events() -> None:
    pool = SpeechPool(fake_engines(FakeStt("p"), FakeStt("f")))
    partials: list[Partial] = []
    events: list[SegmentEvent] = []
    call = await pool.open_call(partials.append, events.append)
    loop_thread = threading.get_ident()
    seen_threads: set[int] = set()
    call.on_partial = lambda p: (partials.append(p), seen_threads.add(threading.get_ident()))
    for f in utterances(3):
        call.push(f)
        await asyncio.sleep(0)
    finals = [await call.next_final(timeout=5) for _ in range(3)]
    await call.close()
    assert [f.text.split(" (")[0] for f in finals] == [f"utterance {i}" for i in (1, 2, 3)]
    # each final got the padded utterance: 10 pre-roll + 25 speech + 15 hangover frames
    assert all(f.text.endswith("(50 frames)") for f in finals), finals
    assert [e.kind for e in events] == ["start", "end"] * 3
    assert partials and seen_threads == {loop_thread}  # callbacks run on the loop
    snap = pool.snapshot()
    assert snap["utterances"] == 3 and snap["finals"] == 3 and snap["final_errors"] == 0
    assert snap["final_latency_p50_ms"] is not None
    await pool.close()


async def test_overload_sheds_partials_first_and_loses_no_final(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # partials cost 4 ms a frame (5x real time for 8 calls on one thread), finals 150 ms
    partial, final = FakeStt("p", feed_s=0.004), FakeStt("f", final_s=0.15)
    pool = SpeechPool(
        fake_engines(partial, final),
        PoolLimits(final_threads=1, partial_threads=1, max_partial_backlog_ms=200),
    )
    calls = [await pool.open_call() for _ in range(8)]
    caplog.set_level(logging.WARNING, logger="voicehub.speech")
    clip = utterances(2)
    for i in range(len(clip)):  # 8 calls pushed at ~10x real time
        for c in calls:
            c.push(clip[i])
        if i % 5 == 0:
            await asyncio.sleep(0.01)
    got = [[await c.next_final(timeout=30) for _ in range(2)] for c in calls]
    for c in calls:
        await c.close()
    assert sum(len(g) for g in got) == 16
    assert all(f.text.endswith("(50 frames)") for g in got for f in g)  # audio complete
    snap = pool.snapshot()
    assert snap["finals"] == 16 and snap["final_errors"] == 0
    assert snap["partial_frames_dropped"] > 0 and snap["partial_shed_events"] > 0
    assert any("dropping partial audio" in r.message for r in caplog.records)
    await pool.close()


async def test_finals_wait_for_room_instead_of_dropping() -> None:
    pool = SpeechPool(
        fake_engines(None, FakeStt("f", final_s=0.05)),
        PoolLimits(final_threads=1, max_pending_finals=1),
    )
    calls = [await pool.open_call() for _ in range(4)]
    for f in utterances(1):
        for c in calls:
            c.push(f)
    finals = [await c.next_final(timeout=10) for c in calls]
    assert len(finals) == 4
    assert pool.metrics["finals_waited"] >= 1
    for c in calls:
        await c.close()
    await pool.close()


async def test_final_errors_are_delivered_not_swallowed() -> None:
    pool = SpeechPool(fake_engines(None, FakeStt("f", fail=True)))
    call = await pool.open_call()
    for f in utterances(1):
        call.push(f)
    with pytest.raises(RuntimeError, match="fake engine failure"):
        await call.next_final(timeout=5)
    assert pool.metrics["final_errors"] == 1
    await call.close()
    await pool.close()


async def test_close_ends_an_open_utterance() -> None:
    pool = SpeechPool(fake_engines(None, FakeStt("f")))
    call = await pool.open_call()
    for f in [QUIET] * 5 + [LOUD] * 10:
        call.push(f)
    await call.close()
    final = await call.next_final(timeout=5)
    assert final.text == "utterance 1 (15 frames)"


async def test_say_streams_off_the_loop_and_refuses_when_full() -> None:
    gate = threading.Event()
    tts = FakeTts(delay_s=0.01, gate=gate)
    pool = SpeechPool(fake_engines(tts=tts), PoolLimits(max_tts_waiting=1))

    async def collect(text: str) -> bytes:
        return b"".join([c async for c in pool.say(text)])

    first = asyncio.create_task(collect("one two three"))
    await asyncio.sleep(0.05)  # 'first' holds the engine, blocked on the gate
    second = asyncio.create_task(collect("four five"))
    await asyncio.sleep(0.05)  # 'second' waits
    t0 = time.perf_counter()
    with pytest.raises(SpeechOverloaded):
        await collect("refused")
    assert time.perf_counter() - t0 < 0.05  # refused at once, the loop never blocked
    gate.set()
    a, b = await asyncio.gather(first, second)
    assert a == tts.synthesize("one two three") and b == tts.synthesize("four five")
    assert pool.metrics["tts_refused"] == 1 and pool.metrics["tts_requests"] == 2
    assert len(pool.tts_first_audio_ms) == 2
    # a consumer that stops early frees the engine for the next request
    async for _chunk in pool.say("a b c d e f"):
        break
    assert await pool.synthesize("g") == tts.synthesize("g")
    await pool.close()


@need_modules(*DEFAULTS)
async def test_real_engines_through_the_pool() -> None:
    # no shedding here (the fake-engine test covers it): the partials must be complete
    pool = SpeechPool(shared_engines(), PoolLimits(max_partial_backlog_ms=60_000))
    partials: list[Partial] = []
    call = await pool.open_call(partials.append)
    clip = phone_line(silence(800) + piper_clip(YES) + silence(1200))
    for i, f in enumerate(frames(clip)):
        call.push(f)
        if i % 10 == 0:
            await asyncio.sleep(0.1)  # twice real time: partials keep up
    final = await call.next_final(timeout=30)
    await call.close()
    assert normalize_text(final.text) == "yes i agree to the recording of this call"
    assert partials and any("agree" in p.text for p in partials)
    snap = pool.snapshot()
    assert snap["speculations"] >= 1 and snap["finals"] == 1
    audio = await pool.synthesize(YES)
    assert audio == piper_clip(YES)  # the pool's TTS path gives the engine's bytes
    await pool.close()


class _Timed(FakeStt):
    """A FakeStt that records when each stream decodes (end_utterance) and feeds."""

    def __init__(self, name: str, **kw: float) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.decodes: list[tuple[float, float]] = []
        self.feeds: list[float] = []

    def open(self) -> FakeStream:
        s = FakeStream(self)
        end, feed = s.end_utterance, s.feed

        def timed_end() -> Final:
            t0 = time.perf_counter()
            try:
                return end()
            finally:
                self.decodes.append((t0, time.perf_counter()))

        def timed_feed(frame: bytes) -> Partial | None:
            self.feeds.append(time.perf_counter())
            return feed(frame)

        s.end_utterance = timed_end  # type: ignore[method-assign]
        s.feed = timed_feed  # type: ignore[method-assign]
        return s


async def test_partials_wait_while_a_final_decodes() -> None:
    partial, final = _Timed("p", feed_s=0.001), _Timed("f", final_s=0.2)
    pool = SpeechPool(fake_engines(partial, final), PoolLimits(max_partial_backlog_ms=60_000))
    a, b = await pool.open_call(), await pool.open_call()
    for f in utterances(1):  # a's utterance ends: its final decodes for 200 ms ...
        a.push(f)
    for _ in range(30):  # ... while b talks in real time
        b.push(LOUD)
        await asyncio.sleep(0.02)
    for f in [QUIET] * 20:
        b.push(f)
    fa, fb = await a.next_final(timeout=5), await b.next_final(timeout=5)
    await a.close()
    await b.close()
    assert fa.text.endswith("(50 frames)")
    (d0, d1), *_ = final.decodes
    # one batch (<= max_partial_batch_ms of audio) may still be running when it starts
    during = [t for t in partial.feeds if d0 + 0.05 < t < d1]
    assert not during, f"{len(during)} partial frames decoded during a final"
    assert any(t > d1 for t in partial.feeds)  # held, then caught up: nothing dropped
    assert pool.metrics["partial_holds"] >= 1 and pool.metrics["partial_frames_dropped"] == 0
    assert fb.text.startswith("utterance")
    await pool.close()


class _SpecStream(FakeStream):
    """A speculative, buffering stream: ``speculate`` takes 100 ms; the thread of each
    feed and end is recorded."""

    cheap_feed = True

    def __init__(self, owner: FakeStt) -> None:
        super().__init__(owner)
        self.spec: str | None = None
        self.threads: dict[str, set[int]] = {"feed": set(), "end": set(), "spec": set()}
        self.speculations = 0

    def feed(self, frame: bytes) -> Partial | None:
        self.threads["feed"].add(threading.get_ident())
        super().feed(frame)
        return None

    def speculate(self) -> None:
        self.threads["spec"].add(threading.get_ident())
        self.speculations += 1
        time.sleep(0.1)
        self.spec = f"speculated ({self.frames} frames)"

    def drop_speculation(self) -> None:
        self.spec = None

    @property
    def speculation_ready(self) -> bool:
        return self.spec is not None

    def end_utterance(self) -> Final:
        self.threads["end"].add(threading.get_ident())
        if self.spec is None:
            return super().end_utterance()
        text, self.spec = self.spec, None
        assert self.start is not None
        start, self.start = self.start, None
        return Final(text, start, start + 20 * self.frames, "f")


async def test_speculation_result_is_used_on_the_loop_and_redone_when_speech_resumes() -> None:
    streams: list[_SpecStream] = []

    class Spec(FakeStt):
        def open(self) -> _SpecStream:  # type: ignore[override]
            streams.append(_SpecStream(self))
            return streams[-1]

    pool = SpeechPool(fake_engines(None, Spec("f")), PoolLimits(speculate_after_ms=60))
    call = await pool.open_call()
    loop_thread = threading.get_ident()
    # speech, a 100 ms pause (speculation starts, then is dropped), speech, silence
    clip = [QUIET] * 10 + [LOUD] * 20 + [QUIET] * 5 + [LOUD] * 20 + [QUIET] * 40
    for f in clip:
        call.push(f)
        await asyncio.sleep(0.005)
    final = await call.next_final(timeout=5)
    await call.close()
    (s,) = streams
    # the dropped speculation did not answer: the second one covers the whole utterance
    # (10 pre-roll + 20 + 5 + 20 speech + 3 of silence); the final spans all 70 frames
    assert final.text == "speculated (58 frames)", final
    assert (final.start_ms, final.end_ms) == (0, 1400)
    assert s.speculations == 2 and pool.metrics["speculations_dropped"] == 1
    assert s.threads["feed"] == {loop_thread} and s.threads["end"] == {loop_thread}
    assert loop_thread not in s.threads["spec"]
    await pool.close()
