"""Semi-join for ``x IN (SELECT y ...)``: left rows whose key occurs in the right input.

State: the left input indexed by key, and the integrated count of each right key.
Incremental rule, with m(k) = [count(k) > 0]:
Δout = Σ_k ΔL(k)·m_new(k) + L_old(k)·(m_new(k) − m_old(k)). NULL keys never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.dbsp.arrangement import group, integrate, null_key
from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zadd
from core.sql import ir
from core.sql.exprc import compile_expr


class SemiJoin(Operator):
    def __init__(self, left: Operator, right: Operator, lkey: ir.Expr, rkey: ir.Expr) -> None:
        super().__init__([left, right])
        self.lkey = compile_expr(lkey)
        self.rkey = compile_expr(rkey)
        self.left: dict[Any, ZSet] = {}
        self.counts: dict[Any, int] = {}

    def init(self, full: list[ZSet]) -> ZSet:
        self.step([None, full[1] or None])
        return self.step([full[0] or None, None]) or {}

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        dL, dR = deltas
        counts = self.counts
        out: ZSet = {}
        if dR:
            before: dict[Any, int] = {}
            for r, w in dR.items():
                k = self.rkey(r)
                if null_key(k):
                    continue
                old = counts.get(k, 0)
                before.setdefault(k, old)
                if old + w:
                    counts[k] = old + w
                else:
                    counts.pop(k, None)
            for k, b in before.items():
                on = counts.get(k, 0) > 0
                if (b > 0) != on:
                    for a, wa in (self.left.get(k) or {}).items():
                        zadd(out, a, wa if on else -wa)
        if dL:
            g = group(dL, self.lkey)
            for k, rows in g.items():
                if counts.get(k, 0) > 0:
                    for a, wa in rows.items():
                        zadd(out, a, wa)
            integrate(self.left, g)
        return out or None
