"""What the database remembers of its recent commits: timestamps, changed tables, pins.

``CommitHistory`` keeps, for every retained commit (``base`` .. newest), its timestamp and
the tables it changed, the reads pinned at old offsets, and the garbage-collection
horizon. Invariants: an offset at or above ``floor`` is answerable from memory (its old
row versions are kept, its timestamp is known); the horizon never passes a pinned offset,
so an open ``ReadSnapshot`` keeps seeing its rows; timestamps are strictly increasing, so
``offset_at_time`` is a bisection.

``read_from_disk`` answers an ``AS OF`` older than that from snapshots and the log.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable

from core.config import StoreConfig
from core.errors import HistoryUnavailable
from core.reads import ReadSnapshot
from core.recovery import recover, retained_from
from core.storage.table import TableStore

log = logging.getLogger("voicehub.store")

_TRIM_AT_LEAST = 1024
"""Old entries are dropped in batches of at least this many (a list slice is O(n))."""


class CommitHistory:
    __slots__ = ("base", "horizon", "pins", "tables", "timestamps", "versioned")

    def __init__(self, next_offset: int = 1) -> None:
        self.base = next_offset
        """The offset of ``timestamps[0]``."""
        self.timestamps: list[int] = []
        self.tables: list[tuple[str, ...] | None] = []
        """Beside ``timestamps``: the tables each commit changed (None: unknown)."""
        self.pins: Counter[int] = Counter()
        self.horizon = 0
        self.versioned: set[TableStore] = set()
        """Stores holding old row versions (deleted or replaced rows) to collect."""

    def restore(
        self,
        timestamps: list[tuple[int, int]],
        touched: Iterable[tuple[str, ...] | None],
        offset: int,
        stores: Iterable[TableStore],
    ) -> None:
        """After recovery: the replayed commits' ``(offset, timestamp)`` and tables."""
        if timestamps:
            self.base = timestamps[0][0]
            self.horizon = self.base
            self.timestamps = [ts for _, ts in timestamps]
            self.tables = list(touched) or [None] * len(self.timestamps)
        else:
            self.base = offset + 1
        self.versioned = {s for s in stores if len(s.history)}

    def record(self, timestamp: int, tables: tuple[str, ...]) -> None:
        """The next offset committed at ``timestamp``, changing ``tables``."""
        self.timestamps.append(timestamp)
        self.tables.append(tables)

    @property
    def floor(self) -> int:
        """The oldest offset answerable from memory."""
        return max(self.horizon, self.base - 1)

    def commits_after(self, offset: int, newest: int) -> list[tuple[int, tuple[str, ...]]] | None:
        i = offset + 1 - self.base
        if offset < self.floor or i < 0 or offset > newest:
            return None
        out: list[tuple[int, tuple[str, ...]]] = []
        tables, base = self.tables, self.base
        for j in range(i, len(tables)):
            t = tables[j]
            if t is None:
                return None
            out.append((base + j, t))
        return out

    def timestamp_of(self, offset: int) -> int | None:
        i = offset - self.base
        if 0 <= i < len(self.timestamps):
            return self.timestamps[i]
        return None

    def offset_at_time(self, timestamp: int, visible: int) -> int | None:
        i = bisect_right(self.timestamps, timestamp)
        if i == 0:
            return None if self.base > 1 else 0
        return min(self.base + i - 1, visible)

    def pin(self, offset: int) -> None:
        self.pins[offset] += 1

    def unpin(self, offset: int) -> None:
        n = self.pins[offset] - 1
        if n <= 0:
            del self.pins[offset]
        else:
            self.pins[offset] = n

    def collect(self, wanted: int) -> None:
        """Move the horizon up to ``wanted`` (or the oldest pin) and drop what is below."""
        h = min(wanted, min(self.pins)) if self.pins else wanted
        if h <= self.horizon:
            return
        self.horizon = h
        done = []
        for store in self.versioned:
            store.gc(h)
            if not len(store.history):
                done.append(store)
        for store in done:
            self.versioned.discard(store)
        drop = h - self.base
        if drop > _TRIM_AT_LEAST and drop * 2 > len(self.timestamps):
            del self.timestamps[:drop]
            del self.tables[:drop]
            self.base += drop


def read_from_disk(cfg: StoreConfig, offset: int | None, timestamp: int | None) -> ReadSnapshot:
    """The state at ``offset`` or ``timestamp``, rebuilt from snapshots and the log (slow)."""
    if cfg.data_dir is None:
        raise HistoryUnavailable("this store keeps no log: only in-memory history")
    oldest_off, oldest_ts = retained_from(cfg.data_dir)
    if (offset is not None and offset < oldest_off) or (
        timestamp is not None and timestamp < oldest_ts
    ):
        point = f"offset {offset}" if offset is not None else f"timestamp {timestamp}"
        raise HistoryUnavailable(
            f"{point} is no longer retained: the oldest snapshot is at offset {oldest_off}"
            " and the log before it was pruned"
        )
    t0 = time.perf_counter()
    state = recover(
        cfg.data_dir, repair=False, keep_history=False, stop_offset=offset, stop_ts=timestamp
    )
    if offset is not None and state.offset != offset:
        raise HistoryUnavailable(
            f"offset {offset} is no longer retained (oldest snapshot/log: {state.offset})"
        )
    if state.offset == 0 and (offset or 0) > 0:
        raise HistoryUnavailable(f"offset {offset} is no longer retained")
    log.info("AS OF %s read from disk in %.2f s", offset or timestamp, time.perf_counter() - t0)
    return ReadSnapshot(state.stores, state.offset, state.timestamp, None)
