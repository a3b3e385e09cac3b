"""The provider-neutral call session: what every ingress adapter (Twilio, Vonage, later SIP
and WebRTC) turns its media stream into, and what the media worker consumes.

Inbound, an adapter pushes canonical audio frames (16 kHz s16le mono, 20 ms, timestamped in
media milliseconds since the stream started), DTMF digits, playback marks it was told about
and the end of the stream; the consumer reads them in arrival order from ``events()``. A
consumer may also set ``audio_sink``: then a frame that arrives while nothing is queued is
handed to it at once, synchronously, in the adapter's task (no queue, no task switch: the
per-frame cost that matters at hundreds of calls); anything queued keeps its order, so the
sink never sees a frame before an event that arrived earlier.
Outbound, the consumer queues canonical PCM with optional marks (``play``) and can ``clear``
on barge-in; a pacer task sends exactly one 20 ms frame per tick against an absolute clock
(no burst, no drift: frame n leaves at t0 + n·20 ms), through the adapter's
``MediaTransport``, which encodes to the provider's wire format.

Invariants: inbound audio is never dropped (the queue is unbounded; a consumer that falls
behind shows up in ``inbound_backlog``; a sink that raises is detached, the frame is queued
and ``events()`` raises the sink's exception to the consumer); a mark resolves exactly
once, ``True`` when the provider reported playback reached it and ``False`` when it was
cleared or the stream ended; nothing here knows a provider's notions (stream ids, sids,
NCCOs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from providers.codecs import CANONICAL_FRAME_BYTES, FRAME_MS, Framer

log = logging.getLogger("voicehub.providers")


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """20 ms of the caller's audio: canonical PCM and its media time."""

    pcm: bytes
    timestamp_ms: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    digits: str
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class MarkReached:
    """The provider reported that playback reached ``name`` (or it was cleared)."""

    name: str
    played: bool


@dataclass(frozen=True, slots=True)
class StreamEnded:
    reason: str


InboundEvent = AudioFrame | Dtmf | MarkReached | StreamEnded


class MediaTransport(Protocol):
    """The adapter's half of a session: provider-format output on its media socket."""

    async def send_audio(self, pcm: bytes) -> None:
        """Send one canonical 20 ms frame (the adapter encodes it)."""
        ...

    async def send_mark(self, name: str) -> None:
        """Ask the provider to report when playback reaches this point."""
        ...

    async def send_clear(self) -> None:
        """Drop whatever audio the provider has buffered for playback."""
        ...


@dataclass
class _Mark:
    name: str
    future: asyncio.Future[bool]


@dataclass
class _Chunk:
    pcm: bytes


@dataclass
class PlaybackStats:
    frames_sent: int = 0
    late_frames: int = 0
    """Ticks that started more than one frame late (the loop was stalled)."""
    reanchors: int = 0
    """Stalls longer than ``max_lag`` after which the clock was re-anchored, not caught up."""
    max_lag_ms: float = 0.0
    clears: int = 0
    send_times: deque[float] = field(default_factory=lambda: deque(maxlen=4096))


ORIGIN_EPOCH_S = 2.0
"""``lag_ms`` anchors on the earliest arrival of the last 2-4 s: a stall shorter than that
counts in full; a fixed offset of the stream's timeline is forgotten after it."""


class CallSession:
    """One live call's media, between an adapter and its consumer."""

    def __init__(
        self,
        call_id: int,
        provider: str,
        provider_call_id: str,
        transport: MediaTransport,
        *,
        clock: Callable[[], float] | None = None,
        max_lag_s: float = 0.2,
    ) -> None:
        self.call_id = call_id
        self.provider = provider
        self.provider_call_id = provider_call_id
        self.transport = transport
        self.ended: str | None = None
        self.stats = PlaybackStats()
        self._inbound: deque[InboundEvent] = deque()
        self._inbound_wake = asyncio.Event()
        self._outbound: deque[_Chunk | _Mark] = deque()
        self._framer = Framer(CANONICAL_FRAME_BYTES)
        self._marks: dict[str, _Mark] = {}
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._clock = clock or loop.time
        self._max_lag = max_lag_s
        self._pacer = loop.create_task(self._pace(), name=f"voicehub-pacer-{call_id}")
        self._seq = 0
        self._generation = 0
        self.frames_in = 0
        self.last_inbound_ms = 0
        self.playing = False
        """True while outbound audio is queued or being sent."""
        self.on_sent: list[Callable[[bytes, int], None]] = []
        """Called with each outbound frame as it leaves and its media time (ms): how the
        recorder gets the agent's channel, timed by playout."""
        self._origin: float | None = None
        """Our clock at media time 0: the earliest ``arrival - timestamp`` of the last
        ``ORIGIN_EPOCH_S``..2x that (two buckets), so a frame's due time is ``origin +
        timestamp`` (see ``lag_ms``) and an offset the adapter's timeline picked up (a
        provider gap under its resync threshold) ages out instead of counting forever."""
        self._origin_prev = self._origin_cur = float("inf")
        self._origin_until = 0.0
        self._last_arrival = 0.0
        self._last_now = 0
        self.audio_sink: Callable[[AudioFrame], None] | None = None
        """The consumer's synchronous frame handler (see the module docstring)."""
        self._sink_error: BaseException | None = None

    # ---------------------------------------------------------------- inbound (adapter)

    def push_audio(self, pcm: bytes, timestamp_ms: int) -> None:
        if self.ended is not None:
            return
        self._seq = seq = self._seq + 1
        self.frames_in += 1
        self.last_inbound_ms = timestamp_ms
        self._last_arrival = t = self._clock()
        o = t - timestamp_ms / 1000
        if t >= self._origin_until:  # a new bucket
            self._origin_prev, self._origin_cur = self._origin_cur, o
            self._origin_until = t + ORIGIN_EPOCH_S
            self._origin = min(self._origin_prev, o)
        elif o < self._origin_cur:
            self._origin_cur = o
            if self._origin is None or o < self._origin:
                self._origin = o
        frame = AudioFrame(pcm, timestamp_ms, seq)
        sink = self.audio_sink
        if sink is not None and not self._inbound:
            try:
                sink(frame)
                return
            except Exception as e:  # the consumer's failure: hand it over, keep the frame
                self.audio_sink = None
                self._sink_error = e
        self._put(frame)

    def lag_ms(self, timestamp_ms: int) -> int:
        """How late, now, a frame of ``timestamp_ms`` is on the stream's own clock: our
        time minus its due time (``origin + timestamp``, the origin taken from the frame
        of the last 2-4 s that arrived earliest relative to its timestamp). Counts every
        delay between the provider and the caller of this - network, socket, event loop,
        queue - since a frame paced in real time arrives when it is due."""
        if self._origin is None:
            return 0
        return int((self._clock() - self._origin) * 1000) - timestamp_ms

    def push_dtmf(self, digits: str, timestamp_ms: int | None = None) -> None:
        if self.ended is None and digits:
            ts = self.last_inbound_ms if timestamp_ms is None else timestamp_ms
            self._put(Dtmf(digits, ts))

    def mark_reached(self, name: str) -> None:
        """The provider echoed a mark: playback got there."""
        m = self._marks.pop(name, None)
        if m is None:
            return  # a mark we already resolved (cleared) or never sent
        if not m.future.done():
            m.future.set_result(True)
        self._put(MarkReached(name, True))

    def end(self, reason: str = "stopped") -> None:
        """The stream is over (provider stop, socket closed, call ended)."""
        if self.ended is not None:
            return
        self.ended = reason
        self._drop_outbound()
        self._pacer.cancel()
        self._put(StreamEnded(reason))

    def media_now_ms(self) -> int:
        """Now on the stream's media timeline (ms since the provider's stream started, as
        inbound timestamps are): the newest inbound frame's timestamp plus the time since
        it arrived, so outbound audio stays aligned with the caller's audio even when the
        provider's clock and ours drift apart. Never goes backwards."""
        if self._origin is None:
            return self._last_now
        now = self.last_inbound_ms + int((self._clock() - self._last_arrival) * 1000)
        self._last_now = now = max(now, self._last_now)
        return now

    @property
    def inbound_backlog(self) -> int:
        return len(self._inbound)

    def _put(self, ev: InboundEvent) -> None:
        self._inbound.append(ev)
        if not self._inbound_wake.is_set():
            self._inbound_wake.set()

    async def events(self) -> AsyncIterator[InboundEvent]:
        """Every inbound event in arrival order, ending with ``StreamEnded``."""
        queue, wake = self._inbound, self._inbound_wake
        while True:
            while queue or self._sink_error is not None:
                if self._sink_error is not None:
                    err, self._sink_error = self._sink_error, None
                    raise err
                ev = queue.popleft()
                yield ev
                if isinstance(ev, StreamEnded):
                    return
            wake.clear()
            await wake.wait()

    # ---------------------------------------------------------------- outbound (consumer)

    def play(self, pcm: bytes, mark: str | None = None) -> asyncio.Future[bool] | None:
        """Queue canonical PCM; with ``mark``, a future that resolves when it has played
        (True) or was cleared (False)."""
        if self.ended is not None:
            raise RuntimeError(f"call {self.call_id}: the media stream has ended")
        if pcm:  # whole frames; the tail is padded with silence to a full frame
            framer = self._framer
            self._outbound.extend(_Chunk(f) for f in framer.push(pcm))
            tail = framer.flush()
            if tail is not None:
                self._outbound.append(_Chunk(tail))
        fut: asyncio.Future[bool] | None = None
        if mark is not None:
            if mark in self._marks:
                raise ValueError(f"mark {mark!r} is already pending")
            fut = asyncio.get_running_loop().create_future()
            m = _Mark(mark, fut)
            self._marks[mark] = m
            self._outbound.append(m)
        self.playing = True
        self._wake.set()
        return fut

    async def clear(self) -> None:
        """Barge-in: drop queued audio, tell the provider to drop its buffer, and resolve
        every pending mark as not played."""
        self.stats.clears += 1
        self._drop_outbound()
        if self.ended is None:
            try:
                await self.transport.send_clear()
            except Exception as e:  # the socket may be closing; the session ends elsewhere
                log.warning("call %s: clear failed: %s", self.call_id, e)

    def _drop_outbound(self) -> None:
        self._generation += 1  # a frame the pacer holds while it waits is dropped too
        self._outbound.clear()
        self._framer.flush()
        marks, self._marks = self._marks, {}
        for m in marks.values():
            if not m.future.done():
                m.future.set_result(False)
            self._put(MarkReached(m.name, False))
        self.playing = False

    def _next_frame(self) -> bytes | _Mark | None:
        """The next frame (or mark) to send, or None when nothing is queued."""
        if not self._outbound:
            return None
        item = self._outbound.popleft()
        return item if isinstance(item, _Mark) else item.pcm

    async def _pace(self) -> None:
        step = FRAME_MS / 1000
        deadline: float | None = None
        stats = self.stats
        try:
            while True:
                gen = self._generation
                item = self._next_frame()
                if item is None:
                    self.playing = False
                    deadline = None
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                if isinstance(item, _Mark):
                    await self.transport.send_mark(item.name)
                    continue
                now = self._clock()
                if deadline is None:
                    deadline = now
                elif deadline > now:
                    await asyncio.sleep(deadline - now)
                else:
                    lag = now - deadline
                    stats.max_lag_ms = max(stats.max_lag_ms, lag * 1000)
                    if lag > step:
                        stats.late_frames += 1
                    if lag > self._max_lag:  # a long stall: re-anchor, never burst to catch up
                        stats.reanchors += 1
                        deadline = now
                if gen != self._generation:  # cleared while waiting for the deadline
                    continue
                await self.transport.send_audio(item)
                stats.frames_sent += 1
                if self.on_sent:
                    at = self.media_now_ms()
                    for cb in self.on_sent:
                        try:
                            cb(item, at)
                        except Exception:
                            log.exception(
                                "call %s: an outbound frame listener failed", self.call_id
                            )
                stats.send_times.append(self._clock())
                deadline += step
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("call %s: playback stopped: %s", self.call_id, e)

    async def close(self) -> None:
        self.end("closed")
        with contextlib.suppress(asyncio.CancelledError):
            await self._pacer


SessionHandler = Callable[[CallSession], Coroutine[Any, Any, None]]


class SessionRegistry:
    """The live sessions of this process, by call id; consumers learn of new ones here."""

    def __init__(self) -> None:
        self.sessions: dict[int, CallSession] = {}
        self._handlers: list[SessionHandler] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def on_session(self, handler: SessionHandler) -> SessionHandler:
        """Run ``handler(session)`` as a task for every session opened from now on."""
        self._handlers.append(handler)
        return handler

    def get(self, call_id: int) -> CallSession | None:
        return self.sessions.get(call_id)

    def open(self, session: CallSession) -> None:
        old = self.sessions.get(session.call_id)
        if old is not None and old is not session:
            old.end("replaced")  # a reconnected stream (restart re-attach) takes over
        self.sessions[session.call_id] = session
        for h in self._handlers:
            t = asyncio.get_running_loop().create_task(h(session))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def close(self, session: CallSession, reason: str = "stopped") -> None:
        session.end(reason)
        if self.sessions.get(session.call_id) is session:
            del self.sessions[session.call_id]

    async def shutdown(self) -> None:
        for s in list(self.sessions.values()):
            await s.close()
        self.sessions.clear()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
