"""Project (π, map): stateless and linear, so Δπ(A) = π(ΔA) (weights of rows that map to
the same output row add up, and cancel when they sum to zero)."""

from __future__ import annotations

from collections.abc import Sequence

from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zadd
from core.sql import ir
from core.sql.exprc import compile_row


class Project(Operator):
    def __init__(self, input: Operator, exprs: list[ir.Expr]) -> None:
        super().__init__([input])
        self.fn = compile_row(exprs)

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        d = deltas[0]
        if not d:
            return None
        fn = self.fn
        out: ZSet = {}
        for r, w in d.items():
            zadd(out, fn(r), w)
        return out or None
