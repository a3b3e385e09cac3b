"""Filter (σ): stateless and linear, so Δσ(A) = σ(ΔA)."""

from __future__ import annotations

from collections.abc import Sequence

from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet
from core.sql import ir
from core.sql.exprc import compile_predicate


class Filter(Operator):
    def __init__(self, input: Operator, predicate: ir.Expr) -> None:
        super().__init__([input])
        pred = compile_predicate(predicate)
        assert pred is not None
        self.pred = pred

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        d = deltas[0]
        if not d:
            return None
        pred = self.pred
        return {r: w for r, w in d.items() if pred(r)} or None
