"""Union: UNION ALL is Z-set addition (linear: Δ(A+B) = ΔA + ΔB); UNION (distinct) is this
followed by a ``Distinct`` operator in the circuit."""

from __future__ import annotations

from collections.abc import Sequence

from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zmerge


class Union(Operator):
    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        out: ZSet = {}
        for d in deltas:
            if d:
                zmerge(out, d)
        return out or None
