"""Row versions and the per-table history of superseded versions.

A row version is visible at offset S iff ``begin <= S < end`` (Hekaton's rule; ``end`` is
``LIVE`` while the version is current). Versions of one primary key form a chain from the
newest (``older`` links). Invariant: ``History`` holds every superseded version that some
reader at or above the GC horizon may still see, ordered by ``end``.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import msgspec

LIVE = 2**63 - 1


class Version(msgspec.Struct, gc=False):
    """Not tracked by the cycle collector: version chains never form cycles, and with
    millions of rows resident a tracked object per row makes every full collection walk
    the whole table."""

    row: tuple[Any, ...]
    begin: int
    end: int = LIVE
    older: Version | None = None

    def __repr__(self) -> str:
        end = "live" if self.end == LIVE else self.end
        return f"Version({self.row!r}, {self.begin}..{end})"


class History:
    """Superseded versions in ``end`` order, with O(1) removal from the front."""

    __slots__ = ("_ends", "_items", "_start")

    def __init__(self) -> None:
        self._ends: list[int] = []
        self._items: list[tuple[Any, Version]] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._ends) - self._start

    def append(self, end: int, pk: Any, version: Version) -> None:
        self._ends.append(end)
        self._items.append((pk, version))

    def oldest_end(self) -> int | None:
        return self._ends[self._start] if self._start < len(self._ends) else None

    def pop_oldest(self) -> tuple[Any, Version]:
        item = self._items[self._start]
        self._items[self._start] = None  # type: ignore[call-overload]
        self._start += 1
        if self._start > 1024 and self._start * 2 > len(self._ends):
            del self._ends[: self._start]
            del self._items[: self._start]
            self._start = 0
        return item

    def ended_after(self, offset: int) -> list[tuple[Any, Version]]:
        """Every retained version whose ``end`` is greater than ``offset`` (a copy)."""
        i = bisect_right(self._ends, offset, self._start)
        return self._items[i:]

    def items(self) -> list[tuple[Any, Version]]:
        return self._items[self._start :]
