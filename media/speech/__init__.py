"""Speech engines: VAD, streaming STT (partials + finals) and TTS behind small interfaces.

``import media.speech`` is cheap: it loads only the interfaces and the registry; each engine
imports its heavy library (webrtcvad, pocketsphinx, faster-whisper, ...) when it is built,
and Piper runs only in a worker process. Invariant: all audio here is canonical PCM
(s16le mono 16 kHz, 20 ms frames of 640 bytes). See docs/speech.md.
"""

from media.speech.base import (
    FRAME_BYTES,
    FRAME_MS,
    SAMPLE_RATE,
    EngineUnavailable,
    Final,
    Partial,
    SegmenterConfig,
    SegmentEvent,
    SpeechSegmenter,
    StreamingStt,
    SttEngine,
    Tts,
    Vad,
)
from media.speech.registry import (
    Engines,
    SpeechConfig,
    build_engines,
    names,
    register_stt,
    register_tts,
    register_vad,
)

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SAMPLE_RATE",
    "EngineUnavailable",
    "Engines",
    "Final",
    "Partial",
    "SegmentEvent",
    "SegmenterConfig",
    "SpeechConfig",
    "SpeechSegmenter",
    "StreamingStt",
    "SttEngine",
    "Tts",
    "Vad",
    "build_engines",
    "names",
    "register_stt",
    "register_tts",
    "register_vad",
]
