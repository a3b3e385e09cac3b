"""Lowers sqlglot expressions to IR expressions, with types and parameter binding.

Column references are resolved by a callback (the caller's scope), aggregates by another
(``None`` where aggregates are not allowed). Invariant: every expression that survives has
operands of compatible types; constants compared with a typed column are converted to that
column's representation (so ``ts = TIMESTAMP '...'`` compares microseconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from core.errors import SqlError, StoreError
from core.sql import ir
from core.sql.parse import Params, position, timestamp_literal, unsupported
from core.types import ColumnType, check

NUMERIC = {ColumnType.INT64, ColumnType.FLOAT64, ColumnType.TIMESTAMP}
TEXTUAL = {ColumnType.TEXT, ColumnType.IDENTITY}

_CMP = {exp.EQ: "=", exp.NEQ: "<>", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
_ARITH = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%", exp.DPipe: "||"}
_FUNCS = {exp.Lower: "lower", exp.Upper: "upper", exp.Length: "length", exp.Abs: "abs"}
AGG_NODES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def const_type(v: Any) -> ColumnType | None:
    if isinstance(v, bool):
        return ColumnType.BOOL
    if isinstance(v, int):
        return ColumnType.INT64
    if isinstance(v, float):
        return ColumnType.FLOAT64
    if isinstance(v, str):
        return ColumnType.TEXT
    if isinstance(v, bytes):
        return ColumnType.BYTES
    return None


def compatible(a: ColumnType | None, b: ColumnType | None) -> bool:
    if a is None or b is None or a == b:
        return a != ColumnType.JSON and b != ColumnType.JSON
    return (a in NUMERIC and b in NUMERIC) or (a in TEXTUAL and b in TEXTUAL)


ColumnResolver = Callable[[exp.Column], ir.Expr]
AggHandler = Callable[[exp.Expr], ir.Expr]


class ExprLowerer:
    def __init__(
        self,
        sql: str,
        params: Params,
        resolve: ColumnResolver,
        on_agg: AggHandler | None = None,
        whole: Callable[[exp.Expr], ir.Expr | None] | None = None,
    ) -> None:
        self.sql = sql
        self.params = params
        self.resolve = resolve
        self.on_agg = on_agg
        self.whole = whole  # tries to match a whole sub-expression first (GROUP BY items)

    def lower(self, node: exp.Expr) -> ir.Expr:
        if self.whole is not None and not isinstance(node, exp.Literal | exp.Null):
            hit = self.whole(node)
            if hit is not None:
                return hit
        if isinstance(node, exp.Paren):
            return self.lower(node.this)
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                raise unsupported(self.sql, "* in an expression", node)
            return self.resolve(node)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return ir.Const(node.this, ColumnType.TEXT)
            text = node.this
            try:
                v: Any = int(text)
            except ValueError:
                v = float(text)
            return ir.Const(v, const_type(v))
        if isinstance(node, exp.Boolean):
            return ir.Const(bool(node.this), ColumnType.BOOL)
        if isinstance(node, exp.Null):
            return ir.Const(None, None)
        if isinstance(node, exp.Parameter):
            inner = node.this
            name = (
                inner.this if isinstance(inner, exp.Literal | exp.Var | exp.Identifier) else inner
            )
            if isinstance(name, str) and name.isdigit():
                return self._param(self.params.positional(int(name), self.sql, node))
            return self._param(self.params.named(str(name), self.sql, node))
        if isinstance(node, exp.Placeholder):
            if node.this and not node.args.get("jdbc"):
                return self._param(self.params.named(str(node.this), self.sql, node))
            return self._param(self.params.next(self.sql, node))
        if isinstance(node, exp.And | exp.Or):
            op = "and" if isinstance(node, exp.And) else "or"
            parts: list[ir.Expr] = []
            for side in (node.this, node.expression):
                low = self.lower(side)
                if isinstance(low, ir.BoolOp) and low.op == op:
                    parts.extend(low.args)
                else:
                    parts.append(self._bool(low, side))
            return ir.BoolOp(op, tuple(parts))
        if isinstance(node, exp.Not):
            inner_l = self.lower(node.this)
            if isinstance(inner_l, ir.InList | ir.Like | ir.IsNull):
                return dataclasses.replace(inner_l, negated=not inner_l.negated)
            return ir.Not(self._bool(inner_l, node.this))
        for cls, op in _CMP.items():
            if isinstance(node, cls):
                return self._compare(op, node)
        for cls, op in _ARITH.items():
            if isinstance(node, cls):
                return self._arith(op, node)
        if isinstance(node, exp.Neg):
            a = self.lower(node.this)
            if a.type is not None and a.type not in NUMERIC:
                raise SqlError(f"cannot negate a {a.type.value}{position(self.sql, node)}")
            return ir.Neg(a, a.type)
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise unsupported(self.sql, "IS other than IS [NOT] NULL", node)
            return ir.IsNull(self.lower(node.this), bool(node.args.get("negate")))
        if isinstance(node, exp.In):
            if node.args.get("query") is not None:
                raise unsupported(
                    self.sql, "IN (subquery) other than as a top-level AND-ed WHERE condition", node
                )
            arg = self.lower(node.this)
            vals = tuple(self._coerce(arg, self.lower(v), v) for v in node.expressions)
            return ir.InList(arg, vals)
        if isinstance(node, exp.Like | exp.ILike):
            arg = self.lower(node.this)
            pat = self.lower(node.expression)
            for x, src in ((arg, node.this), (pat, node.expression)):
                if x.type is not None and x.type not in TEXTUAL:
                    raise SqlError(f"LIKE needs text, got {x.type.value}{position(self.sql, src)}")
            return ir.Like(
                arg,
                pat,
                negated=bool(node.args.get("negate")),
                case_insensitive=isinstance(node, exp.ILike),
            )
        if isinstance(node, exp.Between):
            arg = self.lower(node.this)
            lo = self._coerce(arg, self.lower(node.args["low"]), node)
            hi = self._coerce(arg, self.lower(node.args["high"]), node)
            return ir.BoolOp(
                "and",
                (
                    ir.BinOp(">=", arg, lo, ColumnType.BOOL),
                    ir.BinOp("<=", arg, hi, ColumnType.BOOL),
                ),
            )
        if isinstance(node, exp.Case):
            return self._case(node)
        if isinstance(node, exp.Coalesce):
            args = tuple(self.lower(a) for a in [node.this, *node.expressions])
            return ir.Func("coalesce", args, next((a.type for a in args if a.type), None))
        for fcls, fname in _FUNCS.items():
            if isinstance(node, fcls):
                a = self.lower(node.this)
                want = NUMERIC if fname == "abs" else TEXTUAL
                if a.type is not None and a.type not in want:
                    kind = "a number" if fname == "abs" else "text"
                    raise SqlError(
                        f"function {fname}() needs {kind}, got {a.type.value}"
                        f"{position(self.sql, node)}"
                    )
                rtype = ColumnType.INT64 if fname == "length" else a.type
                return ir.Func(fname, (a,), rtype)
        if isinstance(node, exp.Cast):
            return self._cast(node)
        if isinstance(node, AGG_NODES):
            if node.expressions:
                raise SqlError(
                    f"{type(node).__name__.upper()} takes one argument{position(self.sql, node)}"
                )
            if self.on_agg is None:
                raise SqlError(
                    f"aggregate functions are not allowed here{position(self.sql, node)}"
                )
            return self.on_agg(node)
        if isinstance(node, exp.Window):
            raise unsupported(self.sql, "window functions", node)
        if isinstance(node, exp.Subquery | exp.Select):
            raise unsupported(self.sql, "scalar subqueries", node)
        if isinstance(node, exp.Exists):
            raise unsupported(self.sql, "EXISTS subqueries", node)
        if isinstance(node, exp.Func):
            raise unsupported(self.sql, f"function {node.sql_name()}()", node)
        raise unsupported(self.sql, f"expression {type(node).__name__}", node)

    # ---- helpers

    def _param(self, value: Any) -> ir.Const:
        return ir.Const(value, const_type(value))

    def _bool(self, e: ir.Expr, src: exp.Expr, what: str = "a condition") -> ir.Expr:
        if e.type is not None and e.type != ColumnType.BOOL:
            where = position(self.sql, src)
            raise SqlError(f"expected a boolean condition ({what}), got {e.type.value}{where}")
        return e

    def condition(self, node: exp.Expr, what: str) -> ir.Expr:
        """Lower a WHERE/ON/HAVING condition, which must be boolean."""
        return self._bool(self.lower(node), node, what)

    def _coerce(self, target: ir.Expr, other: ir.Expr, src: exp.Expr) -> ir.Expr:
        """Check ``other`` can be compared with ``target``; convert constants to its type."""
        if (
            isinstance(other, ir.Const)
            and target.type in NUMERIC
            and const_type(other.value) in (ColumnType.INT64, ColumnType.FLOAT64)
        ):
            return other  # numbers compare numerically: x < 2.5 on an int64 column is fine
        if isinstance(other, ir.Const) and target.type is not None and other.value is not None:
            try:
                v = check(target.type, True, other.value, "value")
            except StoreError:
                raise SqlError(
                    f"cannot compare {target.type.value} with {other.value!r}"
                    f"{position(self.sql, src)}"
                ) from None
            return ir.Const(v, target.type)
        if not compatible(target.type, other.type):
            raise SqlError(
                f"cannot compare {target.type} with {other.type}{position(self.sql, src)}"
            )
        return other

    def _compare(self, op: str, node: exp.Expr) -> ir.Expr:
        a = self.lower(node.this)
        b = self.lower(node.expression)
        if isinstance(a, ir.Const) and not isinstance(b, ir.Const):
            a = self._coerce(b, a, node)
        else:
            b = self._coerce(a, b, node)
        return ir.BinOp(op, a, b, ColumnType.BOOL)

    def _arith(self, op: str, node: exp.Expr) -> ir.Expr:
        a = self.lower(node.this)
        b = self.lower(node.expression)
        if op == "||":
            return ir.BinOp(op, a, b, ColumnType.TEXT)
        for x, src in ((a, node.this), (b, node.expression)):
            if x.type is not None and x.type not in NUMERIC:
                raise SqlError(
                    f"arithmetic needs numbers, got {x.type.value}{position(self.sql, src)}"
                )
        if a.type == ColumnType.FLOAT64 or b.type == ColumnType.FLOAT64:
            t: ColumnType | None = ColumnType.FLOAT64
        elif a.type is None and b.type is None:
            t = None
        else:
            t = ColumnType.INT64
        return ir.BinOp(op, a, b, t)

    def _case(self, node: exp.Case) -> ir.Expr:
        operand = node.this
        whens = []
        for w in node.args.get("ifs") or []:
            cond_src = w.this
            if operand is not None:
                cond = self._compare_eq(operand, cond_src)
            else:
                cond = self._bool(self.lower(cond_src), cond_src)
            whens.append((cond, self.lower(w.args["true"])))
        default = node.args.get("default")
        d = self.lower(default) if default is not None else None
        rtype = next((v.type for _, v in whens if v.type is not None), d.type if d else None)
        return ir.Case(tuple(whens), d, rtype)

    def _compare_eq(self, a_src: exp.Expr, b_src: exp.Expr) -> ir.Expr:
        a = self.lower(a_src)
        b = self._coerce(a, self.lower(b_src), b_src)
        return ir.BinOp("=", a, b, ColumnType.BOOL)

    def _cast(self, node: exp.Cast) -> ir.Expr:
        to = node.args["to"].this
        inner = node.this
        if (
            to in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ)
            and isinstance(inner, exp.Literal)
            and inner.is_string
        ):
            return ir.Const(timestamp_literal(inner.this), ColumnType.TIMESTAMP)
        raise unsupported(self.sql, "CAST other than TIMESTAMP '...' literals", node)
