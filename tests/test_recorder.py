"""Recorder engine: round trip to WAV, no plaintext on disk, tamper detection, placement.

Real files in ``tmp_path``; every expectation is computed from the frames the test wrote
(random PCM per frame), never hard-coded. Helpers here are shared by the other
``test_recorder_*`` files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import wave
from array import array
from pathlib import Path

import pytest

from media.recorder import (
    AsyncRecordingWriter,
    FinalizedRecording,
    Keyring,
    KeyringError,
    RecorderClosed,
    RecordingError,
    RecordingWriter,
    export_wav,
    shred,
    verify,
)
from media.recording_format import REC, SLOT_BYTES, read_header
from media.recording_reader import scan

SPM = 16  # samples per ms
FRAME = 640


def frame(seed: int) -> bytes:
    """20 ms of random (non-silent) PCM determined by ``seed``."""
    pcm = bytearray(random.Random(seed).randbytes(FRAME))
    pcm[0:2] = b"\x01\x01"  # never all-zero: a missing frame cannot pass as silence
    return bytes(pcm)


def read_wav(path: Path) -> tuple[array, array, int]:
    """(left, right, frames) of a 16 kHz 16-bit stereo WAV."""
    with wave.open(str(path), "rb") as r:
        assert (r.getnchannels(), r.getsampwidth(), r.getframerate()) == (2, 2, 16000)
        n = r.getnframes()
        data = array("h", r.readframes(n))
    return data[0::2], data[1::2], n


def samples(pcm: bytes) -> array:
    return array("h", pcm)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_call(root: Path, keyring: Keyring, recording_id: int = 1) -> tuple[
    FinalizedRecording, dict[str, dict[int, bytes]]
]:  # fmt: skip
    """A 6 s call from stream time 500 ms: caller throughout, agent with a silent hole,
    a PCI pause 3000-4500. Returns the result and {channel: {timestamp_ms: pcm}}."""
    w = RecordingWriter.create(root, recording_id, 9, keyring)
    written: dict[str, dict[int, bytes]] = {"caller": {}, "agent": {}}
    for k in range(300):
        ts = 500 + 20 * k
        if ts == 3000:
            w.pause("pci", 3000)
        if ts == 4500:
            w.resume(4500)
        pcm = frame(recording_id * 10**6 + k)
        w.write("caller", pcm, ts)
        if not w.paused:
            written["caller"][ts] = pcm
        if not 1000 <= ts < 1500:
            apcm = frame(recording_id * 10**6 + 5 * 10**5 + k)
            w.write("agent", apcm, ts)
            if not w.paused:
                written["agent"][ts] = apcm
    return w.finalize(), written


def test_round_trip_bit_exact_with_gap(tmp_path: Path) -> None:
    kr = Keyring.generate()
    done, written = record_call(tmp_path / "rec", kr)
    path = tmp_path / "rec" / done.storage_uri
    assert path.exists() and not list((tmp_path / "rec").glob("*/*.part"))
    assert done.checksum == sha256(path)
    assert done.start_ms == 500 and done.duration_ms == 6000
    assert [(g.start_ms, g.end_ms, g.reason) for g in done.gaps] == [(2500, 4000, "pci")]
    assert done.channels["caller"].audio_ms == 20 * len(written["caller"])

    out = tmp_path / "call.wav"
    info = export_wav(path, kr, out, expected_checksum=done.checksum)
    assert info.duration_ms == done.duration_ms
    left, right, n = read_wav(out)
    assert n == done.duration_ms * SPM
    expect_l, expect_r = array("h", bytes(2 * n)), array("h", bytes(2 * n))
    for exp, chan in ((expect_l, "caller"), (expect_r, "agent")):
        for ts, pcm in written[chan].items():
            a = (ts - 500) * SPM
            exp[a : a + 320] = samples(pcm)
    assert left == expect_l
    assert right == expect_r
    # the gap is silence on both channels; the agent's hole too
    assert not any(left[2500 * SPM : 4000 * SPM]) and not any(right[2500 * SPM : 4000 * SPM])
    assert not any(right[500 * SPM : 1000 * SPM])
    assert any(left[4000 * SPM : 4020 * SPM])


def test_no_plaintext_on_disk(tmp_path: Path) -> None:
    kr = Keyring.generate()
    marker = (b"PLAINTEXT-PCM-MARKER" * 40)[:FRAME]
    root = tmp_path / "rec"
    w = RecordingWriter.create(root, 2, 9, kr, sync_interval_ms=200)
    for k in range(200):
        w.write("caller", marker, 20 * k)
        w.write("agent", marker[::-1], 20 * k)

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())

    mid = on_disk()
    assert len(mid) > 200 * FRAME  # most of it is durably written already...
    assert b"MARKER" not in mid and b"REKRAM" not in mid  # ...and none of it readable
    done = w.finalize()
    final = on_disk()
    assert len(final) >= 2 * 200 * FRAME
    for needle in (marker[:16], marker[::-1][:16], b"PLAINTEXT", b"MARKER"):
        assert needle not in final
    # a silent stretch must not show up as long runs of zeros (it is encrypted too)
    w2 = RecordingWriter.create(root, 3, 9, kr)
    for k in range(100):
        w2.write("caller", bytes(FRAME), 20 * k)
    w2.finalize()
    assert bytes(64) not in (root / "9" / "3.vhrec").read_bytes()
    assert done.duration_ms == 4000


def read_header_size(path: Path) -> int:
    with open(path, "rb") as f:
        return read_header(f, path.name)[0].size


# ---------------------------------------------------------------- tampering


def audio_records(path: Path, kr: Keyring) -> list[tuple[int, int, int, int]]:
    with open(path, "rb") as f:
        return scan(f, path.name, kr, strict=True).audio


@pytest.fixture
def finalized(tmp_path: Path) -> tuple[Keyring, Path, FinalizedRecording]:
    kr = Keyring.generate()
    done, _ = record_call(tmp_path / "rec", kr)
    return kr, tmp_path / "rec" / done.storage_uri, done


def tampered_copy(src: Path, dst: Path, edit: dict[int, bytes] | None = None) -> Path:
    data = bytearray(src.read_bytes())
    for off, b in (edit or {}).items():
        data[off : off + len(b)] = b
    dst.write_bytes(bytes(data))
    return dst


def test_flipped_byte_in_a_chunk_is_named(finalized, tmp_path: Path) -> None:
    kr, path, _ = finalized
    recs = audio_records(path, kr)
    off = recs[3][0]
    data = path.read_bytes()
    bad = tampered_copy(
        path,
        tmp_path / "bad.vhrec",
        {off + REC.size + 100: bytes([data[off + REC.size + 100] ^ 0x10])},
    )
    out = tmp_path / "bad.wav"
    with pytest.raises(
        RecordingError, match=r"record \d+ \(audio (caller|agent).*authentication failed"
    ):
        export_wav(bad, kr, out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    # a flipped clear header field (the start position) is caught the same way
    bad2 = tampered_copy(path, tmp_path / "bad2.vhrec", {off + 22: bytes([data[off + 22] ^ 1])})
    with pytest.raises(RecordingError, match="authentication failed"):
        verify(bad2, kr)
    # a flipped header byte
    bad3 = tampered_copy(path, tmp_path / "bad3.vhrec", {20: bytes([data[20] ^ 1])})
    with pytest.raises(RecordingError, match="header"):
        verify(bad3, kr)
    verify(path, kr)  # the original is fine


def test_swapped_chunks_are_refused(finalized, tmp_path: Path) -> None:
    kr, path, _ = finalized
    data = path.read_bytes()
    recs = audio_records(path, kr)
    lengths = {}
    for i, (off, _, _, _) in enumerate(recs):
        lengths.setdefault(int.from_bytes(data[off : off + 4], "little"), []).append(i)
    same = next(v for v in lengths.values() if len(v) >= 2)  # two records of equal size
    a, b = recs[same[0]][0], recs[same[1]][0]
    n = int.from_bytes(data[a : a + 4], "little") + 4
    bad = tampered_copy(path, tmp_path / "swap.vhrec", {a: data[b : b + n], b: data[a : a + n]})
    with pytest.raises(RecordingError, match="expected sequence number"):
        export_wav(bad, kr, tmp_path / "swap.wav")


def test_truncated_finalized_file_is_refused(finalized, tmp_path: Path) -> None:
    kr, path, done = finalized
    data = path.read_bytes()
    recs = audio_records(path, kr)
    for cut in (len(data) - 1, len(data) - 16, recs[-1][0], recs[2][0] + 50):
        bad = tmp_path / f"cut{cut}.vhrec"
        bad.write_bytes(data[:cut])
        with pytest.raises(RecordingError, match=r"truncated|footer|trailer"):
            export_wav(bad, kr, tmp_path / "cut.wav")
    with pytest.raises(RecordingError, match="checksum"):
        verify(path, kr, expected_checksum="0" * 64)
    # appended bytes after the trailer
    (tmp_path / "long.vhrec").write_bytes(data + b"\x00")
    with pytest.raises(RecordingError, match="trailer"):
        verify(tmp_path / "long.vhrec", kr)
    assert verify(path, kr, expected_checksum=done.checksum).duration_ms == done.duration_ms


def test_another_recordings_key_or_chunk_is_refused(finalized, tmp_path: Path) -> None:
    kr, path, _ = finalized
    other, _ = record_call(tmp_path / "rec", kr, recording_id=2)
    other_path = tmp_path / "rec" / other.storage_uri
    with pytest.raises(RecordingError, match="not this recording's key"):
        export_wav(path, kr, tmp_path / "x.wav", key_record=other.key_record)
    # the other file's wrapped key transplanted into this header: does not unwrap
    slot_at = read_header_size(path) - SLOT_BYTES
    other_at = read_header_size(other_path) - SLOT_BYTES  # header sizes may differ
    other_slot = other_path.read_bytes()[other_at : other_at + SLOT_BYTES]
    bad = tampered_copy(path, tmp_path / "slot.vhrec", {slot_at: other_slot})
    with pytest.raises(KeyringError, match="does not unwrap"):
        verify(bad, kr)
    # a chunk of the other recording at the same place (same sequence number and size)
    mine, theirs = audio_records(path, kr), audio_records(other_path, kr)
    data, odata = path.read_bytes(), other_path.read_bytes()
    a, b = mine[4][0], theirs[4][0]
    n = int.from_bytes(data[a : a + 4], "little") + 4
    assert data[a + 5 : a + 9] == odata[b + 5 : b + 9]  # same sequence number
    bad2 = tampered_copy(path, tmp_path / "graft.vhrec", {a: odata[b : b + n]})
    with pytest.raises(RecordingError, match="authentication failed"):
        verify(bad2, kr)
    # and another keyring entirely
    with pytest.raises(KeyringError):
        verify(path, Keyring.generate())


# ---------------------------------------------------------------- shredding, reopen, edges


def test_shred_needs_the_key_row(finalized, tmp_path: Path) -> None:
    kr, path, done = finalized
    shred(path)
    with pytest.raises(RecordingError, match="shredded"):
        export_wav(path, kr, tmp_path / "a.wav")
    info = export_wav(path, kr, tmp_path / "b.wav", key_record=done.key_record)
    assert info.duration_ms == done.duration_ms and info.checksum != done.checksum
    assert done.key_record.wrapped_key not in path.read_bytes()


def test_placement_jitter_overlap_pause_and_end(tmp_path: Path) -> None:
    kr = Keyring.generate()
    w = RecordingWriter.create(tmp_path, 5, 1, kr, start_ms=0)
    f = [frame(i) for i in range(6)]
    w.write("caller", f[0], 0)
    w.write("caller", f[1], 27)  # 7 ms late: butted against the previous frame (20)
    w.write("caller", f[2], 30)  # 10 ms early: still within the jitter, goes at 40
    w.write("caller", f[3], 45)  # 15 ms early vs end 60: the first 15 ms are dropped
    w.write("caller", f[4], 100)  # a real hole 75..100
    w.write("caller", f[4], 50)  # entirely before the end: dropped
    assert w.overlap_samples == 15 * SPM + 320
    w.pause("hold", 110)  # stored audio ends at 120: the gap starts there
    w.write("caller", f[5], 130)  # while paused: dropped
    assert w.dropped_paused_samples == 320
    w.resume(200)
    w.write("agent", f[5], 185)  # 15 ms before the gap's end: only its last 5 ms survive
    done = w.finalize(end_ms=400)
    assert done.duration_ms == 400
    assert [(g.start_ms, g.end_ms, g.reason) for g in done.gaps] == [(120, 200, "hold")]
    export_wav(tmp_path / done.storage_uri, kr, tmp_path / "x.wav")
    left, right, n = read_wav(tmp_path / "x.wav")
    assert n == 400 * SPM
    exp = array("h", bytes(2 * n))
    exp[0:320] = samples(f[0])
    exp[320:640] = samples(f[1])
    exp[640:960] = samples(f[2])
    exp[960 : 960 + 80] = samples(f[3])[240:]
    exp[1600:1920] = samples(f[4])
    assert left == exp
    assert right[200 * SPM : 205 * SPM] == samples(f[5])[240:] and not any(right[: 200 * SPM])
    assert not any(right[205 * SPM :])


def test_empty_recording_and_closed_writer(tmp_path: Path) -> None:
    kr = Keyring.generate()
    w = RecordingWriter.create(tmp_path, 6, 1, kr)
    with pytest.raises(FileExistsError):
        RecordingWriter.create(tmp_path, 6, 1, kr)
    done = w.finalize()
    assert done.duration_ms == 0 and w.finalize() is done
    with pytest.raises(RecorderClosed):
        w.write("caller", frame(1), 0)
    with pytest.raises(ValueError):
        RecordingWriter.create(tmp_path, 7, 1, kr).write("nobody", frame(1), 0)
    info = export_wav(tmp_path / done.storage_uri, kr, tmp_path / "e.wav")
    assert info.duration_ms == 0 and read_wav(tmp_path / "e.wav")[2] == 0


def test_reopen_after_abort_marks_the_restart_gap(tmp_path: Path) -> None:
    kr = Keyring.generate()
    w = RecordingWriter.create(tmp_path, 8, 1, kr)
    for k in range(100):
        w.write("caller", frame(k), 20 * k)
    w.abort()
    size = (tmp_path / "1" / "8.vhrec.part").stat().st_size
    with open(tmp_path / "1" / "8.vhrec.part", "ab") as f:
        f.write(os.urandom(700))  # a torn tail
    w2 = RecordingWriter.reopen(tmp_path, 8, 1, kr, timestamp_ms=3000)
    assert w2.dropped_bytes == 700
    assert (tmp_path / "1" / "8.vhrec.part").stat().st_size > size
    for k in range(150, 200):
        w2.write("caller", frame(k), 20 * k)
    done = w2.finalize()
    assert [(g.start_ms, g.end_ms, g.reason) for g in done.gaps] == [
        (2000, 3000, "recorder_restart")
    ]
    export_wav(tmp_path / done.storage_uri, kr, tmp_path / "r.wav")
    left, _, n = read_wav(tmp_path / "r.wav")
    assert n == 4000 * SPM
    for k in list(range(100)) + list(range(150, 200)):
        assert left[320 * k : 320 * k + 320] == samples(frame(k)), k
    assert not any(left[2000 * SPM : 3000 * SPM])


async def test_async_wrapper_round_trip(tmp_path: Path) -> None:
    kr = Keyring.generate()
    w = AsyncRecordingWriter(RecordingWriter.create(tmp_path, 10, 1, kr), batch=7)
    for k in range(60):
        if k == 30:
            await w.pause("pci", 20 * k)
        if k == 40:
            await w.resume(20 * k)
        await w.write("caller", frame(k), 20 * k)
    done = await w.finalize()
    info = await asyncio.to_thread(export_wav, tmp_path / done.storage_uri, kr, tmp_path / "a.wav")
    assert info.duration_ms == 1200 and [g.reason for g in done.gaps] == ["pci"]
    left, _, _ = read_wav(tmp_path / "a.wav")
    for k in [*range(30), *range(40, 60)]:
        assert left[320 * k : 320 * k + 320] == samples(frame(k))
    assert not any(left[600 * SPM : 800 * SPM])


def test_copy_keeps_verifying(finalized, tmp_path: Path) -> None:
    """A byte-identical copy (a backup) verifies: nothing depends on the path."""
    kr, path, done = finalized
    shutil.copy(path, tmp_path / "backup.vhrec")
    assert verify(tmp_path / "backup.vhrec", kr).checksum == done.checksum
