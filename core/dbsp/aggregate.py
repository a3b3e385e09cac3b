"""GROUP BY with aggregates: per-group accumulators updated in place.

Incremental rule: a change touches only its groups; for each touched group the operator
emits −(old output row) + (new output row), or nothing if the row is unchanged. A group
whose row count reaches zero disappears (its row is retracted). A global aggregate (no
GROUP BY) always has exactly one output row, even over an empty input (COUNT = 0, others
NULL). Accumulators: ``agg_linear`` (COUNT/SUM/AVG), ``agg_minmax``, ``agg_distinct``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from core.dbsp.agg_distinct import CountDistinct
from core.dbsp.agg_linear import Avg, Count, CountStar, Sum
from core.dbsp.agg_minmax import MinMax
from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zadd
from core.sql import ir
from core.sql.exprc import compile_expr, compile_row


def _factory(a: ir.AggCall) -> Callable[[], Any]:
    if a.func == "count":
        if a.arg is None:
            return CountStar
        return CountDistinct if a.distinct else Count
    if a.func == "sum":
        return Sum
    if a.func == "avg":
        return Avg
    if a.func in ("min", "max"):
        is_max = a.func == "max"
        return lambda: MinMax(is_max)
    raise ValueError(a.func)


class _Group:
    __slots__ = ("accs", "n", "out")

    def __init__(self, accs: list[Any]) -> None:
        self.n = 0
        self.accs = accs
        self.out: tuple | None = None  # the group's current output row (cached)


class Aggregate(Operator):
    def __init__(self, input: Operator, group: list[ir.Expr], aggs: list[ir.AggCall]) -> None:
        super().__init__([input])
        self.global_ = not group
        self.gkey = compile_row(group) if group else (lambda r: ())
        self.factories = [_factory(a) for a in aggs]
        self.args = [compile_expr(a.arg) if a.arg is not None else (lambda r: None) for a in aggs]
        self.groups: dict[Any, _Group] = {}

    def _row(self, gk: tuple, g: _Group | None) -> tuple | None:
        if g is None:
            if not self.global_:
                return None
            g = _Group([f() for f in self.factories])
        return gk + tuple([a.value() for a in g.accs])

    def _current(self, gk: tuple, g: _Group | None) -> tuple | None:
        if g is None or g.out is None:
            return self._row(gk, g)
        return g.out

    def init(self, full: list[ZSet]) -> ZSet:
        self._apply(full[0] or {}, {})
        out: ZSet = {}
        for gk, g in self.groups.items():
            row = g.out = self._row(gk, g)
            assert row is not None
            out[row] = 1
        if self.global_ and not self.groups:
            row = self._row((), None)
            assert row is not None
            out[row] = 1
        return out

    def _apply(self, d: ZSet, touched: dict[Any, tuple | None]) -> None:
        groups, gkey, args = self.groups, self.gkey, self.args
        for r, w in d.items():
            gk = gkey(r)
            g = groups.get(gk)
            if gk not in touched:
                touched[gk] = self._current(gk, g)
            if g is None:
                g = groups[gk] = _Group([f() for f in self.factories])
            g.n += w
            for acc, f in zip(g.accs, args):
                acc.add(f(r), w)
            if g.n == 0:
                del groups[gk]

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        d = deltas[0]
        if not d:
            return None
        touched: dict[Any, tuple | None] = {}
        self._apply(d, touched)
        out: ZSet = {}
        groups = self.groups
        for gk, old in touched.items():
            g = groups.get(gk)
            new = self._row(gk, g)
            if g is not None:
                g.out = new
            if old != new:
                if old is not None:
                    zadd(out, old, -1)
                if new is not None:
                    zadd(out, new, 1)
        return out or None
