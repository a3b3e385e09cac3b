"""Recovery: newest valid snapshot + the log after it, with the damage rules of the store.

Rules (see docs/storage.md): a damaged snapshot is skipped with a warning if an older
snapshot (or offset 0) plus the log still cover every commit, otherwise start is refused;
damage in the last log segment with nothing valid after it is a torn tail, truncated with a
warning (only when ``repair`` is set); any other damage, a gap in offsets or a missing
segment refuses to start with an error naming the file and byte offset. Invariant: recovery
never silently drops a commit that a valid frame holds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from core.errors import CorruptionError
from core.schema import table_from_builtins
from core.snapshot import SnapshotReader, list_snapshots, snapshot_point
from core.storage.table import TableStore
from core.wal.format import (
    DECODER,
    SEGMENT_HEADER_SIZE,
    CommitRecord,
    FrameError,
    iter_frames,
    parse_segment_header,
    valid_frame_after,
)
from core.wal.writer import WalWriter

log = logging.getLogger("voicehub.recovery")


def list_segments(wal_dir: Path) -> list[tuple[int, Path]]:
    if not wal_dir.exists():
        return []
    segs = [(int(p.stem), p) for p in wal_dir.iterdir() if p.suffix == ".wal" and p.stem.isdigit()]
    segs.sort()
    return segs


def retained_from(data_dir: Path) -> tuple[int, int]:
    """(offset, timestamp) of the oldest point the files can rebuild: (0, 0) when the log
    still starts at offset 1, else the oldest snapshot's point."""
    segs = list_segments(data_dir / "wal")
    if segs and segs[0][0] == 1:
        return 0, 0
    snaps = list_snapshots(data_dir / "snapshots")
    if not snaps:
        return (segs[0][0] - 1, 0) if segs else (0, 0)
    return snapshot_point(snaps[-1][1])


class RecoveredState:
    def __init__(self) -> None:
        self.stores: dict[str, TableStore] = {}
        self.offset = 0
        self.timestamp = 0
        self.snapshot_offset = 0
        self.snapshot_path: Path | None = None
        self.timestamps: list[tuple[int, int]] = []
        self.touched: list[tuple[str, ...] | None] = []
        """Beside ``timestamps``: the tables each of those commits changed (None: unknown,
        for the snapshot's own point)."""
        self.active_segment: Path | None = None
        self.active_size = 0
        self.segments: list[tuple[int, Path]] = []
        self.warnings: list[str] = []
        self.replayed = 0
        self.log_end = 0
        self.rows_loaded = 0
        self.seconds = 0.0


def apply_record(stores: dict[str, TableStore], rec: CommitRecord, keep_history: bool) -> None:
    for tdef in rec.schema:
        td = table_from_builtins(tdef)
        stores[td.name] = TableStore(td)
    for tname, inserts, deletes in rec.changes:
        store = stores[tname]
        rt = store.row_type
        rows = [tuple.__new__(rt, r) for r in inserts]
        pks = [tuple(pk) if type(pk) is list else pk for pk in deletes]
        store.apply_logged(rows, pks, rec.offset, keep_history)
    for tname, pos, value in rec.sequences:
        stores[tname].sequences[pos] = value


def load_snapshot(state: RecoveredState, reader: SnapshotReader, meta: dict[str, Any]) -> None:
    offset = int(meta["offset"])
    for tdef in meta["tables"]:
        td = table_from_builtins(tdef)
        state.stores[td.name] = TableStore(td)
    pending: dict[str, list[tuple]] = {name: [] for name in state.stores}
    for tname, chunk in reader.rows():
        rt = state.stores[tname].row_type
        new = tuple.__new__
        pending[tname].extend([new(rt, r) for r in chunk])
    for tname, rows in pending.items():
        state.stores[tname].load(rows, offset)
        state.rows_loaded += len(rows)
    for tname, pos, value in meta["sequences"]:
        state.stores[tname].sequences[int(pos)] = int(value)
    state.offset = state.snapshot_offset = offset
    state.timestamp = int(meta["timestamp"])


def _choose_snapshot(
    data_dir: Path,
    state: RecoveredState,
    stop_offset: int | None,
    stop_ts: int | None,
    repair: bool = False,
) -> list[Path]:
    """Load the newest usable snapshot into ``state``; returns the damaged ones skipped."""
    skipped: list[Path] = []
    for offset, path in list_snapshots(data_dir / "snapshots", remove_tmp=repair):
        if stop_offset is not None and offset > stop_offset:
            continue
        reader = SnapshotReader(path)
        try:
            meta = reader.verify()
        except CorruptionError as e:
            msg = f"{e}; falling back to an older snapshot and a longer log replay"
            log.warning(msg)
            state.warnings.append(msg)
            skipped.append(path)
            continue
        if stop_ts is not None and int(meta["timestamp"]) > stop_ts:
            continue
        t0 = time.perf_counter()
        load_snapshot(state, reader, meta)
        state.snapshot_path = path
        log.info(
            "snapshot %s loaded: %d rows in %.2f s",
            path.name,
            state.rows_loaded,
            time.perf_counter() - t0,
        )
        return skipped
    return skipped


def _segment_frames(path: Path, data: bytes, first: int) -> Iterator[tuple[int, bytes, int]]:
    return iter_frames(data, SEGMENT_HEADER_SIZE, first)


def _damage(
    state: RecoveredState,
    path: Path,
    data: bytes,
    fe: FrameError,
    is_last: bool,
    expect: int,
    repair: bool,
) -> int:
    """Decide what damage at ``fe.pos`` means; returns where the valid log ends."""
    if is_last and data.count(0, fe.pos) == len(data) - fe.pos:
        return fe.pos  # preallocated zeros: the clean end of the log
    if not is_last:
        raise CorruptionError(
            f"log segment {path} at byte {fe.pos}: {fe.reason} (not the last segment:"
            " refusing to start; restore the file or run `voicehub db check`)"
        )
    later = valid_frame_after(data, fe.pos, expect)
    if later is not None:
        raise CorruptionError(
            f"log segment {path} at byte {fe.pos}: {fe.reason}, but a valid commit follows"
            f" at byte {later}: damage before the tail, refusing to start"
        )
    if expect <= state.snapshot_offset:
        raise CorruptionError(
            f"log segment {path} at byte {fe.pos}: {fe.reason}; commit {expect} is covered by"
            f" snapshot {state.snapshot_path}, so it was durable: not a torn write, refusing"
            " to start"
        )
    msg = (
        f"log segment {path}: torn tail at byte {fe.pos} ({fe.reason}); the"
        f" {len(data) - fe.pos} bytes after the last complete commit {expect - 1}"
        + (" were cleared" if repair else " would be cleared on open")
    )
    log.warning(msg)
    state.warnings.append(msg)
    if repair:
        with open(path, "r+b") as f:
            f.seek(fe.pos)
            f.write(bytes(len(data) - fe.pos))
            f.flush()
            os.fsync(f.fileno())
    return fe.pos


def recover(
    data_dir: Path,
    *,
    repair: bool,
    keep_history: bool = True,
    stop_offset: int | None = None,
    stop_ts: int | None = None,
    timestamps_kept: int = 0,
) -> RecoveredState:
    """Rebuild the committed state from ``data_dir``.

    ``repair`` truncates a torn tail and prepares the active segment for appending (the
    server's open); without it nothing on disk is changed (``db check``, AS OF from disk).
    ``stop_offset``/``stop_ts`` stop the replay at an offset, or at the last commit whose
    timestamp is <= ``stop_ts``.
    """
    t_start = time.perf_counter()
    state = RecoveredState()
    wal_dir = data_dir / "wal"
    skipped = _choose_snapshot(data_dir, state, stop_offset, stop_ts, repair)
    base = state.snapshot_offset
    segments = list_segments(wal_dir)
    state.segments = segments
    if segments:
        start = 0
        for i, (first, _) in enumerate(segments):
            if first <= base + 1:
                start = i
        if segments[start][0] > base + 1:
            lost = ", ".join(str(p) for p in skipped) or "none"
            raise CorruptionError(
                f"the log starts at offset {segments[start][0]} but the state on disk ends at"
                f" offset {base} (snapshot {state.snapshot_path or 'none'}; damaged snapshots"
                f" skipped: {lost}): commits {base + 1}..{segments[start][0] - 1} are missing"
            )
    elif skipped:
        raise CorruptionError(
            f"snapshot {skipped[0]} is damaged and no log is retained to replace it"
        )
    else:
        start = 0
    last_report = time.perf_counter()
    expect = None
    done = False
    times: list[tuple[int, int]] = []
    touched: list[tuple[str, ...] | None] = []
    if state.offset > 0:
        times.append((state.offset, state.timestamp))
        touched.append(None)
    for i in range(start, len(segments)):
        first, path = segments[i]
        is_last = i == len(segments) - 1
        data = path.read_bytes()
        try:
            hdr_first = parse_segment_header(data)
        except ValueError as e:
            if is_last and len(data) <= SEGMENT_HEADER_SIZE:
                msg = f"log segment {path} has a torn header ({e}); " + (
                    "removing it" if repair else "it would be removed on open"
                )
                log.warning(msg)
                state.warnings.append(msg)
                if repair:
                    path.unlink()
                segments = segments[:i]
                break
            raise CorruptionError(f"log segment {path} at byte 0: {e}") from None
        if hdr_first != first:
            raise CorruptionError(
                f"log segment {path}: header says first offset {hdr_first}, name says {first}"
            )
        if expect is not None and first != expect:
            raise CorruptionError(
                f"log segment {path}: starts at offset {first}, expected {expect}"
                " (a segment is missing or overlaps)"
            )
        expect = first
        good_end = SEGMENT_HEADER_SIZE
        try:
            for offset, payload, end in _segment_frames(path, data, first):
                good_end = end
                expect = offset + 1
                if offset <= state.offset:
                    continue
                try:
                    rec = DECODER.decode(payload)
                except msgspec.DecodeError as e:
                    raise CorruptionError(
                        f"log segment {path}: commit {offset} does not decode ({e})"
                    ) from None
                if stop_offset is not None and offset > stop_offset:
                    done = True
                    break
                if stop_ts is not None and rec.timestamp > stop_ts:
                    done = True
                    break
                try:
                    apply_record(state.stores, rec, keep_history)
                except (KeyError, ValueError, TypeError) as e:
                    raise CorruptionError(
                        f"log segment {path}: commit {offset} does not apply ({e!r})"
                    ) from None
                state.offset = offset
                state.timestamp = rec.timestamp
                state.replayed += 1
                if timestamps_kept:
                    times.append((offset, rec.timestamp))
                    touched.append(tuple(c[0] for c in rec.changes))
                    if len(times) > 2 * timestamps_kept:
                        del times[:timestamps_kept]
                        del touched[:timestamps_kept]
                if state.replayed % 4096 == 0 and time.perf_counter() - last_report > 1.0:
                    last_report = time.perf_counter()
                    log.info(
                        "recovery: %d commits replayed (offset %d), %.1f s",
                        state.replayed,
                        offset,
                        last_report - t_start,
                    )
        except FrameError as fe:
            good_end = _damage(state, path, data, fe, is_last, expect or first, repair)
        state.log_end = (expect or first) - 1
        if done:
            break
        if is_last:
            state.active_segment = path
            state.active_size = good_end
    if repair and state.active_segment is None and not done:
        wal_dir.mkdir(parents=True, exist_ok=True)
        state.active_segment = WalWriter.create_segment(wal_dir, state.offset + 1)
        state.active_size = SEGMENT_HEADER_SIZE
        state.segments = [*segments, (state.offset + 1, state.active_segment)]
    state.timestamps = times[-timestamps_kept:] if timestamps_kept else []
    state.touched = touched[-timestamps_kept:] if timestamps_kept else []
    state.seconds = time.perf_counter() - t_start
    return state
