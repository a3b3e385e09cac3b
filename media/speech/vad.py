"""Voice activity detectors and the detector that cuts a frame stream into utterances.

``WebRtcVad`` wraps ``webrtcvad`` (pip ``webrtcvad-wheels``), imported when one is built.
``EnergyVad`` is a dependency-free RMS threshold, for tests and as a last resort.
``UtteranceDetector`` = a Vad + ``SpeechSegmenter`` + a pre-roll ring: it tells which frames
belong to the current utterance. Invariant: a detector's VAD state is its own (a clone),
each frame is handed out at most once, in order, and an utterance's audio starts ``pad_ms``
(or the stream start) before its detected speech.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from media.speech.base import (
    FRAME_BYTES,
    SAMPLE_RATE,
    SegmenterConfig,
    SegmentEvent,
    SpeechSegmenter,
    Vad,
    optional_import,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger("voicehub.speech")


def _check_frame(frame: bytes) -> None:
    if len(frame) != FRAME_BYTES:
        raise ValueError(f"a VAD frame is {FRAME_BYTES} bytes (20 ms at 16 kHz), got {len(frame)}")


class WebRtcVad:
    """Google's WebRTC VAD; ``mode`` 0 (permissive) .. 3 (aggressive about non-speech)."""

    name = "webrtc"

    def __init__(self, mode: int = 2) -> None:
        if mode not in (0, 1, 2, 3):
            raise ValueError("webrtc VAD mode is 0..3")
        need = "VAD 'webrtc' needs the pip package webrtcvad-wheels"
        webrtcvad = optional_import("webrtcvad", need)
        self.mode = mode
        self._vad: Any = webrtcvad.Vad(mode)
        # the C function itself, bound to this detector (the wrapper's checks are ours)
        native = getattr(webrtcvad, "_webrtcvad", None)
        handle = getattr(self._vad, "_vad", None)
        if native is not None and handle is not None:
            self._process: Any = functools.partial(native.process, handle, SAMPLE_RATE)
        else:
            self._process = functools.partial(self._vad.is_speech, sample_rate=SAMPLE_RATE)

    def clone(self) -> WebRtcVad:
        return WebRtcVad(self.mode)

    def is_speech(self, frame: bytes) -> bool:
        if len(frame) != FRAME_BYTES:
            _check_frame(frame)
        return bool(self._process(frame, FRAME_BYTES // 2))


class EnergyVad:
    """Speech = frame RMS above ``threshold`` (int16 units). No model; noise fools it."""

    name = "energy"

    def __init__(self, threshold: int = 300) -> None:
        self.threshold = threshold

    def clone(self) -> EnergyVad:
        return EnergyVad(self.threshold)

    def is_speech(self, frame: bytes) -> bool:
        _check_frame(frame)
        return bool(audioop.rms(frame, 2) > self.threshold)


@dataclass(slots=True)
class DetectorStep:
    """What one pushed frame produced: an event (or None) and the frames that now belong to
    the current utterance (the pre-roll plus this frame at a start; this frame inside one)."""

    event: SegmentEvent | None
    audio: list[bytes] = field(default_factory=list)
    audio_start_ms: int | None = None
    """At a start event: stream time of the first frame in ``audio``."""


class UtteranceDetector:
    """Vad decisions + segmenter + pre-roll: frames in, utterance audio and events out."""

    def __init__(
        self,
        vad: Vad,
        config: SegmenterConfig | None = None,
        *,
        trim_floor_rms: int = 100,
        max_trim_ms: int = 200,
    ) -> None:
        """``trim_floor_rms``/``max_trim_ms``: the webrtc VAD keeps saying "speech" for
        ~100-150 ms after speech stops (its internal hangover); an end boundary is moved
        back over up to ``max_trim_ms`` of trailing frames quieter than the floor
        (RMS in int16 units; 100 ~ -50 dBFS). 0 disables the trim.

        The detector owns its VAD state: it works on ``vad.clone()``, never on ``vad``."""
        self.vad = vad.clone()
        self.trim_floor_rms = trim_floor_rms
        self.segmenter = SpeechSegmenter(config)
        cfg = self.segmenter.config
        # pre-roll must cover the start window (speech that triggered the start) plus the pad
        self._ring: deque[bytes] = deque(
            maxlen=cfg.frames(cfg.pad_ms) + cfg.frames(cfg.start_window_ms) + 1
        )
        self._pad_frames = cfg.frames(cfg.pad_ms)
        self.vad_seconds = 0.0
        # frame loudness, far enough back to cover the hangover and the trim
        self._rms: deque[int] = deque(
            maxlen=cfg.frames(cfg.end_silence_ms) + cfg.frames(max_trim_ms) + 1
        )
        self._max_trim = cfg.frames(max_trim_ms) if trim_floor_rms > 0 else 0

    @property
    def in_utterance(self) -> bool:
        return self.segmenter.in_utterance

    def push(self, frame: bytes) -> DetectorStep:
        t0 = time.perf_counter()
        speech = self.vad.is_speech(frame)
        self.vad_seconds += time.perf_counter() - t0
        if self._max_trim:
            self._rms.append(audioop.rms(frame, 2))
        was_in = self.segmenter.in_utterance
        ev = self.segmenter.push(speech)
        if was_in:
            if ev is not None and ev.kind == "end" and not ev.forced:
                ev = self._trim_end(ev)
            return DetectorStep(ev, [frame])
        self._ring.append(frame)
        if ev is None:
            return DetectorStep(None, [])
        fm = self.segmenter.config.frame_ms
        now = self.segmenter.now_ms // fm  # frames pushed, this one included
        first = max(0, ev.speech_start_ms // fm - self._pad_frames)
        take = min(len(self._ring), now - first)
        audio = list(self._ring)[-take:]
        self._ring.clear()
        return DetectorStep(ev, audio, (now - take) * fm)

    def _trim_end(self, ev: SegmentEvent) -> SegmentEvent:
        assert ev.speech_end_ms is not None
        fm = self.segmenter.config.frame_ms
        # _rms[-1] is the frame ending at ev.at_ms; walk back from the VAD's last speech frame
        back = (ev.at_ms - ev.speech_end_ms) // fm + 1
        end = ev.speech_end_ms
        trimmed = 0
        while (
            trimmed < self._max_trim
            and back <= len(self._rms)
            and end - fm > ev.speech_start_ms
            and self._rms[-back] < self.trim_floor_rms
        ):
            end -= fm
            back += 1
            trimmed += 1
        return dataclasses.replace(ev, speech_end_ms=end) if trimmed else ev

    def flush(self) -> SegmentEvent | None:
        return self.segmenter.flush()
