"""COUNT(DISTINCT x): a multiplicity per distinct non-NULL value; the count is the number of
values with positive multiplicity. O(1) per change."""

from __future__ import annotations

from typing import Any


class CountDistinct:
    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}

    def add(self, v: Any, w: int) -> None:
        if v is None:
            return
        n = self.counts.get(v, 0) + w
        if n:
            self.counts[v] = n
        else:
            del self.counts[v]

    def value(self) -> Any:
        return len(self.counts)
