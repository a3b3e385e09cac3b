"""``voicehub db check``: verify every snapshot and log segment without changing anything.

Reports, per file, what it holds and any damage with its byte offset, then whether the
directory as a whole recovers. Exit status: 0 clean, 1 recoverable tail damage only,
2 damage that would refuse to start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CorruptionError
from core.recovery import list_segments, recover
from core.snapshot import SnapshotReader, list_snapshots
from core.wal.format import (
    SEGMENT_HEADER_SIZE,
    FrameError,
    iter_frames,
    parse_segment_header,
    valid_frame_after,
)


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    damaged: int = 0
    torn: int = 0

    @property
    def status(self) -> int:
        return 2 if self.damaged else 1 if self.torn else 0


def _snapshots(d: Path, r: CheckReport) -> None:
    snaps = (
        []
        if not (d / "snapshots").exists()
        else sorted(p for p in (d / "snapshots").iterdir() if p.suffix == ".snap")
    )
    for p in snaps:
        if p.name.startswith(".tmp-"):
            r.lines.append(f"ignored  {p}: unfinished snapshot (never loaded)")
            continue
        try:
            meta = SnapshotReader(p).verify()
            rows = sum(meta["counts"].values())
            r.lines.append(f"ok       {p}: offset {meta['offset']}, {rows} rows")
        except CorruptionError as e:
            r.damaged += 1
            r.lines.append(f"DAMAGED  {e}")


def _segments(d: Path, r: CheckReport) -> None:
    segs = list_segments(d / "wal")
    expect: int | None = None
    for i, (first, p) in enumerate(segs):
        last_seg = i == len(segs) - 1
        data = p.read_bytes()
        try:
            hdr = parse_segment_header(data)
        except ValueError as e:
            if last_seg and len(data) <= SEGMENT_HEADER_SIZE:
                r.torn += 1
                r.lines.append(f"TORN     {p} at byte 0: {e} (torn header; removed on next open)")
            else:
                r.damaged += 1
                r.lines.append(f"DAMAGED  {p} at byte 0: {e}")
            expect = None
            continue
        if hdr != first:
            r.damaged += 1
            r.lines.append(f"DAMAGED  {p}: header first offset {hdr} does not match its name")
        if expect is not None and first != expect:
            r.damaged += 1
            r.lines.append(f"DAMAGED  {p}: starts at {first}, expected {expect} (gap/overlap)")
        n = 0
        nxt = first
        try:
            for off, _, _ in iter_frames(data, SEGMENT_HEADER_SIZE, first):
                n += 1
                nxt = off + 1
        except FrameError as fe:
            zeros = data.count(0, fe.pos) == len(data) - fe.pos
            if zeros and last_seg:
                pass
            elif last_seg and valid_frame_after(data, fe.pos, nxt) is None:
                r.torn += 1
                r.lines.append(
                    f"TORN     {p} at byte {fe.pos}: {fe.reason} (tail; cleared on next open)"
                )
            else:
                r.damaged += 1
                r.lines.append(f"DAMAGED  {p} at byte {fe.pos}: {fe.reason}")
        r.lines.append(f"ok       {p}: {n} commits, offsets {first}..{nxt - 1}")
        expect = nxt


def check_data_dir(d: Path) -> CheckReport:
    r = CheckReport()
    if not d.exists():
        r.damaged += 1
        r.lines.append(f"DAMAGED  data directory {d} does not exist")
        return r
    _snapshots(d, r)
    _segments(d, r)
    try:
        state = recover(d, repair=False, keep_history=False)
        snaps = len(list_snapshots(d / "snapshots"))
        r.lines.append(
            f"recovers to offset {state.offset} (from snapshot {state.snapshot_offset} of"
            f" {snaps}, {state.replayed} commits replayed, {state.seconds:.2f} s)"
        )
    except CorruptionError as e:
        r.damaged += 1
        r.lines.append(f"REFUSED  recovery would refuse to start: {e}")
    return r
