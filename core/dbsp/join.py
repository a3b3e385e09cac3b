"""Equi-join, inner and LEFT, with key-indexed integrated state of both inputs.

Incremental rule (bilinear): with A, B the integrals before the commit,
Δ(A⋈B) = ΔA⋈B + A⋈ΔB + ΔA⋈ΔB = ΔA⋈B_old + A_new⋈ΔB; a pair is kept only when the
residual predicate (non-equi ON/WHERE parts) holds. For LEFT joins the operator also keeps,
per left row, the number of matching right rows; a left row is NULL-padded exactly while
that count is zero, so the padded row is retracted when its first match arrives and comes
back when its last match goes (this is also how RLS revocations become deletes).
Cost: O(|Δ| × matches per key).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.dbsp.arrangement import PrivateSide, Side, group, null_key
from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zadd
from core.sql import ir
from core.sql.exprc import compile_predicate


class Join(Operator):
    def __init__(
        self,
        left: Operator,
        right: Operator,
        kind: str,
        lside: Side,
        rside: Side,
        residual: ir.Expr | None,
        right_width: int,
    ) -> None:
        super().__init__([left, right])
        self.kind = kind
        self.A = lside
        self.B = rside
        self.res = compile_predicate(residual)
        self.nulls = (None,) * right_width
        self.matches: dict[Any, int] = {}
        if kind == "left":
            assert isinstance(lside, PrivateSide), "LEFT JOIN keeps its left input itself"

    def init(self, full: list[ZSet]) -> ZSet:
        """The join of both inputs' current states, outside any commit.

        The whole left input is joined against the right side's current state directly:
        it must not go through ``Side.prepare``, which for a shared arrangement returns
        (and caches) the *commit's* delta of that arrangement, so a self-join would see its
        left rows again as a right-side delta, and a join created after another circuit
        read the arrangement in the last commit would see that commit's (empty) delta.
        """
        A, B = self.A, self.B
        if isinstance(B, PrivateSide):
            B.load(full[1])
        A.pending = {}
        B.pending = {}
        dA = full[0] or None
        out = self._join(dA, group(dA, A.key), {})
        if isinstance(A, PrivateSide):
            A.load(full[0])
        return out or {}

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        dA, dB = deltas
        A, B = self.A, self.B
        out = self._join(dA, A.prepare(dA), B.prepare(dB))
        A.commit()
        B.commit()
        return out or None

    def _join(self, dA: ZSet | None, gA: dict, gB: dict) -> ZSet:
        """ΔA⋈B_old + A_new⋈ΔB (+ the LEFT padding changes) for grouped deltas."""
        A, B, res = self.A, self.B, self.res
        out: ZSet = {}
        for k, rows in gA.items():
            olds = list(B.old(k))
            if not olds:
                continue
            for a, wa in rows.items():
                for b, wb in olds:
                    r = a + b
                    if res is None or res(r):
                        zadd(out, r, wa * wb)
        for k, brows in gB.items():
            news = list(A.new(k))
            if not news:
                continue
            for b, wb in brows.items():
                for a, wa in news:
                    r = a + b
                    if res is None or res(r):
                        zadd(out, r, wa * wb)
        if self.kind == "left":
            self._pad(dA, gA, gB, out)
        return out

    def _pad(self, dA: ZSet | None, gA: dict, gB: dict, out: ZSet) -> None:
        A = self.A
        assert isinstance(A, PrivateSide)
        B, res, nulls, matches = self.B, self.res, self.nulls, self.matches
        before: dict[Any, int] = {}
        for k, brows in gB.items():
            lefts = list(A.old(k))
            for b, wb in brows.items():
                for a, _ in lefts:
                    if res is None or res(a + b):
                        if a not in before:
                            before[a] = matches.get(a, 0)
                        matches[a] = matches.get(a, 0) + wb
        old_w: dict[Any, int] = {}
        for k, rows in gA.items():
            bucket = A.index.get(k) or {}
            for a in rows:
                w0 = bucket.get(a, 0)
                old_w[a] = w0
                if a not in before:
                    before[a] = matches.get(a, 0) if w0 else 0
                if w0 == 0:
                    matches[a] = sum(wb for b, wb in B.new(k) if res is None or res(a + b))
        key = A.key
        for a, m_old in before.items():
            k = key(a)
            w_old = old_w[a] if a in old_w else (A.index.get(k) or {}).get(a, 0)
            w_new = w_old + gA.get(k, {}).get(a, 0)
            m_new = matches.get(a, 0)
            p_old = w_old if m_old == 0 else 0
            p_new = w_new if m_new == 0 else 0
            if p_new != p_old:
                zadd(out, a + nulls, p_new - p_old)
            if w_new == 0:
                matches.pop(a, None)
        if dA:
            for a, wa in dA.items():
                if null_key(key(a)):
                    zadd(out, a + nulls, wa)

    def release(self) -> None:
        self.A.release()
        self.B.release()
        super().release()
