"""Linear aggregate accumulators: COUNT(*), COUNT(x), SUM(x), AVG(x).

Each is a group of running sums, so a change of weight w costs O(1):
count += w; sum += w·x; AVG = sum / count of non-NULL values; SUM over no non-NULL value
is NULL. Float sums accumulate in change order, so they can differ from a fresh
re-evaluation in the last bits (as any database's running sums do).
"""

from __future__ import annotations

from typing import Any


class CountStar:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, v: Any, w: int) -> None:
        self.n += w

    def value(self) -> Any:
        return self.n


class Count:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, v: Any, w: int) -> None:
        if v is not None:
            self.n += w

    def value(self) -> Any:
        return self.n


class Sum:
    __slots__ = ("n", "s")

    def __init__(self) -> None:
        self.n = 0
        self.s: Any = 0

    def add(self, v: Any, w: int) -> None:
        if v is not None:
            self.n += w
            self.s += v * w
            if self.n == 0:
                self.s = 0  # drop float residue once the group has no values

    def value(self) -> Any:
        return self.s if self.n else None


class Avg(Sum):
    __slots__ = ()

    def value(self) -> Any:
        return self.s / self.n if self.n else None
