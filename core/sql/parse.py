"""Parsing with sqlglot (PostgreSQL dialect), error positions, parameters and AS OF.

Invariant: only one read-only statement (SELECT or a UNION of SELECTs) gets past
``parse``; everything else fails here with an error naming what was found and where.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlglot
from sqlglot import exp

from core.errors import SqlError, UnsupportedSql

DIALECT = "postgres"


def position(sql: str, node: exp.Expr) -> str:
    """' at line L, column C' for the earliest token of ``node``, or '' if unknown."""
    starts = [int(n.meta["start"]) for n in node.walk() if n.meta and "start" in n.meta]
    if not starts:
        return ""
    start = min(starts)
    before = sql[:start]
    line = before.count("\n") + 1
    col = start - (before.rfind("\n") + 1) + 1
    return f" at line {line}, column {col}"


def unsupported(sql: str, what: str, node: exp.Expr) -> UnsupportedSql:
    snippet = node.sql(dialect=DIALECT)
    if len(snippet) > 60:
        snippet = snippet[:57] + "..."
    return UnsupportedSql(f"unsupported SQL: {what}{position(sql, node)}: {snippet}")


def parse(sql: str) -> exp.Expr:
    try:
        stmts = sqlglot.parse(sql, read=DIALECT)
    except sqlglot.errors.ParseError as e:
        err = e.errors[0] if e.errors else {}
        desc = err.get("description", str(e))
        where = f" at line {err['line']}, column {err['col']}" if "line" in err else ""
        raise SqlError(f"syntax error{where}: {desc}") from None
    except sqlglot.errors.TokenError as e:
        raise SqlError(f"syntax error: {e}") from None
    stmts = [s for s in stmts if s is not None]
    if len(stmts) != 1:
        raise SqlError(f"expected exactly one statement, got {len(stmts)}")
    tree = stmts[0]
    if not isinstance(tree, exp.Select | exp.Union):
        kind = type(tree).__name__.upper()
        start = len(sql) - len(sql.lstrip())
        line = sql.count("\n", 0, start) + 1
        where = f" at line {line}, column {start - (sql.rfind(chr(10), 0, start) + 1) + 1}"
        if isinstance(tree, exp.Insert | exp.Update | exp.Delete | exp.Merge):
            raise SqlError(f"{kind} is not allowed: data changes only through reducers{where}")
        raise SqlError(f"only SELECT queries are allowed here, not {kind}{where}")
    return tree


class Params:
    """Binds ``$1`` (1-based position), ``:name`` and ``?`` (in order) to given values."""

    def __init__(self, values: Sequence[Any] | Mapping[str, Any] | None) -> None:
        self.values = values if values is not None else []
        self._next = 0
        self.max_used = 0

    def positional(self, n: int, sql: str, node: exp.Expr) -> Any:
        if not isinstance(self.values, Sequence) or isinstance(self.values, str):
            raise SqlError(f"parameter ${n}{position(sql, node)} needs positional params (a list)")
        if not 1 <= n <= len(self.values):
            raise SqlError(f"parameter ${n}{position(sql, node)}: only {len(self.values)} given")
        self.max_used = max(self.max_used, n)
        return self.values[n - 1]

    def check_all_used(self) -> None:
        """Positional parameters the query never references are a mistake: refuse them."""
        v = self.values
        if isinstance(v, Sequence) and not isinstance(v, str) and len(v) > self.max_used:
            raise SqlError(
                f"{len(v)} positional parameter(s) given but the query uses {self.max_used}"
            )

    def named(self, name: str, sql: str, node: exp.Expr) -> Any:
        if not isinstance(self.values, Mapping):
            raise SqlError(f"parameter :{name}{position(sql, node)} needs named params (an object)")
        if name not in self.values:
            raise SqlError(f"parameter :{name}{position(sql, node)} was not given")
        return self.values[name]

    def next(self, sql: str, node: exp.Expr) -> Any:
        self._next += 1
        return self.positional(self._next, sql, node)


def timestamp_literal(text: str) -> int:
    """An ISO-8601 timestamp (UTC unless an offset is given) as µs since the epoch."""
    try:
        t = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SqlError(f"invalid timestamp literal {text!r} (use ISO 8601)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    delta = t - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
