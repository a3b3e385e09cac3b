"""The speech engines' small interfaces, their result types and the utterance segmenter.

Every engine speaks voicehub's canonical audio: signed 16-bit little-endian mono PCM at
16 kHz, cut into 20 ms frames of 640 bytes (``providers.codecs``). Engines are synchronous
objects (CPU-heavy work never runs on the event loop: ``media.speech.worker`` moves them to
threads or processes). ``SpeechSegmenter`` is pure logic: per-frame VAD decisions in,
utterance start/end events with millisecond timestamps out. Invariant: events alternate
strictly start, end, start, end ... and every timestamp is a multiple of the frame length
measured from the first frame pushed.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from providers.codecs import CANONICAL_FRAME_BYTES, CANONICAL_RATE, FRAME_MS

SAMPLE_RATE = CANONICAL_RATE
"""Samples per second of all audio engines take and produce (16 kHz)."""
FRAME_BYTES = CANONICAL_FRAME_BYTES
"""Bytes of one 20 ms canonical frame (640)."""
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
"""Canonical PCM bytes per millisecond (32)."""

__all__ = [
    "BYTES_PER_MS",
    "FRAME_BYTES",
    "FRAME_MS",
    "SAMPLE_RATE",
    "EngineUnavailable",
    "Final",
    "Partial",
    "SegmentEvent",
    "SegmenterConfig",
    "SpeculativeStt",
    "SpeechSegmenter",
    "StreamingStt",
    "SttEngine",
    "Tts",
    "Vad",
    "optional_import",
    "pcm_ms",
]


class EngineUnavailable(RuntimeError):
    """An engine cannot be built here: its pip package, system binary or model is missing.

    The message names what to install (``pip install webrtcvad-wheels`` ...)."""


def optional_import(module: str, need: str) -> Any:
    """Import an engine's third-party module (untyped: Any), or raise EngineUnavailable
    with ``need`` ("STT 'whisper' needs the pip package faster-whisper")."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EngineUnavailable(need) from e


def pcm_ms(pcm: bytes | int) -> int:
    """Duration in ms of canonical PCM (bytes or a byte count)."""
    n = pcm if isinstance(pcm, int) else len(pcm)
    return n // BYTES_PER_MS


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Partial:
    """An interim hypothesis of the utterance so far (cheap; may change or vanish)."""

    text: str
    at_ms: int
    """Stream time (ms of audio fed since the stream opened) when it was produced."""
    engine: str


@dataclass(frozen=True, slots=True)
class Final:
    """The transcript of one whole utterance."""

    text: str
    start_ms: int
    end_ms: int
    engine: str
    confidence: float | None = None
    """0..1 where the engine gives one (whisper: exp of the mean token log-probability)."""


# ---------------------------------------------------------------- interfaces


@runtime_checkable
class Vad(Protocol):
    """Per-frame voice activity: ``is_speech`` takes one 20 ms canonical frame.

    A VAD may keep state (webrtc adapts a noise model and has its own hangover), so each
    audio stream needs its own: ``clone()`` makes a fresh one with the same settings."""

    name: str

    def is_speech(self, frame: bytes) -> bool: ...

    def clone(self) -> Vad: ...


@runtime_checkable
class StreamingStt(Protocol):
    """One caller's recognizer: utterances of frames in, partials while feeding, a final.

    Not thread-safe: one stream is driven by one thread at a time."""

    engine: str

    def start_utterance(self, start_ms: int | None = None) -> None:
        """Begin an utterance at ``start_ms`` of stream time (default: the audio fed so far).
        A given ``start_ms`` sets the stream clock, so a caller that feeds only utterance
        audio still gets true timestamps: ``end_ms = start_ms + audio fed since``."""
        ...

    def feed(self, frame: bytes) -> Partial | None:
        """Add one frame; a Partial when the hypothesis changed (never for final-only
        engines)."""
        ...

    def end_utterance(self) -> Final:
        """Finish the utterance and return its transcript (may be empty text)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SpeculativeStt(Protocol):
    """A stream that can start its final early (``WhisperStream``): ``speculate()``
    transcribes the audio so far; ``end_utterance`` reuses that result unless
    ``drop_speculation()`` was called since (speech resumed).

    Optional attributes the pool looks up with ``getattr`` (any ``StreamingStt`` may have
    them): ``speculation_ready`` (True when ``end_utterance`` would only return the
    speculation's result: the pool then calls it on the event loop instead of queueing it
    behind other decodes) and ``cheap_feed`` (``feed`` only buffers: called on the loop,
    no thread hop per batch of frames)."""

    def speculate(self) -> None: ...

    def drop_speculation(self) -> None: ...


@runtime_checkable
class SttEngine(Protocol):
    """A loaded recognizer model that opens per-call streams (model shared, state not)."""

    name: str

    def open(self) -> StreamingStt: ...

    def close(self) -> None: ...


@runtime_checkable
class Tts(Protocol):
    """Text in, canonical PCM out; deterministic for a given text + voice + settings."""

    name: str

    def synthesize(self, text: str) -> bytes: ...

    def synthesize_stream(self, text: str) -> Iterator[bytes]:
        """Chunks of canonical PCM (whole samples, even byte counts) as soon as each is
        ready; their concatenation equals ``synthesize(text)``."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- segmenter


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Timings of the utterance segmenter, in ms (rounded to whole frames)."""

    start_speech_ms: int = 60
    """Speech needed inside ``start_window_ms`` before an utterance starts."""
    start_window_ms: int = 100
    end_silence_ms: int = 500
    """Continuous non-speech that ends an utterance (the hangover)."""
    pad_ms: int = 200
    """Audio kept before the start (pre-roll) and after the last speech frame; the
    detector feeds the padded span to the recognizer."""
    max_utterance_ms: int = 28_000
    """An utterance is cut here (whisper's window is 30 s)."""
    frame_ms: int = FRAME_MS

    def frames(self, ms: int) -> int:
        return max(1, -(-ms // self.frame_ms))


@dataclass(frozen=True, slots=True)
class SegmentEvent:
    """``kind`` is "start" or "end". ``speech_start_ms``/``speech_end_ms`` are the detected
    boundaries of speech (stream time, ms); ``at_ms`` is when the decision was made."""

    kind: str
    at_ms: int
    speech_start_ms: int
    speech_end_ms: int | None = None
    forced: bool = False
    """True for an end caused by ``max_utterance_ms`` rather than silence."""


class SpeechSegmenter:
    """Per-frame speech decisions -> utterance start/end events (hangover logic only)."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = cfg = config or SegmenterConfig()
        self._start_needed = cfg.frames(cfg.start_speech_ms)
        self._window: deque[bool] = deque(
            maxlen=max(self._start_needed, cfg.frames(cfg.start_window_ms))
        )
        self._end_needed = cfg.frames(cfg.end_silence_ms)
        self._max_frames = cfg.frames(cfg.max_utterance_ms)
        self._frame = 0  # frames pushed so far
        self._in_speech = False
        self._speech_start = 0  # frame index
        self._last_speech = 0  # index of the last speech frame
        self._silence = 0

    @property
    def in_utterance(self) -> bool:
        return self._in_speech

    @property
    def now_ms(self) -> int:
        return self._frame * self.config.frame_ms

    @property
    def silence_ms(self) -> int:
        """Length of the current run of non-speech inside an utterance (0 outside one)."""
        return self._silence * self.config.frame_ms if self._in_speech else 0

    def push(self, speech: bool) -> SegmentEvent | None:
        """One frame's decision; an event when an utterance starts or ends on it."""
        i = self._frame
        self._frame += 1
        fm = self.config.frame_ms
        if not self._in_speech:
            self._window.append(speech)
            if speech and sum(self._window) >= self._start_needed:
                # the utterance began at the first speech frame still in the window
                first = i - len(self._window) + 1
                for k, s in enumerate(self._window):
                    if s:
                        first += k
                        break
                self._in_speech = True
                self._speech_start = first
                self._last_speech = i
                self._silence = 0
                self._window.clear()
                return SegmentEvent("start", self._frame * fm, first * fm)
            return None
        if speech:
            self._last_speech = i
            self._silence = 0
        else:
            self._silence += 1
        if self._silence >= self._end_needed:
            return self._end(forced=False)
        if self._frame - self._speech_start >= self._max_frames:
            return self._end(forced=True)
        return None

    def flush(self) -> SegmentEvent | None:
        """End an open utterance (the stream stopped)."""
        return self._end(forced=True) if self._in_speech else None

    def _end(self, forced: bool) -> SegmentEvent:
        fm = self.config.frame_ms
        self._in_speech = False
        self._silence = 0
        end = (self._last_speech + 1) * fm if not forced else self._frame * fm
        return SegmentEvent("end", self._frame * fm, self._speech_start * fm, end, forced)
