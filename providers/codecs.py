"""Audio codecs and rate conversion between provider wire formats and voicehub's canonical
PCM: signed 16-bit little-endian, mono, 16 kHz, 20 ms frames of 640 bytes.

Invariant: a stream converted frame by frame equals the stream converted in one piece -
converters keep their filter state and a sample remainder between calls, so 20 ms (or
30 ms) frames get no clicks at frame edges and no added latency beyond one frame. The C
implementation is the standard library's ``audioop`` (Python 3.11/3.12) or its drop-in
port ``audioop-lts`` (3.13+).
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

CANONICAL_RATE = 16000
"""Samples per second of every frame a call session carries."""
SAMPLE_WIDTH = 2
FRAME_MS = 20
CANONICAL_FRAME_BYTES = CANONICAL_RATE * SAMPLE_WIDTH * FRAME_MS // 1000  # 640


def frame_bytes(rate: int, ms: int = FRAME_MS, width: int = SAMPLE_WIDTH) -> int:
    """Bytes of one ``ms`` frame of mono audio at ``rate`` with ``width``-byte samples."""
    return rate * width * ms // 1000


def ulaw_to_pcm16(data: bytes) -> bytes:
    """G.711 μ-law bytes -> 16-bit little-endian linear PCM (same rate)."""
    return audioop.ulaw2lin(data, SAMPLE_WIDTH)


def pcm16_to_ulaw(data: bytes) -> bytes:
    return audioop.lin2ulaw(data, SAMPLE_WIDTH)


def alaw_to_pcm16(data: bytes) -> bytes:
    """G.711 A-law bytes -> 16-bit little-endian linear PCM (same rate)."""
    return audioop.alaw2lin(data, SAMPLE_WIDTH)


def pcm16_to_alaw(data: bytes) -> bytes:
    return audioop.lin2alaw(data, SAMPLE_WIDTH)


class Resampler:
    """Stateful 16-bit mono rate conversion (``audioop.ratecv``, keeps its state)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._state: tuple[int, tuple[tuple[int, int], ...]] | None = None
        # downsampling: a two-tap average before decimation keeps the worst aliasing out
        self._weights = (1, 1) if out_rate < in_rate else (1, 0)

    def convert(self, pcm: bytes) -> bytes:
        if self.in_rate == self.out_rate or not pcm:
            return pcm
        out, self._state = audioop.ratecv(
            pcm, SAMPLE_WIDTH, 1, self.in_rate, self.out_rate, self._state, *self._weights
        )
        return out


class Framer:
    """Cuts a byte stream into frames of exactly ``size`` bytes (keeps the remainder)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("frame size must be positive")
        self.size = size
        self._buf = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if not buf and len(data) == self.size:
            return [bytes(data)]  # the common case: exactly one frame, nothing held
        buf += data
        n = len(buf) // self.size
        if not n:
            return []
        out = [bytes(buf[i * self.size : (i + 1) * self.size]) for i in range(n)]
        del buf[: n * self.size]
        return out

    def flush(self, pad: bool = True) -> bytes | None:
        """The remainder as a last frame (zero-padded with ``pad``), or None."""
        if not self._buf:
            return None
        rest = bytes(self._buf)
        self._buf.clear()
        return rest + b"\x00" * (self.size - len(rest)) if pad else rest

    def __len__(self) -> int:
        return len(self._buf)


class Decoder:
    """A provider's inbound payloads -> canonical 20 ms frames (16 kHz s16le)."""

    def __init__(self, encoding: str, rate: int) -> None:
        enc = encoding.lower()
        if enc not in ("mulaw", "ulaw", "alaw", "l16", "pcm16"):
            raise ValueError(f"unsupported audio encoding {encoding!r}")
        self.encoding = enc
        self.rate = rate
        self._resample = Resampler(rate, CANONICAL_RATE)
        self._framer = Framer(CANONICAL_FRAME_BYTES)
        self._primed = rate == CANONICAL_RATE
        """The resampler's first output is short by its filter delay (a sample); that
        first output is padded at its start with the missing samples (silence), so a
        20 ms payload becomes exactly one frame and no frame is held back."""

    def decode(self, payload: bytes) -> list[bytes]:
        if self.encoding in ("mulaw", "ulaw"):
            pcm = ulaw_to_pcm16(payload)
        elif self.encoding == "alaw":
            pcm = alaw_to_pcm16(payload)
        else:
            if len(payload) % 2:
                raise ValueError("16-bit PCM payload has an odd number of bytes")
            pcm = payload
        out = self._resample.convert(pcm)
        if not self._primed and out:
            self._primed = True
            want = len(pcm) * CANONICAL_RATE // self.rate
            if len(out) < want:
                out = bytes(want - len(out)) + out
        return self._framer.push(out)


class Encoder:
    """Canonical frames -> a provider's outbound payloads of ``frame_ms`` each."""

    def __init__(self, encoding: str, rate: int, frame_ms: int = FRAME_MS) -> None:
        enc = encoding.lower()
        if enc not in ("mulaw", "ulaw", "alaw", "l16", "pcm16"):
            raise ValueError(f"unsupported audio encoding {encoding!r}")
        self.encoding = enc
        self.rate = rate
        self._resample = Resampler(CANONICAL_RATE, rate)
        self._framer = Framer(frame_bytes(rate, frame_ms))

    def encode(self, pcm: bytes) -> list[bytes]:
        frames = self._framer.push(self._resample.convert(pcm))
        if self.encoding in ("mulaw", "ulaw"):
            return [pcm16_to_ulaw(f) for f in frames]
        if self.encoding == "alaw":
            return [pcm16_to_alaw(f) for f in frames]
        return frames
