"""The async shell around the synchronous speech engines: ``SpeechPool``.

The event loop only does cheap work per inbound frame (VAD, segmentation, queueing);
recognition and synthesis run in thread pools, and Piper itself lives in its worker
process (``PiperTts``). CTranslate2 (whisper) releases the GIL while it computes;
pocketsphinx does not, which is why partials get one thread (a second one only adds GIL
contention; measured in bench/speech_bench.py ``--partial-threads``).

Per call (``pool.open_call()``) two lanes keep each stream's work in order:
- the final lane feeds the final engine and runs ``end_utterance``; its frames are never
  dropped, and when more finals are pending than ``max_pending_finals`` the lane waits
  (backpressure, counted) instead of discarding anything;
- the partial lane feeds the partial engine in batches; it is shed first: while finals are
  waiting for a thread, or a call's partial backlog exceeds ``max_partial_backlog_ms``, its
  frames are dropped (counted in ``metrics`` and logged), so partials degrade, finals don't;
  and while any final-engine decode runs, no new partial work starts (finals first).
Invariant: every utterance that starts gets exactly one Final (or the engine's exception)
delivered, in utterance order, on ``CallStt.next_final()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from media.speech.base import (
    FRAME_MS,
    Final,
    Partial,
    SegmentEvent,
    SpeculativeStt,
    StreamingStt,
)
from media.speech.registry import Engines
from media.speech.vad import UtteranceDetector

log = logging.getLogger("voicehub.speech")


_T = TypeVar("_T")


class SpeechOverloaded(RuntimeError):
    """A request was refused (not silently dropped) because its queue is full."""


@dataclass(frozen=True, slots=True)
class PoolLimits:
    final_threads: int = 2
    partial_threads: int = 1
    max_pending_finals: int = 32
    """Finals queued or running before a call's final lane waits for room."""
    max_partial_backlog_ms: int = 400
    """Audio a call's partial lane may have waiting; older frames are dropped past it."""
    max_tts_waiting: int = 16
    """``say`` requests waiting for the TTS engine before new ones are refused."""
    max_partial_batch_ms: int = 200
    """At most this much audio per partial-thread job (then the lane re-checks whether
    finals are decoding)."""
    speculate_after_ms: int | None = 100
    """Start the final (engines with ``speculate()``: whisper) after this much silence,
    before the segmenter's hangover confirms the end; dropped if speech resumes. Skipped
    while finals are starved. None disables it."""


def _p50(values: deque[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[len(s) // 2]


class SpeechPool:
    """Threads for STT, the TTS engine behind a lock, bounded queues and load shedding."""

    def __init__(self, engines: Engines, limits: PoolLimits | None = None) -> None:
        self.engines = engines
        self.limits = lim = limits or PoolLimits()
        self._final_exec = ThreadPoolExecutor(lim.final_threads, "speech-final")
        self._partial_exec = ThreadPoolExecutor(lim.partial_threads, "speech-partial")
        self._tts_exec = ThreadPoolExecutor(1, "speech-tts")
        self._final_slots = asyncio.Semaphore(lim.max_pending_finals)
        self._tts_lock = asyncio.Lock()
        self.pending_finals = 0
        self.decoding = 0
        """Final-engine decodes (speculations and finals) submitted and not finished:
        while any runs, partial work waits (``CallStt._pump_partials``)."""
        self._held_partials: dict[CallStt, None] = {}
        self.tts_waiting = 0
        self.metrics: dict[str, int] = dict.fromkeys(
            (
                "calls",
                "frames_in",
                "utterances",
                "partials",
                "partial_frames_dropped",
                "partial_shed_events",
                "partial_holds",
                "finals",
                "final_errors",
                "finals_waited",
                "tts_requests",
                "tts_refused",
                "tts_errors",
                "speculations",
                "speculations_dropped",
            ),
            0,
        )
        self.final_latency_ms: deque[float] = deque(maxlen=512)
        """End of speech (segmenter's end event) -> Final delivered, per utterance."""
        self.speech_end_to_final_ms: deque[float] = deque(maxlen=512)
        """The same plus the silence the segmenter waited for: end of speech -> Final,
        for audio pushed in real time."""
        self.tts_first_audio_ms: deque[float] = deque(maxlen=512)
        self._last_shed_log = 0.0

    # -- metrics

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.metrics)
        out["final_latency_p50_ms"] = _p50(self.final_latency_ms)
        out["speech_end_to_final_p50_ms"] = _p50(self.speech_end_to_final_ms)
        out["tts_first_audio_p50_ms"] = _p50(self.tts_first_audio_ms)
        out["pending_finals"] = self.pending_finals
        return out

    def _shed(self, frames: int) -> None:
        self.metrics["partial_frames_dropped"] += frames
        self.metrics["partial_shed_events"] += 1
        now = time.monotonic()
        if now - self._last_shed_log > 5.0:
            self._last_shed_log = now
            log.warning(
                "speech overload: dropping partial audio (%d frames so far, %d finals pending)",
                self.metrics["partial_frames_dropped"],
                self.pending_finals,
            )

    @property
    def finals_starved(self) -> bool:
        """Finals are waiting for a thread: partial work must yield."""
        return self.pending_finals > self.limits.final_threads

    async def _decode(self, fn: Callable[[], _T]) -> _T:
        """Run a final-engine decode on a final thread; partial work is held meanwhile
        (finals first: pocketsphinx holds the GIL and would share the cores with it)."""
        self.decoding += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._final_exec, fn)
        finally:
            self.decoding -= 1
            if not self.decoding and self._held_partials:
                held = list(self._held_partials)
                self._held_partials.clear()
                for call in held:
                    call._pump_partials()

    # -- STT

    async def open_call(
        self,
        on_partial: Callable[[Partial], None] | None = None,
        on_segment: Callable[[SegmentEvent], None] | None = None,
    ) -> CallStt:
        """A call's recognizer; callbacks run on the event loop. Opening a stream may load
        a decoder (pocketsphinx: ~0.5 s), so it happens in a worker thread."""
        eng = self.engines
        if eng.vad is None:
            raise RuntimeError("the pool's engines have no VAD")
        loop = asyncio.get_running_loop()
        final = partial = None
        if eng.stt_final is not None:
            final = await loop.run_in_executor(self._final_exec, eng.stt_final.open)
        if eng.stt_partial is not None and eng.stt_partial is not eng.stt_final:
            partial = await loop.run_in_executor(self._partial_exec, eng.stt_partial.open)
        self.metrics["calls"] += 1
        return CallStt(self, final, partial, on_partial, on_segment)

    # -- TTS

    async def say(self, text: str) -> AsyncIterator[bytes]:
        """Canonical PCM chunks of ``text`` as they are synthesized (off the loop)."""
        tts = self.engines.tts
        if tts is None:
            raise RuntimeError("the pool's engines have no TTS")
        if self.tts_waiting >= self.limits.max_tts_waiting:
            self.metrics["tts_refused"] += 1
            raise SpeechOverloaded(f"{self.tts_waiting} TTS requests already waiting")
        self.metrics["tts_requests"] += 1
        t0 = time.perf_counter()
        self.tts_waiting += 1
        try:
            await self._tts_lock.acquire()
        finally:
            self.tts_waiting -= 1
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def run() -> None:
            gen = tts.synthesize_stream(text)
            try:
                for chunk in gen:
                    loop.call_soon_threadsafe(q.put_nowait, chunk)
                    if stop.is_set():
                        break
                loop.call_soon_threadsafe(q.put_nowait, None)
            except BaseException as e:
                loop.call_soon_threadsafe(q.put_nowait, e)
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()

        fut = loop.run_in_executor(self._tts_exec, run)
        first = True
        try:
            while True:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    self.metrics["tts_errors"] += 1
                    raise item
                if first:
                    first = False
                    self.tts_first_audio_ms.append((time.perf_counter() - t0) * 1000)
                yield item
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(fut)
            self._tts_lock.release()

    async def synthesize(self, text: str) -> bytes:
        return b"".join([c async for c in self.say(text)])

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for ex in (self._partial_exec, self._final_exec, self._tts_exec):
            await loop.run_in_executor(None, ex.shutdown, True)


_END = object()


class CallStt:
    """One call's streaming recognition: ``push(frame)`` on the loop for every inbound
    20 ms frame; partials and segment events via callbacks; finals via ``next_final()``."""

    def __init__(
        self,
        pool: SpeechPool,
        final: StreamingStt | None,
        partial: StreamingStt | None,
        on_partial: Callable[[Partial], None] | None,
        on_segment: Callable[[SegmentEvent], None] | None,
    ) -> None:
        eng = pool.engines
        assert eng.vad is not None
        self.pool = pool
        self.on_partial = on_partial
        self.on_segment = on_segment
        self.detector = UtteranceDetector(eng.vad, eng.config.segmenter)
        self._speculated = False
        self._final = final
        # once, not per frame: isinstance against a runtime-checkable Protocol is slow
        self._speculative = isinstance(final, SpeculativeStt)
        self._cheap_feed = bool(getattr(final, "cheap_feed", False))
        self._partial = partial
        self._final_ops: deque[Any] = deque()
        self._final_wake = asyncio.Event()
        self._partial_ops: deque[Any] = deque()
        self._partial_backlog = 0
        self._partial_busy = False
        self._finals: asyncio.Queue[Final | BaseException] = asyncio.Queue()
        self._closed = False
        self._final_task = asyncio.get_running_loop().create_task(self._final_lane())

    # -- inbound audio (on the loop)

    def push(self, frame: bytes) -> None:
        if self._closed:
            raise RuntimeError("push() on a closed CallStt")
        self.pool.metrics["frames_in"] += 1
        step = self.detector.push(frame)
        ev = step.event
        if ev is not None and ev.kind == "start":
            self.pool.metrics["utterances"] += 1
            self._op(("start", step.audio_start_ms))
        if step.audio:
            self._op(("frames", step.audio))
        if ev is not None:
            if ev.kind == "end":
                assert ev.speech_end_ms is not None
                self._speculated = False
                self._op(("end", (time.perf_counter(), ev.at_ms - ev.speech_end_ms)))
            if self.on_segment is not None:
                self.on_segment(ev)
        elif self.detector.in_utterance:
            self._maybe_speculate()

    def _maybe_speculate(self) -> None:
        after = self.pool.limits.speculate_after_ms
        if after is None or not self._speculative:
            return
        silence = self.detector.segmenter.silence_ms
        if self._speculated and silence == 0:
            self._speculated = False
            self._final_op(("unspeculate", None))
        elif not self._speculated and silence >= after and not self.pool.finals_starved:
            self._speculated = True
            self.pool.metrics["speculations"] += 1
            self._final_op(("speculate", None))

    def _final_op(self, op: tuple[str, Any]) -> None:
        self._final_ops.append(op)
        self._final_wake.set()

    def _op(self, op: tuple[str, Any]) -> None:
        if self._final is not None:
            self._final_op(op)
        if self._partial is not None:
            self._partial_ops.append(op)
            if op[0] == "frames":
                self._partial_backlog += len(op[1])
            self._pump_partials()

    # -- final lane

    async def _final_lane(self) -> None:
        loop = asyncio.get_running_loop()
        stream = self._final
        ops = self._final_ops
        while True:
            while not ops:
                self._final_wake.clear()
                await self._final_wake.wait()
            op = ops.popleft()
            if op is _END:
                return
            if stream is None:
                continue
            kind = op[0]
            if kind == "frames":
                frames = list(op[1])
                while ops and ops[0] is not _END and ops[0][0] == "frames":
                    frames.extend(ops.popleft()[1])
                if self._cheap_feed:  # a buffer append: no thread hop behind other decodes
                    _feed_all(stream, frames)
                else:
                    await loop.run_in_executor(self.pool._final_exec, _feed_all, stream, frames)
            elif kind == "start":
                stream.start_utterance(op[1])
            elif kind == "end":
                await self._run_final(stream, *op[1])
            elif kind == "speculate" and isinstance(stream, SpeculativeStt):
                await self.pool._decode(stream.speculate)
            elif kind == "unspeculate" and isinstance(stream, SpeculativeStt):
                stream.drop_speculation()
                self.pool.metrics["speculations_dropped"] += 1

    async def _run_final(self, stream: StreamingStt, t_end: float, hangover_ms: int) -> None:
        pool = self.pool
        if pool._final_slots.locked():
            pool.metrics["finals_waited"] += 1
            log.warning(
                "speech overload: a final waits for a slot (%d pending)", pool.pending_finals
            )
        async with pool._final_slots:
            pool.pending_finals += 1
            try:
                result: Final | BaseException
                if getattr(stream, "speculation_ready", False):
                    # the speculation's text: nothing left to decode, no thread to wait for
                    result = stream.end_utterance()
                else:
                    result = await pool._decode(stream.end_utterance)
                pool.metrics["finals"] += 1
                after_event = (time.perf_counter() - t_end) * 1000
                pool.final_latency_ms.append(after_event)
                pool.speech_end_to_final_ms.append(after_event + hangover_ms)
            except Exception as e:
                pool.metrics["final_errors"] += 1
                log.exception("final transcription failed")
                result = e
            finally:
                pool.pending_finals -= 1
        self._finals.put_nowait(result)

    async def next_final(self, timeout: float | None = None) -> Final:
        item = await asyncio.wait_for(self._finals.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    # -- partial lane (shed first)

    def _pump_partials(self) -> None:
        if self._partial_busy or not self._partial_ops:
            return
        pool = self.pool
        limit = pool.limits.max_partial_backlog_ms // FRAME_MS
        if pool.finals_starved or self._partial_backlog > limit:
            self._drop_partial_frames(keep=0 if pool.finals_starved else limit)
        if pool.decoding and not self._closed:
            # finals first: hold partial work while a final decode runs (over the backlog
            # limit the oldest frames are shed as above); the decode's end pumps again
            if self not in pool._held_partials:
                pool._held_partials[self] = None
                pool.metrics["partial_holds"] += 1
            return
        ops = self._take_partial_batch(pool.limits.max_partial_batch_ms // FRAME_MS)
        if not ops:
            return
        stream = self._partial
        if stream is None:
            return
        self._partial_busy = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(pool._partial_exec, _run_partial_ops, stream, ops)
        fut.add_done_callback(self._partials_done)

    def _take_partial_batch(self, max_frames: int) -> list[Any]:
        """The queued partial ops up to ``max_frames`` frames (a short batch holds the
        partial thread, and with it the GIL, briefly: a final that arrives meanwhile
        gets the cores sooner)."""
        ops: list[Any] = []
        n = 0
        q = self._partial_ops
        while q and n < max_frames:
            op = q.popleft()
            if op[0] == "frames":
                room = max_frames - n
                if len(op[1]) > room:
                    q.appendleft(("frames", op[1][room:]))
                    op = ("frames", op[1][:room])
                n += len(op[1])
            ops.append(op)
        self._partial_backlog -= n
        return ops

    def _drop_partial_frames(self, keep: int) -> None:
        """Drop the oldest queued frames beyond ``keep``; start/end ops always stay."""
        excess = self._partial_backlog - keep
        if excess <= 0:
            return
        kept: deque[Any] = deque()
        dropped = 0
        for op in self._partial_ops:
            if op[0] == "frames" and dropped < excess:
                take = min(len(op[1]), excess - dropped)
                dropped += take
                rest = op[1][take:]
                if rest:
                    kept.append(("frames", rest))
            else:
                kept.append(op)
        self._partial_ops = kept
        self._partial_backlog -= dropped
        self.pool._shed(dropped)

    def _partials_done(self, fut: asyncio.Future[list[Partial]]) -> None:
        self._partial_busy = False
        try:
            partials = fut.result()
        except Exception:
            log.exception("partial recognition failed")
            partials = []
        self.pool.metrics["partials"] += len(partials)
        if self.on_partial is not None:
            for p in partials:
                self.on_partial(p)
        if not self._closed or self._partial_ops:
            self._pump_partials()

    # -- end

    async def close(self) -> None:
        """End an open utterance (its final is still delivered), drain, release streams."""
        if self._closed:
            return
        ev = self.detector.flush()
        if ev is not None:
            self._op(("end", (time.perf_counter(), 0)))
        self._closed = True
        self._final_ops.append(_END)
        self._final_wake.set()
        await self._final_task
        self.pool._held_partials.pop(self, None)
        while self._partial_busy or self._partial_ops:
            if not self._partial_busy:
                self._pump_partials()  # closed: nothing is held any more
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        for s in (self._partial, self._final):
            if s is not None:
                await loop.run_in_executor(self.pool._partial_exec, s.close)


def _feed_all(stream: StreamingStt, frames: list[bytes]) -> None:
    for f in frames:
        stream.feed(f)


def _run_partial_ops(stream: StreamingStt, ops: list[Any]) -> list[Partial]:
    out: list[Partial] = []
    for kind, arg in ops:
        if kind == "start":
            stream.start_utterance(arg)
        elif kind == "frames":
            for f in arg:
                p = stream.feed(f)
                if p is not None:
                    out.append(p)
        elif kind == "end":
            stream.end_utterance()
    return out
