"""The offline default engines for real: Piper as the synthetic caller, webrtc VAD and the
segmenter finding its speech, the phone line (μ-law 8 kHz) in between, pocketsphinx
partials and whisper finals; TTS determinism; Piper's process boundary; no network.

Invariant checked: what the agent side says comes back as the same words through the
caller side (closing the loop), with the same bytes every run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from speech_support import (
    DEFAULTS,
    NO,
    YES,
    frames,
    need_modules,
    phone_line,
    piper_clip,
    shared_engines,
    silence,
    speech_bounds_ms,
)

from media.speech import EngineUnavailable, Final, Partial
from media.speech.base import pcm_ms
from media.speech.stt import normalize_text
from media.speech.vad import UtteranceDetector

pytestmark = need_modules(*DEFAULTS)

LEAD_MS, TAIL_MS = 1000, 1500


def recognize(pcm: bytes) -> tuple[list[Final], list[Partial], list[tuple[int, int]]]:
    """Run a clip through VAD + segmenter into pocketsphinx (partials) and whisper (final),
    as a call would: only the detected utterances' audio reaches the recognizers."""
    eng = shared_engines()
    assert eng.vad is not None and eng.stt_final is not None and eng.stt_partial is not None
    det = UtteranceDetector(eng.vad, eng.config.segmenter)
    final, partial = eng.stt_final.open(), eng.stt_partial.open()
    finals: list[Final] = []
    partials: list[Partial] = []
    spans: list[tuple[int, int]] = []
    try:
        for f in frames(pcm):
            step = det.push(f)
            ev = step.event
            if ev is not None and ev.kind == "start":
                final.start_utterance(step.audio_start_ms)
                partial.start_utterance(step.audio_start_ms)
            for a in step.audio:
                final.feed(a)
                p = partial.feed(a)
                if p is not None:
                    partials.append(p)
            if ev is not None and ev.kind == "end":
                assert ev.speech_end_ms is not None
                spans.append((ev.speech_start_ms, ev.speech_end_ms))
                finals.append(final.end_utterance())
                partial.end_utterance()
    finally:
        final.close()
        partial.close()
    return finals, partials, spans


def test_tts_is_deterministic_canonical_and_plausible() -> None:
    tts = shared_engines().tts
    assert tts is not None and tts.name == "piper"
    a = tts.synthesize(YES)
    b = tts.synthesize(YES)
    assert a == b
    assert len(a) % 2 == 0
    seconds = pcm_ms(a) / 1000
    words = len(YES.split())
    assert 1.5 < seconds < 5.0 and 1.5 < words / seconds < 5.0, seconds
    # canonical 16 kHz: the voice is 22.05 kHz; the worker resampled it
    assert tts.voice_rate == 22050  # type: ignore[attr-defined]
    assert tts.last_stats["samples"] == len(a) // 2  # type: ignore[attr-defined]


def test_streaming_chunks_equal_the_whole_and_come_per_sentence() -> None:
    tts = shared_engines().tts
    assert tts is not None
    text = "Hello. Thanks for calling. How can I help you today?"
    chunks = list(tts.synthesize_stream(text))
    assert len(chunks) >= 3  # one per sentence (plus the resampler's tail)
    assert all(len(c) % 2 == 0 for c in chunks)
    assert b"".join(chunks) == tts.synthesize(text)
    # stopping early keeps the worker in step: the next request is intact
    gen = tts.synthesize_stream(text)
    next(gen)
    gen.close()
    assert tts.synthesize(YES) == piper_clip(YES)


def test_piper_runs_in_another_process() -> None:
    tts = shared_engines().tts
    assert tts is not None
    tts.synthesize("check")
    assert "piper" not in sys.modules
    assert not any(m.startswith("piper.") for m in sys.modules)
    pid = tts.pid  # type: ignore[attr-defined]
    assert pid is not None and pid != os.getpid()


@pytest.mark.parametrize("line", ["clean", "phone"])
def test_vad_segmenter_finds_the_utterance(line: str) -> None:
    speech = piper_clip(YES)
    clip = silence(LEAD_MS) + speech + silence(TAIL_MS)
    if line == "phone":
        clip = phone_line(clip)
    s0, s1 = speech_bounds_ms(speech, threshold=200)
    truth = (LEAD_MS + s0, LEAD_MS + s1)
    eng = shared_engines()
    assert eng.vad is not None
    det = UtteranceDetector(eng.vad, eng.config.segmenter)
    events = [ev for f in frames(clip) if (ev := det.push(f).event) is not None]
    assert [e.kind for e in events] == ["start", "end"], events
    start, end = events[0].speech_start_ms, events[1].speech_end_ms
    assert end is not None
    assert abs(start - truth[0]) <= 100, (start, truth)
    assert abs(end - truth[1]) <= 100, (end, truth)
    # decided after the hangover (plus the webrtc VAD's own, which the trim took back)
    hangover = eng.config.segmenter.end_silence_ms
    assert hangover <= events[1].at_ms - end <= hangover + 200


@pytest.mark.parametrize(
    ("said", "heard"),
    [(YES, "yes i agree to the recording of this call"), (NO, "no i don't agree")],
)
def test_closing_the_loop_through_the_phone_line(said: str, heard: str) -> None:
    clip = phone_line(silence(LEAD_MS) + piper_clip(said) + silence(TAIL_MS))
    finals, partials, spans = recognize(clip)
    assert len(finals) == 1, finals
    final = finals[0]
    # deterministic synthesis + greedy decoding: the exact normalized text is stable
    assert normalize_text(final.text) == heard, final
    assert final.engine == "whisper"
    assert final.confidence is not None and final.confidence > 0.5
    # the final covers the padded utterance, in stream time
    assert final.start_ms <= spans[0][0] <= spans[0][1] <= final.end_ms
    # pocketsphinx said something while the caller was still speaking
    assert partials, "no partials"
    assert any(p.at_ms < spans[0][1] and p.text for p in partials)
    assert all(p.engine == "pocketsphinx" for p in partials)


def test_pocketsphinx_final_gets_the_key_words() -> None:
    eng = shared_engines()
    assert eng.stt_partial is not None
    s = eng.stt_partial.open()
    s.start_utterance()
    for f in frames(phone_line(piper_clip(YES))):
        s.feed(f)
    final = s.end_utterance()
    s.close()
    words = set(normalize_text(final.text).split())
    # pocketsphinx is a much weaker recognizer: key words only
    assert {"yes", "agree", "recording"} <= words, final.text


def test_silence_gives_no_utterance_and_an_empty_final() -> None:
    finals, partials, spans = recognize(silence(3000))
    assert (finals, partials, spans) == ([], [], [])
    eng = shared_engines()
    assert eng.stt_final is not None
    s = eng.stt_final.open()
    s.start_utterance(0)
    for f in frames(silence(60)):
        s.feed(f)
    final = s.end_utterance()
    assert (final.text, final.start_ms, final.end_ms) == ("", 0, 60)


OFFLINE_CHILD = """
import json, os, sys
from media.speech import build_engines, SpeechConfig
eng = build_engines(SpeechConfig(tts_fallbacks=()))
pcm = eng.tts.synthesize("no I don't agree")
s = eng.stt_final.open(); s.start_utterance()
for i in range(0, len(pcm) - 639, 640):
    s.feed(pcm[i:i + 640])
text = s.end_utterance().text
eng.close()
print(json.dumps({"text": text, "hf_offline": os.environ.get("HF_HUB_OFFLINE")}))
"""


def test_everything_loads_offline() -> None:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    dead = "http://127.0.0.1:9"  # any network attempt fails fast instead of hanging
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env[k] = dead
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    out = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHILD],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["hf_offline"] == "1"
    assert normalize_text(got["text"]) == "no i don't agree"


@pytest.mark.parametrize("name", ["espeak", "flite"])
def test_subprocess_tts_fallbacks(name: str) -> None:
    from media.speech.tts import EspeakTts, FliteTts

    cls = {"espeak": EspeakTts, "flite": FliteTts}[name]
    if shutil.which(cls.binary) is None:
        pytest.skip(f"system program {cls.binary} not installed (apt-get install {cls.package})")
    tts = cls()
    a = tts.synthesize("hello, thanks for calling")
    assert a == tts.synthesize("hello, thanks for calling")
    assert b"".join(tts.synthesize_stream("hello, thanks for calling")) == a
    assert len(a) % 2 == 0 and 0.8 < pcm_ms(a) / 1000 < 4.0
    # canonical 16 kHz speech: the VAD (which checks the frame size) finds it
    eng = shared_engines()
    assert eng.vad is not None
    vad = eng.vad.clone()
    assert sum(vad.is_speech(f) for f in frames(a)) > 20


@pytest.mark.slow
def test_full_window_whisper_agrees_with_the_fitted_window() -> None:
    from media.speech.stt import WhisperEngine

    full = WhisperEngine(window="full")
    for said in (YES, NO):
        pcm = phone_line(piper_clip(said))
        assert normalize_text(full.transcribe(pcm)[0]) == normalize_text(
            shared_engines().stt_final.transcribe(pcm)[0]  # type: ignore[union-attr]
        )


def test_a_dead_piper_worker_is_restarted() -> None:
    tts = shared_engines().tts
    assert tts is not None
    before = piper_clip(NO)  # made by the first process
    old = tts.pid  # type: ignore[attr-defined]
    os.kill(old, 9)
    tts._proc.wait()  # type: ignore[attr-defined]
    assert tts.synthesize(NO) == before  # same bytes from the new process
    assert tts.pid not in (None, old)  # type: ignore[attr-defined]


def test_a_piper_worker_that_cannot_load_is_unavailable(tmp_path: Path) -> None:
    from media.speech.tts import PiperTts

    with pytest.raises(EngineUnavailable, match="failed to load"):
        PiperTts(model=tmp_path / "missing.onnx")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_whisper_decodes_do_not_leave_threads_spinning() -> None:
    # numpy's OpenBLAS keeps idle threads spinning ~0.1 s after each matmul (the mel
    # filterbank): the engine limits it to one thread, so a decode costs only its own CPU
    import time

    from media.speech.stt import limit_blas_threads

    eng = shared_engines().stt_final
    assert eng is not None and limit_blas_threads(1)
    pcm = phone_line(piper_clip(YES))
    stream = eng.open()
    stream.start_utterance(0)
    for f in frames(pcm):
        stream.feed(f)
    t0, c0 = time.perf_counter(), time.process_time()
    final = stream.end_utterance()
    time.sleep(0.15)  # spinning threads would burn CPU here
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stream.close()
    assert normalize_text(final.text) == normalize_text(YES)
    assert cpu < wall - 0.1, (cpu, wall)  # the sleep cost no CPU
