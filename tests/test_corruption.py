"""Corruption tests: damage log segments and snapshots on purpose, then reopen and check.

Each template data directory is built once per module with a known list of commits and
copied for every damaged case. Frame boundaries are computed here with an independent
parser of the documented layout (20-byte segment header, then
``len u32 | crc32 u32 | offset u64 | payload``), not with core's own reader.

Positions and bits come from seeded ``random.Random`` instances: every failure message
names the case, so a failing case can be reproduced exactly.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core import CorruptionError, Database, Module, StoreConfig, column
from voicehub.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
SEG = 64 * 1024  # single-segment templates: 60 commits use ~5 KB of it
SMALL_SEG = 4096  # multi-segment templates
N = 60  # item commits in the single-segment templates
INSTALL = 2  # commits before the first item: the schema commit and the module install
HEADER = 20
FRAME_HEADER = 16

mod = Module("corrupt")


@mod.table(primary_key="id")
class Item:
    id: int = column(auto_inc=True)
    k: int
    note: str


@mod.reducer
def add(ctx: Any, k: int, note: str) -> int:
    return ctx.db.item.insert(k=k, note=note).id


def note(k: int) -> str:
    return f"note-{k}-" + "x" * (k * 7 % 41)


def expected(count: int, first_k: int = 0) -> list[tuple[int, int, str]]:
    return [(i + 1, first_k + i, note(first_k + i)) for i in range(count)]


def cfg(d: Path, **kw: Any) -> StoreConfig:
    kw.setdefault("segment_bytes", SEG)
    return StoreConfig(data_dir=d, durability="durable", snapshot_every=0, **kw)


def open_db(d: Path, **kw: Any) -> Database:
    return Database.open([mod], cfg(d, **kw))


def rows(db: Database) -> list[tuple[int, int, str]]:
    with db.snapshot() as s:
        return sorted((r.id, r.k, r.note) for r in s.table("item").rows())


def commit(db: Database, ks: range) -> None:
    for k in ks:
        db.call_sync("add", {"k": k, "note": note(k)})


def parse_frames(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, offset) of every frame before the zero fill / end of file."""
    out = []
    pos = HEADER
    while pos + FRAME_HEADER <= len(data):
        n, crc, off = struct.unpack_from("<IIQ", data, pos)
        if n == 0 and crc == 0 and off == 0:
            break
        if pos + FRAME_HEADER + n > len(data):
            break
        out.append((pos, pos + FRAME_HEADER + n, off))
        pos += FRAME_HEADER + n
    return out


def segments(d: Path) -> list[Path]:
    return sorted((d / "wal").glob("*.wal"))


def snapshots(d: Path) -> list[Path]:
    return sorted((d / "snapshots").glob("[0-9]*.snap"))


def flip(path: Path, pos: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))


def dir_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


class Cases:
    """Fresh copies of a template, one per damaged case."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template = template
        self.root = root
        self.n = 0

    def copy(self) -> Path:
        self.n += 1
        dst = self.root / f"case-{self.n}"
        shutil.copytree(self.template, dst)
        return dst


# --------------------------------------------------------------------------- templates


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N commits, one segment, no snapshot."""
    d = tmp_path_factory.mktemp("log") / "data"
    db = open_db(d)
    commit(db, range(N))
    db.close(snapshot=False)
    assert len(segments(d)) == 1 and not snapshots(d)
    return d


@pytest.fixture(scope="module")
def snap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N commits, one segment, one snapshot at the last offset; the log covers everything."""
    d = tmp_path_factory.mktemp("snap") / "data"
    db = open_db(d)
    commit(db, range(N))
    db.close()
    assert len(snapshots(d)) == 1 and len(segments(d)) == 1
    return d


@pytest.fixture(scope="module")
def multi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 commits over several small segments, no snapshot."""
    d = tmp_path_factory.mktemp("multi") / "data"
    db = open_db(d, segment_bytes=SMALL_SEG)
    commit(db, range(150))
    db.close(snapshot=False)
    assert len(segments(d)) >= 3
    return d


@pytest.fixture(scope="module")
def two_snaps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two snapshots (keep 2), the log before the older one pruned."""
    d = tmp_path_factory.mktemp("two") / "data"
    db = open_db(d, segment_bytes=SMALL_SEG, keep_snapshots=2)
    commit(db, range(100))
    db.take_snapshot()
    commit(db, range(100, 200))
    db.close()
    assert len(snapshots(d)) == 2
    first = int(segments(d)[0].stem)
    assert 1 < first <= int(snapshots(d)[0].stem) + 1, "the old log was not pruned"
    return d


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three rounds of commits + snapshot with keep_snapshots=1: only the newest is left."""
    d = tmp_path_factory.mktemp("pruned") / "data"
    db = open_db(d, segment_bytes=SMALL_SEG, keep_snapshots=1)
    for r in range(3):
        commit(db, range(r * 70, (r + 1) * 70))
        db.take_snapshot()
    db.close(snapshot=False)
    assert len(snapshots(d)) == 1
    assert int(segments(d)[0].stem) > 1, "the old log was not pruned"
    return d


def last_segment(d: Path) -> Path:
    return segments(d)[-1]


def item_frames(data: bytes) -> list[tuple[int, int, int]]:
    fr = parse_frames(data)
    assert len(fr) == INSTALL + N and [f[2] for f in fr] == list(range(1, INSTALL + N + 1))
    return fr


# --------------------------------------------------------------------------- helpers


def assert_opens_torn(
    d: Path,
    kept: int,
    *,
    warn: bool,
    byte: int | None,
    case: str,
    append: bool = True,
    **kw: Any,
) -> None:
    """Open ``d``: the first ``kept`` items survive; a torn-tail warning iff ``warn``.

    Then append three commits and check they (and the survivors) survive another reopen.
    """
    seg = last_segment(d).name
    db = open_db(d, **kw)
    try:
        assert db.recovered is not None
        warnings = db.recovered.warnings
        if warn:
            assert len(warnings) == 1, f"{case}: expected one torn-tail warning, got {warnings}"
            assert seg in warnings[0], f"{case}: warning does not name {seg}: {warnings[0]}"
            if byte is not None:
                assert f"byte {byte}" in warnings[0], f"{case}: not at byte {byte}: {warnings}"
                if db.offset == db.recovered.offset:  # (else the open re-ran the install)
                    # documented: the torn bytes are cleared, so no garbage can survive
                    # beyond whatever the next appends overwrite
                    rest = last_segment(d).read_bytes()[byte:]
                    assert not any(rest), f"{case}: torn tail after byte {byte} not cleared"
        else:
            assert warnings == [], f"{case}: unexpected warnings {warnings}"
        got = rows(db)
        assert got == expected(kept), f"{case}: {len(got)} rows, expected the first {kept}"
        if not append:
            return
        commit(db, range(1000, 1003))
    finally:
        db.close(snapshot=False)
    db = open_db(d, **kw)
    try:
        assert db.recovered is not None
        assert db.recovered.warnings == [], f"{case}: still damaged after repair"
        want = expected(kept) + [(kept + 1 + i, 1000 + i, note(1000 + i)) for i in range(3)]
        assert rows(db) == want, f"{case}: commits appended after the repair were lost"
    finally:
        db.close(snapshot=False)


def assert_refuses(d: Path, *names: str, byte: int | None, case: str, **kw: Any) -> str:
    """Opening ``d`` raises CorruptionError naming every ``names`` and ``byte``; no changes."""
    before = dir_bytes(d)
    with pytest.raises(CorruptionError) as ei:
        open_db(d, **kw)
    msg = str(ei.value)
    for name in names:
        assert name in msg, f"{case}: {name} not named in: {msg}"
    if byte is not None:
        assert f"byte {byte}" in msg, f"{case}: byte {byte} not named in: {msg}"
    after = dir_bytes(d)
    assert after == before, f"{case}: a refused open changed files on disk"
    return msg


def check(d: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as ei:
        cli_main(["db", "check", "--data-dir", str(d)])
    return int(ei.value.code or 0), capsys.readouterr().out


# --------------------------------------------------------------------------- torn writes


def test_torn_last_frame_zeroed_from_every_position(log_dir: Path, tmp_path: Path) -> None:
    """A torn write: the last frame's bytes from position p on never reached the disk."""
    cases = Cases(log_dir, tmp_path)
    data = last_segment(log_dir).read_bytes()
    start, end, _ = item_frames(data)[-1]
    for p in range(start, end):
        d = cases.copy()
        seg = last_segment(d)
        buf = bytearray(data)
        buf[p:end] = bytes(end - p)
        seg.write_bytes(bytes(buf))
        case = f"last frame [{start}, {end}) zeroed from byte {p}"
        if buf == data:  # the cut bytes were zeros already: nothing is damaged
            assert_opens_torn(d, N, warn=False, byte=None, case=case, append=False)
        else:
            # an all-zero frame is indistinguishable from the preallocated end of the log
            assert_opens_torn(d, N - 1, warn=p > start, byte=start, case=case, append=p % 5 == 0)


def test_torn_last_frame_garbled_from_every_position(log_dir: Path, tmp_path: Path) -> None:
    """A torn write that left garbage (not zeros) from position p to the frame's end."""
    rng = random.Random(1234)
    cases = Cases(log_dir, tmp_path)
    data = last_segment(log_dir).read_bytes()
    start, end, _ = item_frames(data)[-1]
    for p in range(start, end):
        d = cases.copy()
        buf = bytearray(data)
        buf[p:end] = rng.randbytes(end - p)
        buf[p] = data[p] ^ rng.randrange(1, 256)
        last_segment(d).write_bytes(bytes(buf))
        case = f"last frame [{start}, {end}) garbled from byte {p} (seed 1234)"
        assert_opens_torn(d, N - 1, warn=True, byte=start, case=case, append=p % 5 == 0)


def test_torn_tail_spanning_several_frames(log_dir: Path, tmp_path: Path) -> None:
    """A group commit's batch torn in its middle, garbage possibly running past the old
    end of the data: every frame from the damage on is lost, and the garbage is cleared
    so that short commits appended later are not followed by left-over bytes."""
    rng = random.Random(99)
    cases = Cases(log_dir, tmp_path)
    data = last_segment(log_dir).read_bytes()
    fr = item_frames(data)
    for j in range(15):
        i = rng.randrange(len(fr) - 8, len(fr))
        start, end, _ = fr[i]
        p = rng.randrange(start + 1, end)
        stop = fr[-1][1] + rng.randrange(0, 600)
        buf = bytearray(data)
        if j % 2:
            buf[p:stop] = rng.randbytes(stop - p)  # garbage
        else:
            buf[p:stop] = bytes(stop - p)  # the rest of the batch never arrived
        buf[p] = data[p] ^ 0x5A
        d = cases.copy()
        last_segment(d).write_bytes(bytes(buf))
        case = f"tail torn at byte {p} inside frame {i}, up to byte {stop} (seed 99, case {j})"
        assert_opens_torn(d, i - INSTALL, warn=True, byte=start, case=case)


def test_stale_valid_frame_at_the_tail_is_not_replayed(log_dir: Path, tmp_path: Path) -> None:
    """A checksum-valid frame with the wrong offset after the last one (e.g. a stale copy
    of an older commit) is not a commit of this position: it is cut off as a torn tail."""
    data = last_segment(log_dir).read_bytes()
    fr = item_frames(data)
    for i in (len(fr) - 1, len(fr) - 5, 0):
        start, end, off = fr[i]
        buf = bytearray(data)
        tail = fr[-1][1]
        buf[tail : tail + end - start] = data[start:end]
        d = Cases(log_dir, tmp_path / str(i)).copy()
        last_segment(d).write_bytes(bytes(buf))
        case = f"copy of frame {i} (offset {off}) appended after the last frame"
        assert_opens_torn(d, N, warn=True, byte=tail, case=case)


def test_truncated_segment_random_lengths(log_dir: Path, tmp_path: Path) -> None:
    """The (only) segment file cut to a random length: keep every whole frame before it."""
    rng = random.Random(4321)
    cases = Cases(log_dir, tmp_path)
    data = last_segment(log_dir).read_bytes()
    fr = item_frames(data)
    data_end = fr[-1][1]
    lengths = {0, 1, HEADER - 1, HEADER, HEADER + 1, data_end, data_end + 1, len(data)}
    for s, e, _ in fr[-3:]:
        lengths |= {s, s + 1, s + FRAME_HEADER - 1, s + FRAME_HEADER, e - 1}
    lengths |= {rng.randrange(0, data_end + 64) for _ in range(40)}
    for length in sorted(lengths):
        d = cases.copy()
        seg = last_segment(d)
        with open(seg, "r+b") as f:
            f.truncate(length)
        case = f"segment truncated to {length} bytes (frames end at {data_end}, seed 4321)"
        whole = [f for f in fr if f[1] <= length]
        kept = max(0, len(whole) - INSTALL)
        if length < HEADER:
            # a torn segment header (crash while the segment was created): removed
            db = open_db(d)
            try:
                assert db.recovered is not None
                assert any("torn header" in w for w in db.recovered.warnings), case
                assert rows(db) == [], case
            finally:
                db.close(snapshot=False)
            continue
        bnd = whole[-1][1] if whole else HEADER
        partial = data[bnd:length]
        warn = length < data_end and any(partial)
        assert_opens_torn(d, kept, warn=warn, byte=bnd, case=case, append=length % 3 == 0)


def test_truncated_last_of_several_segments(multi_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(77)
    cases = Cases(multi_dir, tmp_path)
    segs = segments(multi_dir)
    before = sum(len(parse_frames(p.read_bytes())) for p in segs[:-1])
    data = segs[-1].read_bytes()
    fr = parse_frames(data)
    for _ in range(12):
        length = rng.randrange(HEADER, fr[-1][1])
        d = cases.copy()
        with open(last_segment(d), "r+b") as f:
            f.truncate(length)
        whole = [f for f in fr if f[1] <= length]
        bnd = whole[-1][1] if whole else HEADER
        kept = before + len(whole) - INSTALL
        case = f"last segment truncated to {length} (seed 77)"
        assert_opens_torn(
            d,
            kept,
            warn=any(data[bnd:length]),
            byte=bnd,
            case=case,
            segment_bytes=SMALL_SEG,
        )


def test_truncated_earlier_segment_refuses(multi_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(78)
    cases = Cases(multi_dir, tmp_path)
    segs = segments(multi_dir)
    for _ in range(10):
        i = rng.randrange(0, len(segs) - 1)
        size = segs[i].stat().st_size
        length = rng.randrange(HEADER, size)
        d = cases.copy()
        with open(segments(d)[i], "r+b") as f:
            f.truncate(length)
        fr = parse_frames(segs[i].read_bytes())
        at_boundary = length == HEADER or any(e == length for _, e, _ in fr)
        # cut inside a frame: that file is named; cut on a boundary: the next one misses
        # commits, and the gap is reported at the next segment
        name = segs[i + 1].name if at_boundary else segs[i].name
        assert_refuses(
            d, name, byte=None, case=f"segment {i} cut to {length}", segment_bytes=SMALL_SEG
        )


# --------------------------------------------------------------------------- bit flips


def test_bit_flip_in_last_frame_is_a_torn_tail(log_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(555)
    cases = Cases(log_dir, tmp_path)
    data = last_segment(log_dir).read_bytes()
    start, end, _ = item_frames(data)[-1]
    spots = [(p, rng.randrange(8)) for p in range(start, start + FRAME_HEADER)]
    spots += [(rng.randrange(start + FRAME_HEADER, end), rng.randrange(8)) for _ in range(30)]
    for p, bit in spots:
        d = cases.copy()
        flip(last_segment(d), p, bit)
        case = f"bit {bit} of byte {p} flipped in the last frame [{start}, {end})"
        assert_opens_torn(d, N - 1, warn=True, byte=start, case=case, append=p % 4 == 0)


def test_bit_flip_before_valid_frames_refuses(log_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(556)
    cases = Cases(log_dir, tmp_path)
    data = last_segment(log_dir).read_bytes()
    fr = item_frames(data)
    name = last_segment(log_dir).name
    picks = [0, 1, 2, len(fr) - 2] + [rng.randrange(0, len(fr) - 1) for _ in range(30)]
    for i in picks:
        start, end, _ = fr[i]
        p, bit = rng.randrange(start, end), rng.randrange(8)
        d = cases.copy()
        flip(last_segment(d), p, bit)
        case = f"bit {bit} of byte {p} flipped in frame {i} of {len(fr)} [{start}, {end})"
        assert_refuses(d, name, byte=start, case=case)


def test_bit_flip_in_earlier_segment_refuses(multi_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(557)
    cases = Cases(multi_dir, tmp_path)
    segs = segments(multi_dir)
    for j in range(30):
        i = rng.randrange(0, len(segs) - 1)
        data = segs[i].read_bytes()
        fr = parse_frames(data)
        assert fr[-1][1] == len(data), "a finished segment is cut to its real length"
        # every 5th case hits the segment's last frame: not a torn tail there either
        lo = fr[-1][0] if j % 5 == 0 else 0
        p = rng.randrange(lo, len(data))
        bit = rng.randrange(8)
        frame_start = 0 if p < HEADER else next(s for s, e, _ in fr if s <= p < e)
        d = cases.copy()
        flip(segments(d)[i], p, bit)
        case = f"bit {bit} of byte {p} flipped in segment {i} ({segs[i].name}) of {len(segs)}"
        assert_refuses(d, segs[i].name, byte=frame_start, case=case, segment_bytes=SMALL_SEG)


def test_bit_flip_in_segment_header_refuses(log_dir: Path, multi_dir: Path, tmp_path: Path) -> None:
    cases = Cases(log_dir, tmp_path / "single")
    name = last_segment(log_dir).name
    for p in range(HEADER):
        for bit in range(8):
            d = cases.copy()
            flip(last_segment(d), p, bit)
            assert_refuses(d, name, byte=0, case=f"header bit {bit} of byte {p}")
    rng = random.Random(558)
    cases = Cases(multi_dir, tmp_path / "multi")
    segs = segments(multi_dir)
    for i in (0, len(segs) - 1, *(rng.randrange(len(segs)) for _ in range(6))):
        p, bit = rng.randrange(HEADER), rng.randrange(8)
        d = cases.copy()
        flip(segments(d)[i], p, bit)
        case = f"header bit {bit} of byte {p} of segment {i}"
        assert_refuses(d, segs[i].name, byte=0, case=case, segment_bytes=SMALL_SEG)


def test_damaged_last_frame_covered_by_a_snapshot(snap_dir: Path, tmp_path: Path) -> None:
    """The final snapshot holds the last commit, then the last frame rots.

    Nothing is lost (the snapshot has every commit), so the store must either open with
    every commit and keep them across later restarts, or refuse with a CorruptionError
    naming the file, without changing anything on disk. Anything else (another error,
    or a "repair" that destroys the frame and then refuses) is a bug.
    """
    data = last_segment(snap_dir).read_bytes()
    start, end, _ = item_frames(data)[-1]
    name = last_segment(snap_dir).name
    for p in (start + 3, (start + end) // 2, end - 1):
        d = Cases(snap_dir, tmp_path / f"p{p}").copy()
        flip(last_segment(d), p, 2)
        before = dir_bytes(d)
        case = f"bit 2 of byte {p} flipped in the last frame, covered by the snapshot"
        try:
            db = open_db(d)
        except CorruptionError as e:
            assert name in str(e), f"{case}: {e}"
            assert dir_bytes(d) == before, f"{case}: refused, but changed files first"
            continue
        except Exception as e:
            changed = dir_bytes(d) != before
            pytest.fail(
                f"{case}: open failed with {type(e).__name__}: {e} (files changed by the"
                f" failed open: {changed})"
            )
        try:
            assert rows(db) == expected(N), case
            commit(db, range(1000, 1002))
        finally:
            db.close(snapshot=False)
        db = open_db(d)
        try:
            assert rows(db) == [*expected(N), (N + 1, 1000, note(1000)), (N + 2, 1001, note(1001))]
        finally:
            db.close(snapshot=False)


# --------------------------------------------------------------------------- snapshots


def damage_snapshot(rng: random.Random, path: Path) -> str:
    size = path.stat().st_size
    if rng.random() < 0.5:
        p, bit = rng.randrange(size), rng.randrange(8)
        flip(path, p, bit)
        return f"bit {bit} of byte {p} flipped in {path.name}"
    length = rng.randrange(size)
    with open(path, "r+b") as f:
        f.truncate(length)
    return f"{path.name} truncated to {length} of {size} bytes"


def test_damaged_snapshot_with_full_log(snap_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(600)
    cases = Cases(snap_dir, tmp_path)
    snap = snapshots(snap_dir)[0].name
    for _ in range(40):
        d = cases.copy()
        case = damage_snapshot(rng, d / "snapshots" / snap) + " (seed 600)"
        db = open_db(d)
        try:
            rec = db.recovered
            assert rec is not None
            assert any(snap in w for w in rec.warnings), f"{case}: no warning: {rec.warnings}"
            assert rec.snapshot_path is None, f"{case}: loaded {rec.snapshot_path}"
            assert rec.replayed == INSTALL + N, case
            assert rows(db) == expected(N), case
        finally:
            db.close(snapshot=False)


def test_damaged_newest_snapshot_falls_back_to_older(two_snaps: Path, tmp_path: Path) -> None:
    rng = random.Random(601)
    cases = Cases(two_snaps, tmp_path)
    older, newest = snapshots(two_snaps)
    for _ in range(20):
        d = cases.copy()
        case = damage_snapshot(rng, d / "snapshots" / newest.name) + " (seed 601)"
        db = open_db(d, segment_bytes=SMALL_SEG)
        try:
            rec = db.recovered
            assert rec is not None and rec.snapshot_path is not None
            assert rec.snapshot_path.name == older.name, case
            assert any(newest.name in w for w in rec.warnings), case
            assert rows(db) == expected(200), case
        finally:
            db.close(snapshot=False)


def test_both_snapshots_damaged_and_log_pruned_refuses(two_snaps: Path, tmp_path: Path) -> None:
    rng = random.Random(602)
    cases = Cases(two_snaps, tmp_path)
    older, newest = snapshots(two_snaps)
    for _ in range(6):
        d = cases.copy()
        damage_snapshot(rng, d / "snapshots" / older.name)
        damage_snapshot(rng, d / "snapshots" / newest.name)
        assert_refuses(d, older.name, newest.name, byte=None, case="both", segment_bytes=SMALL_SEG)


def test_damaged_only_snapshot_with_pruned_log_refuses(pruned: Path, tmp_path: Path) -> None:
    rng = random.Random(603)
    cases = Cases(pruned, tmp_path)
    snap = snapshots(pruned)[0].name
    for _ in range(20):
        d = cases.copy()
        case = damage_snapshot(rng, d / "snapshots" / snap) + " (seed 603)"
        assert_refuses(d, snap, byte=None, case=case, segment_bytes=SMALL_SEG, keep_snapshots=1)


def test_pruned_template_opens_clean(pruned: Path, tmp_path: Path) -> None:
    """Control for the test above: undamaged, the same directory opens with every row."""
    d = Cases(pruned, tmp_path).copy()
    db = open_db(d, segment_bytes=SMALL_SEG, keep_snapshots=1)
    try:
        assert db.recovered is not None and db.recovered.warnings == []
        assert db.recovered.snapshot_path is not None
        assert rows(db) == expected(210)
    finally:
        db.close(snapshot=False)


def tmp_variants(other: Path) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """Unfinished snapshot files: whole ones of another store, half ones, garbage."""
    src = snapshots(other)[-1]
    whole = src.read_bytes()

    def put(data: bytes, name: str) -> Callable[[Path], None]:
        def do(d: Path) -> None:
            (d / "snapshots").mkdir(exist_ok=True)
            (d / "snapshots" / name).write_bytes(data)

        return do

    yield "complete, of another store", put(whole, f".tmp-{src.name}")
    yield "complete, far future offset", put(whole, ".tmp-99999999999999999999.snap")
    yield "half written", put(whole[: len(whole) // 2], f".tmp-{src.name}")
    yield "header only", put(whole[:28], f".tmp-{src.name}")
    yield "empty", put(b"", ".tmp-00000000000000000100.snap")


@pytest.mark.parametrize("template", ["log_dir", "snap_dir"])
def test_unfinished_tmp_snapshot_is_never_trusted(
    template: str, request: pytest.FixtureRequest, two_snaps: Path, tmp_path: Path
) -> None:
    base: Path = request.getfixturevalue(template)
    cases = Cases(base, tmp_path)
    own = [p.name for p in snapshots(base)]
    for what, put in tmp_variants(two_snaps):
        d = cases.copy()
        put(d)
        db = open_db(d)
        try:
            rec = db.recovered
            assert rec is not None
            if rec.snapshot_path is not None:
                assert rec.snapshot_path.name in own, f"{what}: loaded {rec.snapshot_path}"
            assert rows(db) == expected(N), f"{what}: state is not this store's"
            left = [p.name for p in (d / "snapshots").iterdir() if p.name.startswith(".tmp-")]
            assert not left, f"{what}: {left} not removed"
        finally:
            db.close(snapshot=False)


# --------------------------------------------------------------------------- db check


def test_check_clean_directories(
    log_dir: Path,
    snap_dir: Path,
    multi_dir: Path,
    two_snaps: Path,
    pruned: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for d in (log_dir, snap_dir, multi_dir, two_snaps, pruned):
        rc, out = check(d, capsys)
        assert rc == 0, f"{d}: exit {rc}\n{out}"
        assert "result: clean" in out
        for seg in segments(d):
            assert seg.name in out


def test_check_torn_tail_exit_1(
    log_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = last_segment(log_dir).read_bytes()
    start, end, _ = item_frames(data)[-1]
    for p in (start + 1, start + FRAME_HEADER + 2, end - 1):
        d = Cases(log_dir, tmp_path / str(p)).copy()
        flip(last_segment(d), p, 0)
        before = dir_bytes(d)
        rc, out = check(d, capsys)
        assert rc == 1, out
        assert last_segment(d).name in out and f"byte {start}" in out, out
        assert dir_bytes(d) == before, "db check changed the data directory"


def test_check_mid_log_damage_exit_2(
    log_dir: Path, multi_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fr = item_frames(last_segment(log_dir).read_bytes())
    start, _, _ = fr[10]
    d = Cases(log_dir, tmp_path / "mid").copy()
    flip(last_segment(d), start + 20, 3)
    rc, out = check(d, capsys)
    assert rc == 2, out
    assert f"{last_segment(d).name} at byte {start}" in out, out

    seg0 = segments(multi_dir)[0]
    s, _, _ = parse_frames(seg0.read_bytes())[3]
    d = Cases(multi_dir, tmp_path / "early").copy()
    flip(segments(d)[0], s + 17, 6)
    rc, out = check(d, capsys)
    assert rc == 2, out
    assert f"{seg0.name} at byte {s}" in out, out

    d = Cases(multi_dir, tmp_path / "header").copy()
    flip(segments(d)[1], 9, 1)
    rc, out = check(d, capsys)
    assert rc == 2, out
    assert f"{segments(d)[1].name} at byte 0" in out, out


def test_check_snapshot_damage(
    snap_dir: Path, pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the log before the only snapshot is gone: start is refused -> 2, naming the file
    d = Cases(pruned, tmp_path / "pruned").copy()
    snap = snapshots(d)[0]
    flip(snap, snap.stat().st_size // 2, 4)
    rc, out = check(d, capsys)
    assert rc == 2, out
    assert snap.name in out and "REFUSED" in out, out
    # the full log still covers it: reported (not clean), the store still recovers
    d = Cases(snap_dir, tmp_path / "covered").copy()
    snap = snapshots(d)[0]
    flip(snap, 40, 4)
    rc, out = check(d, capsys)
    assert rc in (1, 2), out
    assert snap.name in out and f"recovers to offset {INSTALL + N}" in out, out


def test_check_torn_segment_header_is_tail_damage(
    multi_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash while a new segment was being created leaves a short last file.

    Recovery treats it as a torn tail (removes the file, opens with every commit), so
    ``db check`` must not say the store refuses to start (exit 2): it is tail damage (1).
    """
    for length in (0, 7, HEADER - 1):
        d = Cases(multi_dir, tmp_path / str(length)).copy()
        with open(last_segment(d), "r+b") as f:
            f.truncate(length)
        whole = sum(len(parse_frames(p.read_bytes())) for p in segments(d)[:-1])
        rc, out = check(d, capsys)
        db = open_db(d, segment_bytes=SMALL_SEG)
        try:
            assert len(rows(db)) == whole - INSTALL
        finally:
            db.close(snapshot=False)
        assert rc == 1, f"segment cut to {length} bytes: the store opens, but check says:\n{out}"


def test_check_ignores_unfinished_tmp_snapshot(
    log_dir: Path, two_snaps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``.tmp-`` snapshot is what a crash during a snapshot leaves; it is never loaded.

    So whatever it holds, it is not damage that refuses start: exit 0 or 1, never 2.
    """
    for what, put in tmp_variants(two_snaps):
        d = Cases(log_dir, tmp_path / what.replace(" ", "-").replace(",", "")).copy()
        put(d)
        rc, out = check(d, capsys)
        assert rc in (0, 1), f"{what}: exit {rc}, yet the store opens\n{out}"
        db = open_db(d)  # control: it really does open, with this store's rows
        try:
            assert rows(db) == expected(N)
        finally:
            db.close(snapshot=False)


def test_check_is_read_only(
    log_dir: Path, two_snaps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``db check`` changes nothing: not a torn tail, not a temp file a server may be
    writing right now (deleting it makes that server's snapshot rename fail)."""
    start = item_frames(last_segment(log_dir).read_bytes())[-1][0]
    d = Cases(log_dir, tmp_path / "torn").copy()
    flip(last_segment(d), start + 20, 1)
    before = dir_bytes(d)
    assert check(d, capsys)[0] == 1
    assert dir_bytes(d) == before, "db check changed a torn segment"
    for what, put in tmp_variants(two_snaps):
        d = Cases(log_dir, tmp_path / what.replace(" ", "-").replace(",", "")).copy()
        put(d)
        before = dir_bytes(d)
        check(d, capsys)
        gone = sorted(set(before) - set(dir_bytes(d)))
        assert dir_bytes(d) == before, f"{what}: db check deleted {gone}"


def test_check_cli_exit_codes(log_dir: Path, tmp_path: Path) -> None:
    """The real command line, in a subprocess: 0 clean, 1 torn tail, 2 refuses start."""
    fr = item_frames(last_segment(log_dir).read_bytes())
    clean = Cases(log_dir, tmp_path / "clean").copy()
    torn = Cases(log_dir, tmp_path / "torn").copy()
    flip(last_segment(torn), fr[-1][0] + 30, 5)
    bad = Cases(log_dir, tmp_path / "bad").copy()
    flip(last_segment(bad), fr[5][0] + 30, 5)
    for d, want in ((clean, 0), (torn, 1), (bad, 2)):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from voicehub.cli import main; main()",
                "db",
                "check",
                "--data-dir",
                str(d),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == want, f"{d.name}: exit {proc.returncode}\n{proc.stdout}"
        if want:
            assert last_segment(d).name in proc.stdout and "at byte" in proc.stdout
