"""Compiles IR expressions into Python closures over positional rows.

SQL semantics kept here: NULL is ``None`` and propagates through arithmetic, comparisons
and functions; AND/OR/NOT use three-valued logic (``None`` = UNKNOWN); a WHERE keeps a row
only when its predicate is ``True``. Integer division truncates toward zero; division or
modulo by zero gives NULL (as SQLite does). LIKE is case-sensitive (ILIKE is not).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from core.errors import UnsupportedSql
from core.sql import ir

Fn = Callable[[tuple], Any]

_CMP: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _div(a: Any, b: Any) -> Any:
    if b == 0:
        return None
    if type(a) is int and type(b) is int:
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    return a / b


def _mod(a: Any, b: Any) -> Any:
    if b == 0:
        return None
    if type(a) is int and type(b) is int:
        r = abs(a) % abs(b)
        return r if a >= 0 else -r
    import math

    return math.fmod(a, b)


def sql_text(v: Any) -> str:
    """A value as PostgreSQL prints it in text: true/false, 2 for 2.0."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if type(v) is float and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _div,
    "%": _mod,
    "||": lambda a, b: sql_text(a) + sql_text(b),
}


_SCALAR: dict[str, Callable[[Any], Any]] = {
    "lower": str.lower,
    "upper": str.upper,
    "length": len,
    "abs": abs,
}


def like_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if case_insensitive else 0))


def compile_expr(e: ir.Expr) -> Fn:
    if isinstance(e, ir.ColRef):
        return operator.itemgetter(e.index)
    if isinstance(e, ir.Const):
        v = e.value
        return lambda r: v
    if isinstance(e, ir.BinOp):
        if e.op in _CMP:
            cmp = _CMP[e.op]
            if isinstance(e.left, ir.ColRef) and isinstance(e.right, ir.Const):
                i, c = e.left.index, e.right.value
                if c is None:
                    return lambda r: None

                def col_const(r: tuple) -> Any:
                    v = r[i]
                    return None if v is None else cmp(v, c)

                return col_const
            fa, fb = compile_expr(e.left), compile_expr(e.right)

            def compare(r: tuple) -> Any:
                a = fa(r)
                if a is None:
                    return None
                b = fb(r)
                return None if b is None else cmp(a, b)

            return compare
        if e.op in _ARITH:
            op = _ARITH[e.op]
            fa, fb = compile_expr(e.left), compile_expr(e.right)

            def arith(r: tuple) -> Any:
                a = fa(r)
                if a is None:
                    return None
                b = fb(r)
                return None if b is None else op(a, b)

            return arith
        raise UnsupportedSql(f"operator {e.op!r}")
    if isinstance(e, ir.BoolOp):
        fs = [compile_expr(a) for a in e.args]
        if e.op == "and":

            def and_(r: tuple) -> Any:
                unknown = False
                for f in fs:
                    v = f(r)
                    if v is False:
                        return False
                    if v is None:
                        unknown = True
                return None if unknown else True

            return and_

        def or_(r: tuple) -> Any:
            unknown = False
            for f in fs:
                v = f(r)
                if v is True:
                    return True
                if v is None:
                    unknown = True
            return None if unknown else False

        return or_
    if isinstance(e, ir.Not):
        f = compile_expr(e.arg)

        def not_(r: tuple) -> Any:
            v = f(r)
            return None if v is None else not v

        return not_
    if isinstance(e, ir.Neg):
        f = compile_expr(e.arg)

        def neg(r: tuple) -> Any:
            v = f(r)
            return None if v is None else -v

        return neg
    if isinstance(e, ir.IsNull):
        f = compile_expr(e.arg)
        if e.negated:
            return lambda r: f(r) is not None
        return lambda r: f(r) is None
    if isinstance(e, ir.InList):
        f = compile_expr(e.arg)
        consts = all(isinstance(v, ir.Const) for v in e.values)
        negated = e.negated
        if consts:
            vals = [v.value for v in e.values]  # type: ignore[attr-defined]
            has_null = any(v is None for v in vals)
            try:
                vset: Any = frozenset(v for v in vals if v is not None)
            except TypeError:
                vset = [v for v in vals if v is not None]

            def in_consts(r: tuple) -> Any:
                v = f(r)
                if v is None:
                    return None
                if v in vset:
                    return not negated
                return None if has_null else negated

            return in_consts
        fvals = [compile_expr(v) for v in e.values]

        def in_exprs(r: tuple) -> Any:
            v = f(r)
            if v is None:
                return None
            unknown = False
            for fv in fvals:
                x = fv(r)
                if x is None:
                    unknown = True
                elif x == v:
                    return not negated
            return None if unknown else negated

        return in_exprs
    if isinstance(e, ir.Like):
        f = compile_expr(e.arg)
        negated = e.negated
        if isinstance(e.pattern, ir.Const):
            if e.pattern.value is None:
                return lambda r: None
            rx = like_regex(str(e.pattern.value), e.case_insensitive)

            def like_const(r: tuple) -> Any:
                v = f(r)
                if v is None:
                    return None
                return (rx.fullmatch(v) is not None) != negated

            return like_const
        fp = compile_expr(e.pattern)
        ci = e.case_insensitive

        def like_expr(r: tuple) -> Any:
            v, p = f(r), fp(r)
            if v is None or p is None:
                return None
            return (like_regex(p, ci).fullmatch(v) is not None) != negated

        return like_expr
    if isinstance(e, ir.Case):
        whens = [(compile_expr(c), compile_expr(v)) for c, v in e.whens]
        fd = compile_expr(e.default) if e.default is not None else (lambda r: None)

        def case(r: tuple) -> Any:
            for c, v in whens:
                if c(r) is True:
                    return v(r)
            return fd(r)

        return case
    if isinstance(e, ir.Func):
        fs = [compile_expr(a) for a in e.args]
        name = e.name
        if name == "coalesce":

            def coalesce(r: tuple) -> Any:
                for f in fs:
                    v = f(r)
                    if v is not None:
                        return v
                return None

            return coalesce
        one = _SCALAR.get(name)
        if one is None or len(fs) != 1:
            raise UnsupportedSql(f"function {name}()")
        f0 = fs[0]
        g = one

        def func(r: tuple) -> Any:
            v = f0(r)
            return None if v is None else g(v)

        return func
    raise UnsupportedSql(f"expression {type(e).__name__}")


def compile_predicate(e: ir.Expr | None) -> Callable[[tuple], bool] | None:
    """A WHERE-style test: True only when the expression is TRUE (not NULL/FALSE)."""
    if e is None:
        return None
    f = compile_expr(e)
    return lambda r: f(r) is True


def compile_key(exprs: list[ir.Expr]) -> Fn:
    """Row -> key for joins/grouping: the bare value for one expression, a tuple for more."""
    if len(exprs) == 1:
        return compile_expr(exprs[0])
    if all(isinstance(x, ir.ColRef) for x in exprs):
        return operator.itemgetter(*[x.index for x in exprs])  # type: ignore[attr-defined]
    fs = [compile_expr(x) for x in exprs]
    return lambda r: tuple(f(r) for f in fs)


def compile_row(exprs: list[ir.Expr]) -> Fn:
    """Row -> projected tuple."""
    if all(isinstance(x, ir.ColRef) for x in exprs):
        idx = [x.index for x in exprs]  # type: ignore[attr-defined]
        if len(idx) == 1:
            i = idx[0]
            return lambda r: (r[i],)
        g = operator.itemgetter(*idx)
        return lambda r: g(r)
    fs = [compile_expr(x) for x in exprs]
    return lambda r: tuple(f(r) for f in fs)
