"""MIN/MAX accumulators over an ordered multiset (value -> multiplicity, plus the sorted
distinct values), so deleting the current extreme is exact: the next value is already in
order. Cost O(log g) per change for a group of g distinct values; NULLs are ignored."""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedList


class MinMax:
    __slots__ = ("counts", "ext", "is_max", "order")

    def __init__(self, is_max: bool) -> None:
        self.is_max = is_max
        self.counts: dict[Any, int] = {}
        self.order = SortedList()
        self.ext: Any = None  # the current extreme, kept so reads cost nothing

    def add(self, v: Any, w: int) -> None:
        if v is None:
            return
        c = self.counts.get(v, 0)
        n = c + w
        if n:
            self.counts[v] = n
            if c == 0:
                self.order.add(v)
                ext = self.ext
                if ext is None or (v > ext if self.is_max else v < ext):
                    self.ext = v
        else:
            del self.counts[v]
            self.order.remove(v)
            if v == self.ext:
                order = self.order
                self.ext = (order[-1] if self.is_max else order[0]) if order else None

    def value(self) -> Any:
        return self.ext
