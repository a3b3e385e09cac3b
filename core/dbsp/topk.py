"""ORDER BY ... LIMIT/OFFSET: the integrated input kept in sort order; the output is the
window of rows at positions [offset, offset + limit).

Incremental rule: out_new − out_old, where both windows are read from the ordered multiset
(O(log n) to apply a change, O(offset + limit) to read the window). Changes that sort after
the window's last row and leave it full cannot change it and are applied without reading.
Ties are broken by the whole row, so the window is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sortedcontainers import SortedList

from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zadd
from core.sql import ir
from core.sql.ordering import sort_key


class TopK(Operator):
    def __init__(self, input: Operator, order: list[ir.SortKey], limit: int | None, offset: int):
        super().__init__([input])
        self.key = sort_key(order)
        self.limit = limit
        self.offset = offset
        self.counts: dict[Any, int] = {}
        self.sorted = SortedList()
        self.window: ZSet = {}
        self.boundary: Any = None  # sort key of the window's last row when the window is full

    def _read(self) -> ZSet:
        end = None if self.limit is None else self.offset + self.limit
        out: ZSet = {}
        pos = 0
        last = None
        for k, row in self.sorted:
            c = self.counts[row]
            lo, hi = pos, pos + c
            pos = hi
            take_lo = max(lo, self.offset)
            take_hi = hi if end is None else min(hi, end)
            if take_hi > take_lo:
                out[row] = take_hi - take_lo
                last = k
            if end is not None and pos >= end:
                self.boundary = last
                return out
        self.boundary = None
        return out

    def _apply(self, d: ZSet) -> bool:
        """Integrate ``d``; True if the window may have changed."""
        may = False
        b = self.boundary
        for row, w in d.items():
            k = self.key(row)
            if b is None or not (k > b):
                may = True
            c = self.counts.get(row, 0)
            n = c + w
            if n > 0:
                self.counts[row] = n
                if c <= 0:
                    self.sorted.add((k, row))
            else:
                self.counts.pop(row, None)
                if c > 0:
                    self.sorted.remove((k, row))
        return may

    def init(self, full: list[ZSet]) -> ZSet:
        self._apply(full[0] or {})
        self.window = self._read()
        return dict(self.window)

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        d = deltas[0]
        if not d:
            return None
        if not self._apply(d):
            return None
        new = self._read()
        out: ZSet = {}
        for row, w in new.items():
            zadd(out, row, w)
        for row, w in self.window.items():
            zadd(out, row, -w)
        self.window = new
        return out or None
