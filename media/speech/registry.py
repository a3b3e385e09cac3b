"""Choosing speech engines by name: ``build_engines(SpeechConfig(...)) -> Engines``.

Built-in names: VAD ``webrtc`` | ``energy``; STT ``pocketsphinx`` | ``whisper`` (either can
serve partials or finals); TTS ``piper`` | ``espeak`` | ``flite``. A cloud or other engine
plugs in by implementing the interface of ``media.speech.base`` and registering a factory
under a new name (``register_stt("acme", lambda **kw: AcmeStt(**kw))``). Invariant: a
factory is called only when its name is chosen, so an engine that is not used is never
imported; per-engine options come from ``SpeechConfig.options[name]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from media.speech.base import EngineUnavailable, SegmenterConfig, SttEngine, Tts, Vad

log = logging.getLogger("voicehub.speech")

VadFactory = Callable[..., Vad]
SttFactory = Callable[..., SttEngine]
TtsFactory = Callable[..., Tts]

_VADS: dict[str, VadFactory] = {}
_STTS: dict[str, SttFactory] = {}
_TTSS: dict[str, TtsFactory] = {}


def register_vad(name: str, factory: VadFactory) -> None:
    _VADS[name] = factory


def register_stt(name: str, factory: SttFactory) -> None:
    _STTS[name] = factory


def register_tts(name: str, factory: TtsFactory) -> None:
    _TTSS[name] = factory


def names() -> dict[str, list[str]]:
    """The registered engine names by kind."""
    return {"vad": sorted(_VADS), "stt": sorted(_STTS), "tts": sorted(_TTSS)}


# built-ins: the import happens inside each factory (cheap ``import media.speech``)


def _webrtc(**kw: Any) -> Vad:
    from media.speech.vad import WebRtcVad

    return WebRtcVad(**kw)


def _energy(**kw: Any) -> Vad:
    from media.speech.vad import EnergyVad

    return EnergyVad(**kw)


def _pocketsphinx(**kw: Any) -> SttEngine:
    from media.speech.stt import PocketsphinxEngine

    return PocketsphinxEngine(**kw)


def _whisper(**kw: Any) -> SttEngine:
    from media.speech.stt import WhisperEngine

    return WhisperEngine(**kw)


def _piper(**kw: Any) -> Tts:
    from media.speech.tts import PiperTts

    return PiperTts(**kw)


def _espeak(**kw: Any) -> Tts:
    from media.speech.tts import EspeakTts

    return EspeakTts(**kw)


def _flite(**kw: Any) -> Tts:
    from media.speech.tts import FliteTts

    return FliteTts(**kw)


register_vad("webrtc", _webrtc)
register_vad("energy", _energy)
register_stt("pocketsphinx", _pocketsphinx)
register_stt("whisper", _whisper)
register_tts("piper", _piper)
register_tts("espeak", _espeak)
register_tts("flite", _flite)


@dataclass(frozen=True)
class SpeechConfig:
    """Engine names (None = not wanted) and per-name keyword options."""

    vad: str | None = "webrtc"
    stt_partial: str | None = "pocketsphinx"
    stt_final: str | None = "whisper"
    tts: str | None = "piper"
    tts_fallbacks: tuple[str, ...] = ("espeak", "flite")
    """Tried in order when ``tts`` cannot be built (EngineUnavailable)."""
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """e.g. ``{"webrtc": {"mode": 3}, "whisper": {"cpu_threads": 1}}``."""


@dataclass
class Engines:
    """What ``build_engines`` made; ``close()`` releases models and worker processes."""

    config: SpeechConfig
    vad: Vad | None = None
    stt_partial: SttEngine | None = None
    stt_final: SttEngine | None = None
    tts: Tts | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        seen: set[int] = set()
        for eng in (self.stt_partial, self.stt_final, self.tts):
            if eng is not None and id(eng) not in seen:
                seen.add(id(eng))
                eng.close()


def _make(kind: str, table: dict[str, Callable[..., Any]], name: str, cfg: SpeechConfig) -> Any:
    factory = table.get(name)
    if factory is None:
        raise ValueError(f"unknown {kind} engine {name!r} (registered: {sorted(table)})")
    return factory(**cfg.options.get(name, {}))


def build_engines(config: SpeechConfig | None = None) -> Engines:
    """Build the engines ``config`` names. The same STT name for partials and finals shares
    one engine. Raises EngineUnavailable naming the missing package (TTS first falls back
    through ``tts_fallbacks``)."""
    cfg = config or SpeechConfig()
    out = Engines(cfg)
    built: dict[str, SttEngine] = {}
    try:
        if cfg.vad is not None:
            t0 = time.perf_counter()
            out.vad = _make("VAD", _VADS, cfg.vad, cfg)
            out.load_seconds[f"vad:{cfg.vad}"] = time.perf_counter() - t0
        for slot in ("stt_partial", "stt_final"):
            name = getattr(cfg, slot)
            if name is None:
                continue
            if name not in built:
                t0 = time.perf_counter()
                built[name] = _make("STT", _STTS, name, cfg)
                out.load_seconds[f"stt:{name}"] = time.perf_counter() - t0
            setattr(out, slot, built[name])
        if cfg.tts is not None:
            errors: list[str] = []
            for name in (cfg.tts, *cfg.tts_fallbacks):
                t0 = time.perf_counter()
                try:
                    out.tts = _make("TTS", _TTSS, name, cfg)
                except EngineUnavailable as e:
                    errors.append(str(e))
                    log.warning("TTS %r unavailable: %s", name, e)
                    continue
                out.load_seconds[f"tts:{name}"] = time.perf_counter() - t0
                break
            if out.tts is None:
                raise EngineUnavailable("no TTS engine could be built: " + "; ".join(errors))
    except BaseException:
        out.close()
        raise
    return out
