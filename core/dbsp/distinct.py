"""Distinct: keeps the integrated weight of every input row and emits a change only when a
row's weight crosses between zero and positive (DBSP's H function):
out(r) = +1 if w_old(r) <= 0 < w_new(r); -1 if w_new(r) <= 0 < w_old(r); else nothing."""

from __future__ import annotations

from collections.abc import Sequence

from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet


class Distinct(Operator):
    def __init__(self, input: Operator) -> None:
        super().__init__([input])
        self.weights: dict[object, int] = {}

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        d = deltas[0]
        if not d:
            return None
        ws = self.weights
        out: ZSet = {}
        for r, w in d.items():
            old = ws.get(r, 0)
            new = old + w
            if new:
                ws[r] = new
            else:
                ws.pop(r, None)
            if old <= 0 < new:
                out[r] = 1
            elif new <= 0 < old:
                out[r] = -1
        return out or None
