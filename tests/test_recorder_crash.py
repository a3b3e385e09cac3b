"""Recorder crash safety: SIGKILL a child process mid-recording, then reopen / recover.

The child writes both channels as fast as a light pacing allows (about 50x real time),
with a PCI pause every 10 s of media time, and prints ``durable <ms> <k>`` after each
fsync it made. The parent kills it with SIGKILL at a random moment after a few seconds of
audio are durable, checks (on a copy recovered separately) that everything reported
durable survived, reopens the recording in a second child (continuing after a restart gap),
kills that one too, and recovers: the final file verifies, every stored frame is bit-exact,
nothing appears in a gap, and the duration is exactly what was kept.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_recorder import SPM, frame, read_wav, samples

from media.recorder import (
    Keyring,
    RecordingWriter,
    export_wav,
    load_finalized,
    recover,
    unfinished,
    verify,
)

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from pathlib import Path
from media.recorder import Keyring, RecordingWriter
from test_recorder import frame
root, data_dir, start_k = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
kr = Keyring.load_or_create(data_dir)
if start_k == 0:
    w = RecordingWriter.create(root, 42, 7, kr, start_ms=0, sync_interval_ms=300)
else:
    w = RecordingWriter.reopen(root, 42, 7, kr, 20 * start_k, sync_interval_ms=300)
    if w.paused:
        w.resume(20 * start_k)
os.write(1, b"ready\n")
last, k = -1, start_k
while True:
    ts = 20 * k
    if k % 500 == 200:
        w.pause("pci", ts)
    if k % 500 == 260:
        w.resume(ts)
    w.write("caller", frame(k), ts)
    w.write("agent", frame(-k - 1), ts)
    if w.durable_ms != last:
        last = w.durable_ms
        os.write(1, f"durable {last} {k}\n".encode())
    k += 1
    if k % 50 == 0:
        time.sleep(0.02)
"""


def paused(k: int) -> bool:
    return 200 <= k % 500 < 260


def run_and_kill(root: Path, data_dir: Path, start_k: int, rng: random.Random) -> int:
    """Start a child, wait until >= 3 s past its start are durable, SIGKILL it; the last
    durable media time it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(root), str(data_dir), str(start_k)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    durable = -1
    deadline = time.monotonic() + 20
    kill_after: float | None = None
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            assert line, f"child exited early with {proc.wait()}"
            if line.startswith("durable"):
                durable = int(line.split()[1])
                if kill_after is None and durable >= 20 * start_k + 3000:
                    kill_after = time.monotonic() + rng.uniform(0, 0.4)
            if kill_after is not None and time.monotonic() >= kill_after:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and durable >= 20 * start_k + 3000
    return durable


def present_frames(wav: Path) -> tuple[set[int], set[int]]:
    """Which frames k are bit-exact in the WAV (caller, agent); every other frame slot
    must be pure silence (the child only writes whole frames at 20 ms steps)."""
    left, right, n = read_wav(wav)
    assert n % 320 == 0
    got: tuple[set[int], set[int]] = (set(), set())
    for k in range(n // 320):
        sl = slice(320 * k, 320 * k + 320)
        for ch, (data, pcm) in enumerate(((left, frame(k)), (right, frame(-k - 1)))):
            if data[sl] == samples(pcm):
                got[ch].add(k)
            else:
                assert not any(data[sl]), f"channel {ch} frame {k} is neither audio nor silence"
    return got


def check_prefix(got: set[int], lo: int, hi: int) -> None:
    """Every unpaused frame in [lo, hi) is present."""
    missing = [k for k in range(lo, hi) if not paused(k) and k not in got]
    assert not missing, f"durable frames lost: {missing[:5]}..."


def test_sigkill_reopen_sigkill_recover(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    root, data_dir = tmp_path / "rec", tmp_path / "data"
    data_dir.mkdir()

    # ---- first crash: a separately recovered copy holds everything reported durable
    durable1 = run_and_kill(root, data_dir, 0, rng)
    kr = Keyring.load_or_create(data_dir)
    assert [r for _, r, _ in unfinished(root)] == [42]
    shutil.copytree(root, tmp_path / "copy")
    (r1,) = recover(tmp_path / "copy", kr)
    assert r1.recovered and r1.duration_ms >= durable1, (seed, r1.duration_ms, durable1)
    export_wav(tmp_path / "copy" / r1.storage_uri, kr, tmp_path / "one.wav")
    got1 = present_frames(tmp_path / "one.wav")
    check_prefix(got1[0], 0, (durable1 - 20) // 20)
    check_prefix(got1[1], 0, (durable1 - 20) // 20)
    gap_ends = [g.end_ms for g in r1.gaps]
    assert r1.duration_ms == max([20 * (max(got1[0] | got1[1]) + 1), *gap_ends]), seed
    assert all(paused(g.start_ms // 20) for g in r1.gaps), r1.gaps

    # ---- reopen in a new process after a pause in time, crash again, recover
    kept1 = r1.duration_ms // 20  # the frames the first session kept
    start_k = kept1 + 75
    if paused(start_k):
        start_k += 60
    durable2 = run_and_kill(root, data_dir, start_k, rng)
    (r2,) = recover(root, kr)
    assert not unfinished(root) and r2.duration_ms >= durable2, seed
    info = verify(root / r2.storage_uri, kr, expected_checksum=r2.checksum)
    assert info.duration_ms == r2.duration_ms
    export_wav(root / r2.storage_uri, kr, tmp_path / "two.wav")
    got = present_frames(tmp_path / "two.wav")
    for ch in (0, 1):
        assert {k for k in got[ch] if k < kept1} == got1[ch], seed  # phase 1 unchanged
        assert not {k for k in got[ch] if kept1 <= k < start_k}  # nothing in the restart gap
        check_prefix(got[ch], start_k, (durable2 - 20) // 20)
        assert not any(paused(k) for k in got[ch])
    restart = [g for g in r2.gaps if g.end_ms == 20 * start_k]
    assert restart and restart[0].reason in ("recorder_restart", "pci"), r2.gaps
    assert len(read_wav(tmp_path / "two.wav")[0]) == r2.duration_ms * SPM


def test_recover_drops_a_torn_tail_and_skips_unreadable(tmp_path: Path) -> None:
    kr = Keyring.generate()
    w = RecordingWriter.create(tmp_path, 1, 1, kr, chunk_ms=200)
    for k in range(100):
        w.write("caller", frame(k), 20 * k)
    w.abort()
    part = tmp_path / "1" / "1.vhrec.part"
    data = part.read_bytes()
    part.write_bytes(data[: len(data) - 1000])  # cut into the last record
    other = Keyring.generate()  # a recording under a master key this keyring lacks
    RecordingWriter.create(tmp_path, 2, 1, other).abort()
    (tmp_path / "1" / "3.vhrec.part.tmp-0000").write_bytes(b"half a header")

    (done,) = recover(tmp_path, kr)
    assert done.recording_id == 1 and done.recovered and done.dropped_bytes > 0
    assert (tmp_path / "1" / "2.vhrec.part").exists()  # left alone, logged
    assert not (tmp_path / "1" / "3.vhrec.part.tmp-0000").exists()
    info = verify(tmp_path / done.storage_uri, kr, expected_checksum=done.checksum)
    assert info.manifest["finalized_by"] == "recover"
    # the cut fell in the last record (200 ms = 10 frames): exactly those are gone
    assert done.duration_ms == 1800 and done.channels["caller"].audio_ms == 1800
    export_wav(tmp_path / done.storage_uri, kr, tmp_path / "t.wav")
    left, _, n = read_wav(tmp_path / "t.wav")
    assert n == 1800 * SPM
    for k in range(90):
        assert left[320 * k : 320 * k + 320] == samples(frame(k))
    assert recover(tmp_path, kr) == []  # idempotent


def test_recover_a_crash_during_finalize(tmp_path: Path) -> None:
    """Killed while writing the footer or before the rename: recovery yields a valid file
    with the same audio, whatever part of the footer reached the disk."""
    kr = Keyring.generate()
    w = RecordingWriter.create(tmp_path / "src", 1, 1, kr)
    for k in range(120):
        w.write("caller", frame(k), 20 * k)
        w.write("agent", frame(-k - 1), 20 * k)
    done = w.finalize(end_ms=2500)
    data = (tmp_path / "src" / done.storage_uri).read_bytes()
    footer_at = int.from_bytes(data[-16:-8], "little")
    export_wav(tmp_path / "src" / done.storage_uri, kr, tmp_path / "ref.wav")
    for i, cut in enumerate((len(data), len(data) - 3, len(data) - 16, footer_at + 30)):
        root = tmp_path / f"r{i}"
        (root / "1").mkdir(parents=True)
        (root / "1" / "1.vhrec.part").write_bytes(data[:cut])
        (got,) = recover(root, kr)
        assert got.dropped_bytes == (0 if cut == len(data) else cut - footer_at)
        # a footer that made it whole keeps the requested end; a torn one ends at the audio
        assert got.duration_ms == (2500 if cut == len(data) else 2400)
        export_wav(root / got.storage_uri, kr, root / "x.wav")
        left, right, n = read_wav(root / "x.wav")
        ref_l, ref_r, _ = read_wav(tmp_path / "ref.wav")
        assert left == ref_l[:n] and right == ref_r[:n]


def test_load_finalized_matches_finalize(tmp_path: Path) -> None:
    """A crash after finalize but before ``recording_finalize``: the file describes itself."""
    kr = Keyring.generate()
    w = RecordingWriter.create(tmp_path, 3, 2, kr)
    for k in range(80):
        w.write("caller", frame(k), 20 * k)
        if k == 40:
            w.pause("pci", 20 * k)
        if k == 60:
            w.resume(20 * k)
    done = w.finalize(end_ms=2000)
    assert load_finalized(tmp_path, 2, 3, kr) == done
    assert recover(tmp_path, kr) == []  # nothing unfinished
