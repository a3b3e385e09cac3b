"""Ad-hoc SQL: the executor (core.sql.executor), ``run_query`` and the front end under it.

* Differential tests: random schemas (int/float/text/bool columns, some nullable, single or
  composite primary keys, hash and B-tree indexes), data written through a reducer over
  several commits (inserts, updates, deletes), and random queries from the supported
  grammar, checked against SQLite in memory as the oracle. Queries run at the newest
  offset and ``FOR SYSTEM_TIME AS OF`` older ones, so index reads over MVCC history are
  covered too. The declared output types are checked against the Python values returned.
* Index use: a spy on ``SnapshotTable`` proves which access path each scan took.
* Errors: unsupported constructs (named, with their position), unknown names, type
  mismatches, parameters.
* AS OF through SQL, by offset and by timestamp, from memory and from disk.
* Front-end regressions: the last section pins the front-end bugs these tests found
  (each docstring says what was wrong; all fixed in core/sql since).

Generated SQL avoids the places where SQLite and PostgreSQL disagree (integer division by
zero, % on floats, || on non-text, case-insensitive LIKE, non-ASCII case folding), so a
failure here is an executor or lowering bug, not dialect noise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from core import ColumnType, Database, HistoryUnavailable, Module, StoreConfig
from core.errors import SqlError, UnsupportedSql
from core.reads import SnapshotTable
from core.schema import ColumnDef, IndexDef, TableDef
from core.sql import ir
from core.sql.executor import execute_plan
from core.sql.lower import lower_sql
from core.sql.query import QueryResult, run_query
from core.storage.indexes import HIGH

# =========================================================================== store helpers


def make_module(tables: list[TableDef], name: str = "sqltest") -> Module:
    mod = Module(name)
    for t in tables:
        mod.add_table(t)

    @mod.reducer
    def apply(ctx: Any, ops: list) -> None:
        """Generic writer: ["ins"|"upd", table, {column: value}] or ["del", table, [pk...]]."""
        for op, table, arg in ops:
            h = ctx.db[table]
            if op == "ins":
                h.insert(**arg)
            elif op == "upd":
                h.update(arg)
            elif op == "del":
                assert h.delete(*arg)
            else:  # pragma: no cover - test bug
                raise AssertionError(op)

    return mod


def open_db(tables: list[TableDef], **cfg: Any) -> Database:
    return Database.open([make_module(tables)], StoreConfig(durability="none", **cfg))


def write(db: Database, *ops: list) -> int:
    """Commit ``ops`` in one transaction; returns the commit's offset."""
    return db.call_sync("apply", [list(ops)]).offset


def col(name: str, t: ColumnType, nullable: bool = False) -> ColumnDef:
    return ColumnDef(name, t, nullable)


# =========================================================================== random schemas

KINDS = ("int", "float", "text", "bool")
CTYPE = {
    "int": ColumnType.INT64,
    "float": ColumnType.FLOAT64,
    "text": ColumnType.TEXT,
    "bool": ColumnType.BOOL,
}
LITE_TYPE = {"int": "INTEGER", "float": "REAL", "text": "TEXT", "bool": "INTEGER"}
PY_TYPE: dict[str, type] = {"int64": int, "float64": float, "text": str, "bool": bool}

# floats are dyadic, so sums, products and halvings are exact in both engines
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-2, 6),
    "float": st.sampled_from([-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 2.5, 3.75]),
    "text": st.sampled_from(["", "a", "A", "ab", "aB", "abc", "b", "ba", "b_c", "x%y", "zz"]),
    "bool": st.booleans(),
}
LIKE_PATTERNS = ["a%", "%b", "_", "%", "a_", "%a%", "A%", "b_c", "x%y", "", "%c", "_b%", "ab"]


@dataclass(frozen=True)
class Col:
    name: str
    kind: str
    nullable: bool


@dataclass(frozen=True)
class Table:
    name: str
    cols: tuple[Col, ...]
    pk: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...], str], ...]

    def tdef(self) -> TableDef:
        return TableDef(
            name=self.name,
            columns=tuple(ColumnDef(c.name, CTYPE[c.kind], c.nullable) for c in self.cols),
            primary_key=self.pk,
            indexes=tuple(IndexDef(n, cs, kind) for n, cs, kind in self.indexes),  # type: ignore[arg-type]
        )


@st.composite
def schemas(draw: Any) -> list[Table]:
    out = []
    for ti in range(draw(st.integers(2, 3))):
        cols = [Col("id", "int", False)]
        pk: tuple[str, ...] = ("id",)
        if draw(st.integers(0, 4)) == 0:
            cols.append(Col("k2", "int", False))
            pk = ("id", "k2")
        for j in range(draw(st.integers(1, 4))):
            cols.append(Col(f"c{j}", draw(st.sampled_from(KINDS)), draw(st.booleans())))
        indexes: list[tuple[str, tuple[str, ...], str]] = []
        for c in cols:
            if pk == (c.name,):
                continue
            kind = draw(st.sampled_from([None, None, "hash", "btree", "btree"]))
            if kind is not None:
                indexes.append((f"ix_{c.name}", (c.name,), kind))
        if len(cols) >= 3 and draw(st.integers(0, 3)):
            pair = draw(st.permutations([c.name for c in cols]))[:2]
            indexes.append(("ix_pair", tuple(pair), draw(st.sampled_from(["hash", "btree"]))))
        out.append(Table(f"t{ti}", tuple(cols), pk, tuple(indexes)))
    return out


State = dict[str, dict[tuple, tuple]]


@dataclass
class History:
    commits: list[list[list]]  # the reducer's ops, one list per commit
    states: list[State]  # the model: every table's rows by primary key after each commit


@st.composite
def histories(draw: Any, schema: list[Table]) -> History:
    state: State = {t.name: {} for t in schema}
    commits: list[list[list]] = []
    states: list[State] = []

    def value(c: Col) -> Any:
        if c.nullable and draw(st.integers(0, 4)) == 0:
            return None
        return draw(VALUES[c.kind])

    def insert(t: Table, ident: int, ops: list[list]) -> None:
        row = {"id": ident}
        if "k2" in t.pk:
            row["k2"] = draw(st.integers(0, 2))
        for c in t.cols:
            if c.name not in row:
                row[c.name] = value(c)
        ops.append(["ins", t.name, row])
        state[t.name][tuple(row[k] for k in t.pk)] = tuple(row[c.name] for c in t.cols)

    first: list[list] = []
    for t in schema:
        n = draw(st.sampled_from([0, 8, 12, 3, 15, 1, 6]))  # integers() favour tiny tables
        for ident in draw(st.lists(st.integers(0, 19), min_size=n, max_size=n, unique=True)):
            insert(t, ident, first)
    commits.append(first)
    states.append({k: dict(v) for k, v in state.items()})
    for _ in range(draw(st.integers(0, 3))):
        ops: list[list] = []
        for _ in range(draw(st.integers(1, 4))):
            t = draw(st.sampled_from(schema))
            rows = state[t.name]
            op = draw(st.sampled_from(["ins", "upd", "upd", "del"])) if rows else "ins"
            if op == "ins":
                free = sorted(set(range(24)) - {pk[0] for pk in rows})
                insert(t, draw(st.sampled_from(free)), ops)
            elif op == "upd":
                pk = draw(st.sampled_from(sorted(rows)))
                new = dict(zip([c.name for c in t.cols], rows[pk]))
                for c in t.cols:
                    if c.name not in t.pk and draw(st.booleans()):
                        new[c.name] = value(c)
                ops.append(["upd", t.name, new])
                rows[pk] = tuple(new[c.name] for c in t.cols)
            else:
                pk = draw(st.sampled_from(sorted(rows)))
                ops.append(["del", t.name, list(pk)])
                del rows[pk]
        commits.append(ops)
        states.append({k: dict(v) for k, v in state.items()})
    return History(commits, states)


@contextmanager
def populated(schema: list[Table], hist: History) -> Iterator[tuple[Database, list[int]]]:
    db = open_db([t.tdef() for t in schema])
    try:
        yield db, [write(db, *ops) for ops in hist.commits]
    finally:
        db.close()


def sqlite_db(schema: list[Table], state: State) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("PRAGMA case_sensitive_like = ON")
    for t in schema:
        cols = ", ".join(
            f"{c.name} {LITE_TYPE[c.kind]}{'' if c.nullable else ' NOT NULL'}" for c in t.cols
        )
        conn.execute(f"CREATE TABLE {t.name} ({cols}, PRIMARY KEY ({', '.join(t.pk)}))")
        rows = list(state[t.name].values())
        if rows:
            marks = ", ".join("?" * len(t.cols))
            conn.executemany(f"INSERT INTO {t.name} VALUES ({marks})", rows)
    return conn


# =========================================================================== random queries

# Markers in generated SQL, resolved per engine by ``render``.
AS_OF = "\x01"  # voicehub: " FOR SYSTEM_TIME AS OF <offset>" after the first table; SQLite: ""
LITE_ON, LITE_OFF = "\x02", "\x03"  # text between them is for SQLite only
PARAM = re.compile("\x00(\\d+)\x00")  # the n-th parameter
HAS_COLUMN = re.compile(r"\b[a-z]+\d?[a-z]?\.(?:id|k2|c\d)\b")
BARE = re.compile("\\(-[0-9.]+\\)|[0-9.]+|'[^']*'|TRUE|FALSE|NULL|\x00\\d+\x00")


def sql_literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    text = repr(v)
    return f"({text})" if v < 0 else text  # never "--": that starts a comment


@dataclass
class Sql:
    text: str  # with the markers above
    params: list[Any]
    style: str | None  # "pos" ($1 / ?1), "named" (:p1) or None
    ordered: bool  # the ORDER BY determines the result order (up to identical rows)
    ncols: int
    shape: str = "plain"  # plain / agg / union


def render(q: Sql, as_of: int | None) -> tuple[str, Any, str, Any]:
    """(voicehub SQL, its params, SQLite SQL, its params)."""
    used = {int(n) for n in PARAM.findall(q.text)}
    assert used == set(range(1, len(q.params) + 1)), f"generator bug: {used} {q}"
    vh = q.text.replace(AS_OF, "" if as_of is None else f" FOR SYSTEM_TIME AS OF {as_of}")
    vh = re.sub(f"{LITE_ON}.*?{LITE_OFF}", "", vh, flags=re.S)
    lite = q.text.replace(AS_OF, "").replace(LITE_ON, "").replace(LITE_OFF, "")
    if q.style == "pos":
        vh = PARAM.sub(lambda m: f"${m[1]}", vh)
        lite = PARAM.sub(lambda m: f"?{m[1]}", lite)
        return vh, list(q.params), lite, list(q.params)
    if q.style == "named":
        named = {f"p{i + 1}": v for i, v in enumerate(q.params)}
        vh = PARAM.sub(lambda m: f":p{m[1]}", vh)
        lite = PARAM.sub(lambda m: f":p{m[1]}", lite)
        return vh, named, lite, named
    assert not q.params
    return vh, None, lite, ()


class Gen:
    """Draws typed SQL over a scope of aliased tables (all column references qualified)."""

    def __init__(
        self,
        draw: Any,
        schema: list[Table],
        pool: dict[str, list[Any]],
        params: list[Any],
        style: str | None,
        prefix: str,
    ) -> None:
        self.draw = draw
        self.schema = schema
        self.pool = pool  # values present in the data, by kind: constants that hit rows
        self.samples: dict[str, list[tuple]] = pool.get("__rows__", {})  # type: ignore[assignment]
        self.params = params
        self.style = style
        self.prefix = prefix
        self.scope: list[tuple[str, Table]] = []
        self.broad = False  # prefer unselective comparisons (aggregates want many rows)

    # ---- choices

    def pick(self, items: Any) -> Any:
        return self.draw(st.sampled_from(list(items)))

    def chance(self, percent: int) -> bool:
        return bool(self.draw(st.integers(0, 99)) < percent)

    def columns(self, kind: str | None = None) -> list[tuple[str, Col]]:
        return [
            (f"{a}.{c.name}", c)
            for a, t in self.scope
            for c in t.cols
            if kind is None or c.kind == kind
        ]

    def literal(self, kind: str, value: Any = None) -> str:
        if value is not None:
            v = value
        elif self.pool.get(kind) and self.chance(50):
            v = self.pick(self.pool[kind])
        else:
            v = self.draw(VALUES[kind])
        if self.style is not None and self.chance(30):
            self.params.append(v)
            return f"\x00{len(self.params)}\x00"
        return sql_literal(v)

    def number(self, kind: str) -> str:
        """A constant for a comparison with ``kind``: sometimes the other numeric kind
        (int64 vs 2.5, float64 vs 2), which compares numerically."""
        if kind == "int" and self.chance(20):
            return self.literal("float")
        if kind == "float" and self.chance(20):
            return self.literal("int")
        return self.literal(kind)

    # ---- expressions

    def expr(self, kind: str, depth: int = 2) -> str:
        opts = ["lit", "lit"] + ["col"] * (7 if self.columns(kind) else 0)
        if depth > 0:
            opts += {
                "int": ["arith", "arith", "neg", "abs", "length", "div", "mod", "coalesce", "case"],
                "float": ["arith", "mixed", "neg", "abs", "half", "coalesce", "case"],
                "text": ["lower", "upper", "concat", "coalesce", "case"],
                "bool": ["pred", "pred"],
            }[kind]
        return self._expr(self.pick(opts), kind, depth)

    def nonlit(self, kind: str, depth: int = 1) -> str:
        """An expression that is not a bare constant (so comparisons coerce the constant)."""
        if self.columns(kind) and (depth == 0 or self.chance(60)):
            return self._expr("col", kind, depth)
        return self._retry(lambda: self.expr(kind, max(depth, 1)), lambda e: not BARE.fullmatch(e))

    def colexpr(self, kind: str | None = None) -> str:
        """An expression that certainly refers to a column (an ORDER BY or GROUP BY key)."""
        k = kind or self.pick(KINDS)
        e = self._retry(lambda: self.nonlit(k, 1), lambda e: bool(HAS_COLUMN.search(e)), 3)
        return e if HAS_COLUMN.search(e) else str(self.pick(self.columns())[0])

    def _retry(self, make: Callable[[], str], ok: Callable[[str], bool], tries: int = 20) -> str:
        """Draw until ``ok`` (parameters of discarded attempts are dropped by ``compact``)."""
        for _ in range(tries):
            e = make()
            if ok(e):
                return e
        return e

    def _expr(self, how: str, kind: str, depth: int) -> str:
        d = depth - 1
        if how == "lit":
            return self.literal(kind)
        if how == "col":
            return str(self.pick(self.columns(kind))[0])
        if how == "arith":
            return f"({self.expr(kind, d)} {self.pick('+-*')} {self.expr(kind, d)})"
        if how == "mixed":
            a, b = self.expr("float", d), self.expr("int", d)
            if self.chance(50):
                a, b = b, a
            return f"({a} {self.pick('+-*')} {b})"
        if how == "neg":
            return f"(- {self.expr(kind, d)})"
        if how == "abs":
            return f"abs({self.expr(kind, d)})"
        if how == "length":
            return f"length({self.expr('text', d)})"
        if how == "div":
            return f"({self.expr('int', d)} / {self.pick(['1', '2', '3', '(-2)'])})"
        if how == "mod":
            return f"({self.expr('int', d)} % {self.pick(['2', '3', '(-3)'])})"
        if how == "half":
            return f"({self.expr('float', d)} {self.pick(['/ 2.0', '* 0.5'])})"
        if how == "coalesce":
            return f"coalesce({self.expr(kind, d)}, {self.expr(kind, d)})"
        if how == "case":
            out = f"CASE WHEN {self.pred(d)} THEN {self.expr(kind, d)}"
            if self.chance(70):
                out += f" ELSE {self.expr(kind, d)}"
            return out + " END"
        if how in ("lower", "upper"):
            return f"{how}({self.expr('text', d)})"
        if how == "concat":
            return f"({self.expr('text', d)} || {self.expr('text', d)})"
        assert how == "pred", how
        return self.pred(d)

    # ---- predicates

    def pred(self, depth: int = 2) -> str:
        opts = ["cmp", "cmp", "simple", "simple", "simple", "isnull", "in", "between", "like"]
        if depth > 0:
            opts += ["and", "or", "not"]
        if self.columns("bool"):
            opts.append("boolcol")
        how = self.pick(opts)
        d = max(depth - 1, 0)
        neg = "NOT " if self.chance(25) else ""
        if how == "cmp":
            kind = self.pick(KINDS)
            left = self.nonlit(kind, d)
            if kind in ("int", "float") and self.chance(25):
                right = self.nonlit(self.pick(["int", "float"]), d)
            else:
                right = self.number(kind) if self.chance(50) else self.expr(kind, d)
            if self.chance(20):
                left, right = right, left
            return f"({left} {self.pick(['=', '<>', '!=', '<', '<=', '>', '>=', '>='])} {right})"
        if how == "simple":  # column vs constant: what indexes serve
            ref, c = self.pick(self.columns())
            shape = self.pick(["cmp", "cmp", "in", "between"])
            if shape == "cmp":
                ops = (
                    ["<", "<=", ">", ">=", "<>"] if self.broad else ["=", "=", "<", "<=", ">", ">="]
                )
                return f"({ref} {self.pick(ops)} {self.number(c.kind)})"
            if shape == "in":
                listed = ", ".join(self.number(c.kind) for _ in range(self.draw(st.integers(1, 3))))
                return f"({ref} IN ({listed}))"
            return f"({ref} BETWEEN {self.number(c.kind)} AND {self.number(c.kind)})"
        if how == "isnull":
            e = self.expr(self.pick(KINDS), d) if self.chance(30) else self.pick(self.columns())[0]
            return f"({e} IS {neg}NULL)"
        if how == "in":
            kind = self.pick(KINDS)
            vals = [self.number(kind) for _ in range(self.draw(st.integers(1, 4)))]
            if self.chance(20):
                vals.append("NULL")
            return f"({self.nonlit(kind, d)} {neg}IN ({', '.join(vals)}))"
        if how == "between":
            kind = self.pick(["int", "float", "text"])
            lo, hi = self.number(kind), self.number(kind)
            return f"({self.nonlit(kind, d)} {neg}BETWEEN {lo} AND {hi})"
        if how == "like":
            pattern = self.literal("text", self.pick(LIKE_PATTERNS))
            return f"({self.nonlit('text', d)} {neg}LIKE {pattern})"
        if how in ("and", "or"):
            return f"({self.pred(d)} {how.upper()} {self.pred(d)})"
        if how == "not":
            return f"(NOT {self.pred(d)})"
        ref = self.pick(self.columns("bool"))[0]
        return f"({neg}{ref})"

    # ---- FROM, subqueries, aggregates

    def from_clause(self, max_joins: int, first: bool) -> tuple[str, list[str]]:
        """FROM text and the join equalities moved to WHERE (inner joins only)."""
        t = self.pick(self.schema)
        alias = self.prefix + "a"
        self.scope = [(alias, t)]
        text = f"{t.name}{AS_OF if first else ''} AS {alias}"
        moved: list[str] = []
        for i in range(self.draw(st.sampled_from([0, 0, 1, 1, 2][: 2 * max_joins + 1]))):
            t2 = self.pick(self.schema)
            alias = self.prefix + "bc"[i]
            how = self.pick(["JOIN", "INNER JOIN", "LEFT JOIN", "LEFT OUTER JOIN"])
            eqs = []
            for _ in range(self.draw(st.integers(1, 2))):
                prev, pt = self.pick(self.scope)
                pairs = [
                    (c1.name, c2.name)
                    for c1 in t2.cols
                    for c2 in pt.cols
                    if c1.kind == c2.kind or {c1.kind, c2.kind} == {"int", "float"}
                ]
                mine, theirs = self.pick(pairs)
                eq = f"{alias}.{mine} = {prev}.{theirs}"
                eqs.append(eq if self.chance(50) else f"{prev}.{theirs} = {alias}.{mine}")
            self.scope.append((alias, t2))
            on = list(eqs)
            if self.chance(35):
                on.append(self.pred(1))
            if "LEFT" not in how and self.chance(25):
                moved.extend(eqs)
                on = [x for x in on if x not in eqs] or ["TRUE"]
            on = self.draw(st.permutations(on))
            text += f" {how} {t2.name} AS {alias} ON {' AND '.join(on)}"
        return text, moved

    def semi(self, n: int) -> str:
        """``expr IN (SELECT ...)``: a plain, DISTINCT or grouped one-column subquery."""
        sub = Gen(self.draw, self.schema, self.pool, self.params, self.style, f"s{n}")
        from_sql, moved = sub.from_clause(1, first=False)
        ref, c = sub.pick(sub.columns())
        shape = self.pick(["plain", "plain", "distinct", "grouped"])
        if shape == "grouped":
            item = f"{self.pick(['MIN', 'MAX'])}({ref})"
            tail = f" GROUP BY {sub.colexpr()}"
        else:
            item = ("DISTINCT " if shape == "distinct" else "") + ref
            tail = ""
        wheres = moved + ([sub.pred(1)] if self.chance(40) else [])
        where = f" WHERE {' AND '.join(wheres)}" if wheres else ""
        kind = c.kind if c.kind != "int" or self.chance(80) else "float"
        text = f"{self.nonlit(kind, 1)} IN (SELECT {item} FROM {from_sql}{where}{tail})"
        return f"({text})" if self.chance(50) else text  # a parenthesized one is top-level too

    def index_conds(self) -> list[str]:
        """Conjuncts an index (or the primary key) of a table in scope can serve."""
        alias, t = self.pick(self.scope)
        cols = {c.name: c for c in t.cols}
        keys = [(t.pk, "pk")] + [(cs, kind) for _, cs, kind in t.indexes] * 3
        names, kind = self.pick(keys)
        rows = self.samples.get(t.name)
        row = dict(zip(cols, self.pick(rows))) if rows and self.chance(70) else {}
        if kind == "btree" and self.chance(50):
            c = cols[names[0]]
            lo, hi = self.literal(c.kind), self.literal(c.kind)
            return [
                f"({alias}.{c.name} {self.pick(['>', '>='])} {lo})",
                f"({alias}.{c.name} {self.pick(['<', '<='])} {hi})",
            ][: self.pick([1, 2])]
        out = []
        for n in names:
            ref = f"{alias}.{n}"
            v = row.get(n)
            if (n in row and v is None) or (cols[n].nullable and self.chance(15)):
                out.append(f"({ref} IS NULL)")
            else:
                out.append(f"({ref} = {self.literal(cols[n].kind, v)})")
        return out

    def group_key(self) -> str:
        ref, c = self.pick(self.columns())
        if self.chance(30):
            return self.colexpr()
        if c.kind == "bool" or self.chance(20):
            return str(ref)
        return {
            "int": f"({ref} % 3)",
            "float": f"({ref} > 1.0)",
            "text": f"length({ref})",
        }[c.kind]

    def agg_arg(self, kinds: tuple[str, ...]) -> tuple[str, str]:
        """(an aggregate's argument, its kind): mostly a plain column, else an expression."""
        cols = [(ref, c.kind) for ref, c in self.columns() if c.kind in kinds]
        if cols and self.chance(70):
            ref, kind = self.pick(cols)
            return str(ref), str(kind)
        kind = self.pick(kinds)
        return self.expr(kind, 1), kind

    def agg_call(self) -> tuple[str, str]:
        """(SQL of an aggregate call, the kind of its result)."""
        how = self.pick(["count*", "count", "countd", "sum", "avg", "min", "max"])
        if how == "count*":
            return "COUNT(*)", "int"
        if how in ("count", "countd"):
            e, _ = self.agg_arg(KINDS)
            return (f"COUNT(DISTINCT {e})" if how == "countd" else f"COUNT({e})"), "int"
        if how in ("sum", "avg"):
            e, kind = self.agg_arg(("int", "float"))
            return f"{how.upper()}({e})", ("float" if how == "avg" else kind)
        e, kind = self.agg_arg(KINDS)
        return f"{how.upper()}({e})", kind

    # ---- ORDER BY / LIMIT / OFFSET

    def order_limit(
        self, ncols: int, hidden: Callable[[], str] | None, offsets: bool = True
    ) -> tuple[str, bool]:
        """(tail text, whether the result order is determined)."""

        def key(k: str) -> str:
            return f"{k} {self.pick(['ASC', 'DESC'])} NULLS {self.pick(['FIRST', 'LAST'])}"

        def limit() -> str:
            tail = f" LIMIT {self.literal('int', self.pick([3, 1, 2, 5, 0]))}"
            if offsets and self.chance(40):
                tail += f" OFFSET {self.literal('int', self.pick([1, 2, 0, 4]))}"
            return tail

        modes = ["none", "none", "order", "order_limit", "order_limit", "limit", "offset"]
        mode = self.pick(modes if offsets else modes[:-1])
        if mode == "none":
            return "", False
        if mode == "limit":  # voicehub orders a bare LIMIT by every column, asc, NULLs last
            implicit = ", ".join(f"{i + 1} ASC NULLS LAST" for i in range(ncols))
            return f"{LITE_ON} ORDER BY {implicit}{LITE_OFF}{limit()}", True
        keys = [key(p) for p in self.draw(st.permutations([str(i + 1) for i in range(ncols)]))]
        if hidden is not None and self.chance(40):
            keys.insert(0, key(hidden()))
        order = " ORDER BY " + ", ".join(keys)
        if mode == "order":
            return order, True
        if mode == "order_limit":
            return order + limit(), True
        offset = f" OFFSET {self.literal('int', self.pick([1, 2, 0, 4]))}"
        return f"{order}{LITE_ON} LIMIT -1{LITE_OFF}{offset}", True  # SQLite: no OFFSET alone


def compact(q: Sql) -> Sql:
    """Renumber the parameters the text uses as 1..n, dropping those of discarded drafts."""
    used = sorted({int(n) for n in PARAM.findall(q.text)})
    new = {old: i + 1 for i, old in enumerate(used)}
    q.text = PARAM.sub(lambda m: f"\x00{new[int(m[1])]}\x00", q.text)
    q.params = [q.params[old - 1] for old in used]
    return q


def _where(conds: list[str]) -> str:
    return f" WHERE {' AND '.join(conds)}" if conds else ""


@st.composite
def queries(draw: Any, schema: list[Table], pool: dict[str, list[Any]]) -> Sql:
    style = draw(st.sampled_from([None, None, "pos", "named"]))
    params: list[Any] = []
    g = Gen(draw, schema, pool, params, style, "")
    shape = draw(st.sampled_from(["plain", "plain", "plain", "agg", "agg", "union"]))
    if shape == "union":
        kinds = [g.pick(KINDS) for _ in range(draw(st.integers(1, 3)))]
        text = ""
        for n in range(draw(st.integers(2, 3))):
            b = Gen(draw, schema, pool, params, style, "")
            from_sql, moved = b.from_clause(1, first=n == 0)
            conds = moved + ([b.pred(1)] if b.chance(50) else [])
            exprs = ", ".join(b.expr(k, 1) for k in kinds)
            dist = "DISTINCT " if b.chance(15) else ""
            if n:
                text += f" {g.pick(['UNION', 'UNION ALL'])} "
            text += f"SELECT {dist}{exprs} FROM {from_sql}{_where(conds)}"
        tail, ordered = g.order_limit(len(kinds), None)
        return compact(Sql(text + tail, params, style, ordered, len(kinds), "union"))
    from_sql, moved = g.from_clause(2 if shape == "plain" else 1, first=True)
    # few conditions: every one filters, and queries returning nothing test little
    counts = [0, 1, 1, 1, 2, 3] if shape == "plain" else [0, 0, 0, 1, 1]
    g.broad = shape == "agg"
    conds = moved + [g.pred(g.pick([1, 1, 2])) for _ in range(g.pick(counts))]
    if shape == "plain" and g.chance(45):
        conds += g.index_conds()
    conds += [
        g.semi(n)
        for n in range(g.pick([0, 0, 0, 0, 1, 1, 2] if shape == "plain" else [0, 0, 0, 0, 0, 1]))
    ]
    conds = draw(st.permutations(conds))
    where = _where(conds)
    if shape == "plain":
        if g.chance(8):
            items = ["*"]
            ncols = sum(len(t.cols) for _, t in g.scope)
        else:
            items = [g.expr(g.pick(KINDS), 2) for _ in range(draw(st.integers(1, 4)))]
            ncols = len(items)
        distinct = g.chance(15)
        tail, ordered = g.order_limit(ncols, None if distinct else g.colexpr)
        text = f"SELECT {'DISTINCT ' if distinct else ''}{', '.join(items)} FROM {from_sql}"
        return compact(Sql(text + where + tail, params, style, ordered, ncols))
    # aggregate: GROUP BY keys (mostly few distinct values: groups of several rows), ...
    group = [g.group_key() for _ in range(g.pick([0, 1, 1, 2]))]
    aggs = [g.agg_call() for _ in range(draw(st.integers(1, 3)))]
    shown = [k for k in group if g.chance(70)]
    items = list(draw(st.permutations(shown + [a for a, _ in aggs])))
    spelled = []  # GROUP BY items: the expression, or the select item's position or alias
    for k in group:
        if k in items and g.chance(35):
            pos = items.index(k)
            if g.chance(50):
                spelled.append(str(pos + 1))
                continue
            if not items[pos].endswith(f" AS g{pos}"):
                items[pos] = f"{k} AS g{pos}"
            spelled.append(f"g{pos}")
        else:
            spelled.append(k)
    text = f"SELECT {', '.join(items)} FROM {from_sql}{where}"
    if group:
        text += f" GROUP BY {', '.join(spelled)}"
    g.broad = False
    if g.chance(25):
        having = []
        for _ in range(g.pick([1, 1, 2])):
            sql, kind = g.agg_call() if not group or g.chance(70) else (g.pick(group), None)
            if kind is None:
                having.append(f"({sql} IS NOT NULL)")
            else:
                op = g.pick(["<>", "<", "<=", ">", ">=", ">=", "="])
                having.append(f"({sql} {op} {g.literal(kind)})")
        text += " HAVING " + f" {g.pick(['AND', 'OR'])} ".join(having)
    # one row per group: an OFFSET (or HAVING) on a global aggregate mostly leaves nothing
    tail, ordered = g.order_limit(len(items), lambda: g.agg_call()[0], offsets=bool(group))
    return compact(Sql(text + tail, params, style, ordered, len(items), "agg"))


# =========================================================================== comparing results


def _norm(v: Any) -> Any:
    return int(v) if isinstance(v, bool) else v


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b) and type(a) is type(b)


def _rows_close(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y)) for x, y in zip(a, b)
    )


def _sortable(row: tuple) -> tuple:
    return tuple(
        (0, 0) if v is None else (1, float(v)) if isinstance(v, int | float) else (2, str(v))
        for v in row
    )


def same_rows(got: list[tuple], want: list[tuple], ordered: bool) -> bool:
    if ordered:
        return _rows_close(got, want)
    if Counter(got) == Counter(want):
        return True
    return _rows_close(sorted(got, key=_sortable), sorted(want, key=_sortable))


def plan_text(node: ir.Node, depth: int = 0) -> str:
    fields = {
        k: v
        for k, v in vars(node).items()
        if k not in ("input", "left", "right", "inputs", "columns")
    }
    out = "  " * depth + f"{type(node).__name__} {fields}\n"
    return out + "".join(plan_text(c, depth + 1) for c in node.children())


def check_types(res: QueryResult) -> None:
    """Every non-NULL value has the Python type of its column's declared type."""
    for i, t in enumerate(res.types):
        want = PY_TYPE.get(t or "")
        if want is None:
            continue
        for r in res.rows:
            v = r[i]
            assert v is None or type(v) is want, (
                f"column {i} ({res.columns[i]}) is declared {t} but holds {v!r}"
            )


def check_query(
    db: Database, schema: list[Table], lite: sqlite3.Connection, q: Sql, as_of: int | None
) -> None:
    vh_sql, vh_params, lite_sql, lite_params = render(q, as_of)
    note(f"voicehub: {vh_sql}  params={vh_params!r}")
    note(f"sqlite:   {lite_sql}")
    tables = {t.name: t.tdef() for t in schema}
    try:
        res = run_query(db, vh_sql, vh_params)
    except SqlError as e:
        raise AssertionError(f"voicehub rejected generated SQL: {e}\n{vh_sql}") from e
    cur = lite.execute(lite_sql, lite_params)
    want = [tuple(_norm(v) for v in r) for r in cur.fetchall()]
    assert len(res.columns) == len(cur.description) == q.ncols, (res.columns, q.ncols)
    assert all(type(r) is tuple for r in res.rows)
    check_types(res)
    got = [tuple(_norm(v) for v in r) for r in res.rows]
    if not same_rows(got, want, q.ordered):
        plan = plan_text(lower_sql(vh_sql, vh_params, tables.get).root)
        raise AssertionError(
            f"results differ (ordered={q.ordered})\n{vh_sql}\nparams={vh_params!r}\n"
            f"voicehub ({len(got)}): {got}\nsqlite   ({len(want)}): {want}\nplan:\n{plan}"
        )


def value_pools(schema: list[Table], hist: History) -> dict[str, Any]:
    """The values and rows a history holds, for queries whose constants hit real data."""
    pool: dict[str, set[Any]] = {k: set() for k in KINDS}
    for state in hist.states:
        for t in schema:
            for row in state[t.name].values():
                for c, v in zip(t.cols, row):
                    if v is not None:
                        pool[c.kind].add(v)
    pools: dict[str, Any] = {k: sorted(v) for k, v in pool.items()}
    pools["__rows__"] = {
        t.name: sorted({r for st_ in hist.states for r in st_[t.name].values()}, key=repr)
        for t in schema
    }
    return pools


def run_differential(data: Any) -> None:
    schema = data.draw(schemas(), label="schema")
    hist = data.draw(histories(schema), label="history")
    note(f"states: {hist.states}")
    pools = value_pools(schema, hist)
    with populated(schema, hist) as (db, offsets):
        last = len(offsets) - 1
        lites: dict[int, sqlite3.Connection] = {}
        for _ in range(data.draw(st.integers(1, 4), label="queries")):
            q = data.draw(queries(schema, pools), label="query")
            at = (
                data.draw(st.integers(0, last), label="state") if data.draw(st.booleans()) else last
            )
            as_of = offsets[at] if at != last or data.draw(st.booleans()) else None
            if at not in lites:
                lites[at] = sqlite_db(schema, hist.states[at])
            check_query(db, schema, lites[at], q, as_of)
        for conn in lites.values():
            conn.close()


DIFF_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=200, **DIFF_SETTINGS)  # type: ignore[arg-type]
@given(st.data())
def test_differential_against_sqlite(data: Any) -> None:
    run_differential(data)


@pytest.mark.slow
@settings(max_examples=5000, **DIFF_SETTINGS)  # type: ignore[arg-type]
@given(st.data())
def test_differential_against_sqlite_many(data: Any) -> None:
    run_differential(data)


# =========================================================================== fixed cases

ITEM = TableDef(
    name="item",
    columns=(
        col("id", ColumnType.INT64),
        col("cat", ColumnType.TEXT, True),
        col("score", ColumnType.INT64, True),
        col("price", ColumnType.FLOAT64),
        col("flag", ColumnType.BOOL, True),
    ),
    primary_key=("id",),
    indexes=(
        IndexDef("by_cat", ("cat",), "hash"),
        IndexDef("by_score", ("score",), "btree"),
        IndexDef("by_flag_score", ("flag", "score"), "btree"),
    ),
)
SEAT = TableDef(
    name="seat",
    columns=(
        col("room", ColumnType.TEXT),
        col("seat", ColumnType.INT64),
        col("holder", ColumnType.TEXT, True),
    ),
    primary_key=("room", "seat"),
    indexes=(IndexDef("by_holder", ("holder",), "hash"),),
)
DOC = TableDef(
    name="doc",
    columns=(col("id", ColumnType.INT64), col("body", ColumnType.JSON, True)),
    primary_key=("id",),
)


def item_row(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "cat": [None, "x", "y", "z"][i % 4],
        "score": None if i % 7 == 0 else i % 10,
        "price": i * 0.5,
        "flag": None if i % 5 == 0 else i % 3 == 0,
    }


ITEMS = [item_row(i) for i in range(1, 41)]
SEATS = [
    {"room": r, "seat": s, "holder": [None, "ann", "bob"][s % 3]} for r in "pq" for s in range(4)
]


@pytest.fixture
def shop() -> Iterator[Database]:
    db = open_db([ITEM, SEAT, DOC])
    write(db, *[["ins", "item", r] for r in ITEMS], *[["ins", "seat", s] for s in SEATS])
    write(
        db,
        ["ins", "doc", {"id": 1, "body": {"b": 1, "a": [1, 2]}}],
        ["ins", "doc", {"id": 2, "body": {"a": [1, 2], "b": 1}}],
        ["ins", "doc", {"id": 3, "body": [3]}],
        ["ins", "doc", {"id": 4, "body": None}],
    )
    yield db
    db.close()


Call = tuple[str, str, tuple, dict]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Records every get/find/range/rows call made on snapshot tables."""
    calls: list[Call] = []
    for name in ("get", "find", "range", "rows"):
        orig = getattr(SnapshotTable, name)

        def wrapper(
            self: SnapshotTable, *a: Any, _orig: Any = orig, _n: str = name, **kw: Any
        ) -> Any:
            calls.append((self.name, _n, a, kw))
            return _orig(self, *a, **kw)

        monkeypatch.setattr(SnapshotTable, name, wrapper)
    return calls


def ids(res: QueryResult) -> list[int]:
    return sorted(r[0] for r in res.rows)


def where(pred: Callable[[dict], bool]) -> list[int]:
    return sorted(r["id"] for r in ITEMS if pred(r))


def _ge(a: Any, b: Any) -> bool:
    return a is not None and a >= b


# ---------------------------------------------------------------- index use


@pytest.mark.parametrize(
    "sql, params, calls, expected",
    [
        ("SELECT * FROM item WHERE id = 7", None, [("get", (7,), {})], [7]),
        ("SELECT * FROM item WHERE 7 = id AND price > 1.0", None, [("get", (7,), {})], [7]),
        ("SELECT * FROM item WHERE id = $1", [9], [("get", (9,), {})], [9]),
        ("SELECT * FROM item WHERE id = :k AND cat = 'y'", {"k": 9}, [("get", (9,), {})], []),
        ("SELECT * FROM item WHERE id = 99", None, [("get", (99,), {})], []),
        (
            "SELECT * FROM item WHERE id IN (3, 5, 99, 3)",
            None,
            [("get", (3,), {}), ("get", (5,), {}), ("get", (99,), {})],
            [3, 5],
        ),
        ("SELECT * FROM item WHERE id = NULL", None, [], []),
        (
            "SELECT * FROM item WHERE cat = 'x'",
            None,
            [("find", ("by_cat", "x"), {})],
            where(lambda r: r["cat"] == "x"),
        ),
        (
            "SELECT * FROM item WHERE cat IS NULL AND price < 10",
            None,
            [("find", ("by_cat", None), {})],
            where(lambda r: r["cat"] is None and r["price"] < 10),
        ),
        (
            "SELECT * FROM item WHERE cat IN ('x', 'z', NULL)",
            None,
            [("find", ("by_cat", "x"), {}), ("find", ("by_cat", "z"), {})],
            where(lambda r: r["cat"] in ("x", "z")),
        ),
        (
            "SELECT * FROM item WHERE score = -1 OR score = 2",
            None,
            [("rows", (), {})],
            where(lambda r: r["score"] == 2),
        ),
        (
            "SELECT * FROM item WHERE score = (-1)",
            None,
            [("find", ("by_score", -1), {})],
            [],
        ),
        (
            "SELECT * FROM item WHERE score > 3 AND score <= 7",
            None,
            [("range", ("by_score", 3, 7), {"lo_inclusive": False, "hi_inclusive": True})],
            where(lambda r: r["score"] is not None and 3 < r["score"] <= 7),
        ),
        (
            "SELECT * FROM item WHERE score BETWEEN $1 AND $2",
            [2, 4],
            [("range", ("by_score", 2, 4), {"lo_inclusive": True, "hi_inclusive": True})],
            where(lambda r: r["score"] is not None and 2 <= r["score"] <= 4),
        ),
        (
            "SELECT * FROM item WHERE 2 > score",
            None,
            [("range", ("by_score", None, 2), {"lo_inclusive": True, "hi_inclusive": False})],
            where(lambda r: r["score"] is not None and r["score"] < 2),
        ),
        (
            "SELECT * FROM item WHERE score > 1 AND score >= 4 AND score > 4 AND score < 9",
            None,
            [("range", ("by_score", 4, 9), {"lo_inclusive": False, "hi_inclusive": False})],
            where(lambda r: r["score"] is not None and 4 < r["score"] < 9),
        ),
        (  # a prefix equality on a composite B-tree index beats a range on another
            "SELECT * FROM item WHERE flag = TRUE AND score >= 5",
            None,
            [("range", ("by_flag_score", (True,), (True, HIGH)), {})],
            where(lambda r: r["flag"] is True and _ge(r["score"], 5)),
        ),
        (
            "SELECT * FROM item WHERE flag = TRUE AND score = 6",
            None,
            [("find", ("by_flag_score", True, 6), {})],
            where(lambda r: r["flag"] is True and r["score"] == 6),
        ),
        (
            "SELECT * FROM item WHERE flag IS NULL AND score IS NULL",
            None,
            [("find", ("by_flag_score", None, None), {})],
            where(lambda r: r["flag"] is None and r["score"] is None),
        ),
        (
            "SELECT * FROM item WHERE price > 10.0",
            None,
            [("rows", (), {})],
            where(lambda r: r["price"] > 10),
        ),
        (
            "SELECT * FROM item WHERE cat = 'x' OR id = 3",
            None,
            [("rows", (), {})],
            where(lambda r: r["cat"] == "x" or r["id"] == 3),
        ),
        (
            "SELECT * FROM item WHERE NOT (id <> 3)",
            None,
            [("rows", (), {})],
            [3],
        ),
    ],
)
def test_scan_uses_indexes(
    shop: Database, spy: list[Call], sql: str, params: Any, calls: list, expected: list[int]
) -> None:
    res = run_query(shop, sql, params)
    assert [(n, a, kw) for t, n, a, kw in spy] == calls
    assert all(t == "item" for t, *_ in spy)
    assert ids(res) == expected
    for r in res.rows:  # whole rows, as stored
        assert r == tuple(item_row(r[0]).values())


def test_composite_btree_prefix_ranges(spy: list[Call]) -> None:
    """Range bounds on the first column of a two-column B-tree, at every boundary."""
    t = TableDef(
        name="grid",
        columns=(
            col("id", ColumnType.INT64),
            col("x", ColumnType.INT64, True),
            col("y", ColumnType.TEXT),
        ),
        primary_key=("id",),
        indexes=(IndexDef("by_xy", ("x", "y"), "btree"),),
    )
    db = open_db([t])
    rows = [(i, None if i % 6 == 0 else i % 5, "pq"[i % 2]) for i in range(30)]
    write(db, *[["ins", "grid", dict(zip(("id", "x", "y"), r))] for r in rows])
    ops = {"<": int.__lt__, "<=": int.__le__, ">": int.__gt__, ">=": int.__ge__}
    for lo_op in (">", ">="):
        for hi_op in ("<", "<="):
            for lo in range(-1, 6):
                for hi in range(-1, 6):
                    spy.clear()
                    res = run_query(
                        db, f"SELECT id FROM grid WHERE x {lo_op} {lo} AND x {hi_op} {hi}"
                    )
                    want = [
                        r[0]
                        for r in rows
                        if r[1] is not None and ops[lo_op](r[1], lo) and ops[hi_op](r[1], hi)
                    ]
                    assert ids(res) == sorted(want), (lo_op, lo, hi_op, hi)
                    # the tightest prefix bounds: (v,) sorts before, (v, HIGH) after all (v, *)
                    lo_key = (lo,) if lo_op == ">=" else (lo, HIGH)
                    hi_key = (hi, HIGH) if hi_op == "<=" else (hi,)
                    assert spy == [("grid", "range", ("by_xy", lo_key, hi_key), {})]
    spy.clear()
    res = run_query(db, "SELECT id FROM grid WHERE x = 3")
    assert [(n, a) for _, n, a, _ in spy] == [("range", ("by_xy", (3,), (3, HIGH)))]
    assert ids(res) == [r[0] for r in rows if r[1] == 3]
    spy.clear()
    res = run_query(db, "SELECT id FROM grid WHERE x = 3 AND y = 'q'")
    assert [(n, a) for _, n, a, _ in spy] == [("find", ("by_xy", 3, "q"))]
    assert ids(res) == [r[0] for r in rows if r[1] == 3 and r[2] == "q"]
    db.close()


def test_composite_primary_key_and_joins_use_indexes(shop: Database, spy: list[Call]) -> None:
    res = run_query(shop, "SELECT holder FROM seat WHERE seat = 2 AND room = 'q'")
    assert spy == [("seat", "get", ("q", 2), {})]
    assert res.rows == [("bob",)]
    spy.clear()
    res = run_query(shop, "SELECT * FROM seat WHERE room = 'q'")
    assert [n for _, n, *_ in spy] == ["rows"]
    assert sorted(r[1] for r in res.rows) == [0, 1, 2, 3]
    spy.clear()
    res = run_query(
        shop,
        "SELECT i.id, s.room, s.seat FROM item AS i JOIN seat AS s ON s.seat = i.score"
        " WHERE i.id = 11 AND s.holder = 'ann' ORDER BY 2",
    )
    assert sorted((t, n) for t, n, *_ in spy) == [("item", "get"), ("seat", "find")]
    assert res.rows == [(11, "p", 1), (11, "q", 1)]


def test_index_reads_at_an_old_offset(shop: Database, spy: list[Call]) -> None:
    """Index paths over MVCC history: rows moved in and out of a key/range since then."""
    before = shop.offset
    old = run_query(shop, "SELECT * FROM item ORDER BY id").rows
    write(
        shop,
        ["upd", "item", {**item_row(3), "score": 100, "cat": "x"}],
        ["upd", "item", {**item_row(4), "score": 5, "cat": None}],
        ["del", "item", [5]],
        ["ins", "item", {**item_row(50), "id": 50, "score": 5}],
    )
    cases: list[tuple[str, Callable[[tuple], bool]]] = [
        ("score = 5", lambda r: r[2] == 5),
        ("score >= 4 AND score < 6", lambda r: r[2] is not None and 4 <= r[2] < 6),
        ("cat = 'x'", lambda r: r[1] == "x"),
        ("cat IS NULL", lambda r: r[1] is None),
        ("id = 5", lambda r: r[0] == 5),
        ("flag = FALSE AND score <= 5", lambda r: r[4] is False and r[2] is not None and r[2] <= 5),
    ]
    for sql, pred in cases:
        spy.clear()
        res = run_query(
            shop, f"SELECT * FROM item FOR SYSTEM_TIME AS OF {before} WHERE {sql} ORDER BY id"
        )
        assert res.offset == before
        assert res.rows == [r for r in old if pred(r)], sql
        assert "rows" not in [n for _, n, *_ in spy], sql
        now = run_query(shop, f"SELECT * FROM item WHERE {sql} ORDER BY id").rows
        latest = run_query(shop, "SELECT * FROM item ORDER BY id").rows
        assert now == [r for r in latest if pred(r)], sql


# ---------------------------------------------------------------- node semantics


def test_global_aggregate_over_no_rows(shop: Database) -> None:
    res = run_query(
        shop,
        "SELECT COUNT(*), COUNT(score), COUNT(DISTINCT cat), SUM(score), SUM(price), AVG(score),"
        " MIN(cat), MAX(flag) FROM item WHERE id > 1000",
    )
    assert res.rows == [(0, 0, 0, None, None, None, None, None)]
    assert res.types == ["int64", "int64", "int64", "int64", "float64", "float64", "text", "bool"]
    res = run_query(shop, "SELECT cat, COUNT(*) FROM item WHERE id > 1000 GROUP BY cat")
    assert res.rows == []
    res = run_query(shop, "SELECT COUNT(*) FROM item WHERE id > 1000 HAVING COUNT(*) > 0")
    assert res.rows == []


def test_aggregate_values(shop: Database) -> None:
    res = run_query(
        shop,
        "SELECT cat, COUNT(*), COUNT(score), COUNT(DISTINCT score), SUM(score), AVG(score),"
        " MIN(score), MAX(price), SUM(price) FROM item GROUP BY cat ORDER BY cat NULLS FIRST",
    )
    out = []
    for cat in (None, "x", "y", "z"):
        rs = [r for r in ITEMS if r["cat"] == cat]
        sc = [r["score"] for r in rs if r["score"] is not None]
        out.append(
            (
                cat,
                len(rs),
                len(sc),
                len(set(sc)),
                sum(sc),
                sum(sc) / len(sc),
                min(sc),
                max(r["price"] for r in rs),
                sum(r["price"] for r in rs),
            )
        )
    assert res.rows == out
    assert all(type(r[4]) is int and type(r[5]) is float for r in res.rows)


def test_left_join_residual_and_null_keys() -> None:
    a = TableDef("l", (col("id", ColumnType.INT64), col("k", ColumnType.INT64, True)), ("id",))
    b = TableDef(
        "r",
        (col("id", ColumnType.INT64), col("k", ColumnType.INT64, True), col("v", ColumnType.INT64)),
        ("id",),
    )
    db = open_db([a, b])
    write(
        db,
        *[["ins", "l", {"id": i, "k": k}] for i, k in [(1, 1), (2, 2), (3, None), (4, 4)]],
        *[
            ["ins", "r", {"id": i, "k": k, "v": v}]
            for i, k, v in [(1, 1, 10), (2, 1, 20), (3, 2, 5), (4, None, 1)]
        ],
    )
    res = run_query(
        db, "SELECT l.id, r.id FROM l LEFT JOIN r ON r.k = l.k AND r.v > l.id * 6 ORDER BY 1, 2"
    )
    # l1 matches r1 (10 > 6) and r2 (20 > 6); l2 matches r3 on k but 5 > 12 fails -> padded;
    # l3 has a NULL key and r4's NULL key matches nothing; l4 has no partner
    assert res.rows == [(1, 1), (1, 2), (2, None), (3, None), (4, None)]
    res = run_query(db, "SELECT l.id, r.id FROM l JOIN r ON r.k = l.k ORDER BY 1, 2")
    assert res.rows == [(1, 1), (1, 2), (2, 3)]
    # semi-join: left multiplicity kept, duplicates on the right do not multiply, NULLs never match
    res = run_query(db, "SELECT l.id FROM l WHERE l.k IN (SELECT r.k FROM r) ORDER BY 1")
    assert res.rows == [(1,), (2,)]
    res = run_query(
        db,
        "SELECT l.id, r.id FROM l JOIN r ON r.k = l.k WHERE r.k IN (SELECT k FROM r) ORDER BY 1, 2",
    )
    assert res.rows == [(1, 1), (1, 2), (2, 3)]
    db.close()


def canonical(rows: list[tuple]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_json_values_in_distinct_grouping_ordering_union(shop: Database) -> None:
    """Equal json objects (keys in another order) are one value for DISTINCT/GROUP BY/UNION."""
    res = run_query(shop, "SELECT DISTINCT body FROM doc")
    assert canonical(res.rows) == canonical([({"a": [1, 2], "b": 1},), ([3],), (None,)])
    res = run_query(shop, "SELECT body, COUNT(*) FROM doc GROUP BY body ORDER BY 2 DESC, 1 LIMIT 1")
    assert res.rows == [({"b": 1, "a": [1, 2]}, 2)]
    res = run_query(shop, "SELECT body FROM doc UNION SELECT body FROM doc WHERE id < 3")
    assert canonical(res.rows) == canonical([({"a": [1, 2], "b": 1},), ([3],), (None,)])
    res = run_query(shop, "SELECT body FROM doc UNION ALL SELECT body FROM doc WHERE id < 3")
    assert len(res.rows) == 6
    res = run_query(shop, "SELECT id FROM doc ORDER BY body NULLS FIRST, id")
    assert res.rows == [(4,), (3,), (1,), (2,)]  # NULL; then by canonical text: [3] < {"a"...
    res = run_query(shop, "SELECT COUNT(DISTINCT body), COUNT(body) FROM doc")
    assert res.rows == [(2, 3)]
    # json parameters (unhashable dicts) in equality and IN lists
    obj = {"a": [1, 2], "b": 1}
    res = run_query(shop, "SELECT id FROM doc WHERE body IN ($1, $2) ORDER BY id", [obj, [3]])
    assert res.rows == [(1,), (2,), (3,)]
    res = run_query(shop, "SELECT id FROM doc WHERE body = $1 AND id > 1", [obj])
    assert res.rows == [(2,)]


def test_execute_plan_directly() -> None:
    """The IR, built by hand: Union (distinct), Distinct, TopK offset without limit, Sort."""
    db = open_db([SEAT])
    write(db, *[["ins", "seat", s] for s in SEATS])
    scan = ir.Scan(
        table="seat",
        alias="s",
        columns=[ir.OutCol(c.name, c.type) for c in SEAT.columns],
    )
    holder = ir.Project(
        scan, [ir.ColRef(2, ColumnType.TEXT)], columns=[ir.OutCol("holder", ColumnType.TEXT)]
    )
    with db.snapshot() as snap:
        assert sorted(execute_plan(holder, snap), key=repr) == sorted(
            [(s["holder"],) for s in SEATS], key=repr
        )
        u = ir.Union([holder, holder], all=False, columns=holder.columns)
        assert sorted(execute_plan(u, snap), key=repr) == [("ann",), ("bob",), (None,)]
        d = ir.Distinct(holder, columns=holder.columns)
        assert len(execute_plan(d, snap)) == 3
        key = [ir.SortKey(ir.ColRef(0, ColumnType.TEXT), desc=True, nulls_first=False)]
        top = ir.TopK(u, key, None, 1, columns=holder.columns)
        assert execute_plan(top, snap) == [("ann",), (None,)]
        srt = ir.Sort(holder, key, columns=holder.columns)
        assert execute_plan(srt, snap) == [("bob",)] * 2 + [("ann",)] * 2 + [(None,)] * 4
        rows = execute_plan(scan, snap)
        assert all(type(r) is tuple for r in rows) and len(rows) == len(SEATS)
    db.close()


def test_snapshot_is_always_closed(shop: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    run_query(shop, "SELECT * FROM item")
    run_query(shop, f"SELECT * FROM item FOR SYSTEM_TIME AS OF {shop.offset - 1}")
    assert not shop.history.pins

    def boom(root: ir.Node, snap: Any) -> list[tuple]:
        raise RuntimeError("boom")

    import core.sql.query as query_module

    monkeypatch.setattr(query_module, "execute_plan", boom)
    with pytest.raises(RuntimeError):
        run_query(shop, "SELECT * FROM item")
    assert not shop.history.pins


def test_result_description(shop: Database) -> None:
    res = run_query(
        shop, "SELECT id AS ident, cat, price * 2, flag, score / 2 AS half FROM item WHERE id = 6"
    )
    assert res.columns == ["ident", "cat", "price * 2", "flag", "half"]
    assert res.types == ["int64", "text", "float64", "bool", "int64"]
    assert res.rows == [(6, "y", 6.0, True, 3)]
    assert res.offset == shop.offset
    res = run_query(shop, "SELECT * FROM seat WHERE room = 'p' AND seat = 0")
    assert res.columns == ["room", "seat", "holder"] and res.rows == [("p", 0, None)]


def test_system_tables_are_hidden(shop: Database) -> None:
    assert "__modules__" in shop.stores and "__schedule__" in shop.stores
    for name in ("__modules__", "__schedule__"):
        with pytest.raises(SqlError, match=f"no table named '{name}' at line 1, column 15"):
            run_query(shop, f"SELECT * FROM {name}")


# ---------------------------------------------------------------- errors

AB = [
    TableDef(
        "a",
        (
            col("id", ColumnType.INT64),
            col("x", ColumnType.INT64, True),
            col("s", ColumnType.TEXT, True),
            col("f", ColumnType.FLOAT64, True),
            col("b", ColumnType.BOOL, True),
        ),
        ("id",),
    ),
    TableDef(
        "b",
        (
            col("id", ColumnType.INT64),
            col("aid", ColumnType.INT64, True),
            col("y", ColumnType.INT64, True),
        ),
        ("id",),
    ),
]


@pytest.fixture
def ab() -> Iterator[Database]:
    db = open_db(AB)
    write(db, ["ins", "a", {"id": 1, "x": 1, "s": "q", "f": 0.5, "b": True}])
    write(db, ["ins", "b", {"id": 1, "aid": 1, "y": 2}])
    yield db
    db.close()


def error_of(db: Database, sql: str, params: Any = None) -> SqlError:
    with pytest.raises(SqlError) as info:
        run_query(db, sql, params)
    return info.value


def column_of(message: str) -> int:
    m = re.search(r"at line 1, column (\d+)", message)
    assert m is not None, f"no position in {message!r}"
    return int(m[1])


def assert_points_into(sql: str, message: str, span: str) -> None:
    """The reported column lies inside ``span`` (its first occurrence in ``sql``)."""
    start = sql.index(span) + 1
    assert start <= column_of(message) < start + len(span), (message, span)


@pytest.mark.parametrize(
    "sql, what, span",
    [
        (
            "SELECT id, row_number() OVER (ORDER BY x) FROM a",
            "window functions",
            "row_number() OVER (ORDER BY x)",
        ),
        (
            "WITH q AS (SELECT id FROM a) SELECT id FROM q",
            "WITH (common table expressions)",
            "WITH q AS (SELECT id FROM a)",
        ),
        (
            "SELECT a.id FROM a RIGHT JOIN b ON a.id = b.aid",
            "RIGHT JOIN",
            "RIGHT JOIN b ON a.id = b.aid",
        ),
        (
            "SELECT a.id FROM a FULL JOIN b ON a.id = b.aid",
            "FULL JOIN",
            "FULL JOIN b ON a.id = b.aid",
        ),
        ("SELECT a.id FROM a, b", "cross joins", ", b"),
        ("SELECT a.id FROM a CROSS JOIN b", "cross joins", "CROSS JOIN b"),
        ("SELECT a.id FROM a JOIN b ON a.x < b.y", "cross joins", "JOIN b ON a.x < b.y"),
        (
            "SELECT id FROM a WHERE x = (SELECT max(y) FROM b)",
            "scalar subqueries",
            "(SELECT max(y) FROM b)",
        ),
        ("SELECT id, (SELECT y FROM b) FROM a", "scalar subqueries", "(SELECT y FROM b)"),
        (
            "SELECT id FROM a WHERE id IN (SELECT b.aid FROM b WHERE b.y = a.x)",
            "correlated subqueries",
            "(SELECT b.aid FROM b WHERE b.y = a.x)",
        ),
        # was a bug: the aggregate inside the subquery made the outer query "grouped"
        ("SELECT id, (SELECT max(y) FROM b) FROM a", "scalar subqueries", "(SELECT max(y) FROM b)"),
        (
            "SELECT id FROM a WHERE EXISTS (SELECT 1 FROM b)",
            "EXISTS subqueries",
            "EXISTS (SELECT 1 FROM b)",
        ),
        (
            "SELECT id FROM a WHERE x IN (SELECT y FROM b) OR id = 1",
            "IN (subquery)",
            "x IN (SELECT y FROM b)",
        ),
        ("SELECT id FROM a WHERE x::text = '1'", "CAST", "x::text"),
        ("SELECT id FROM a WHERE s ~ 'q'", "function REGEXP_LIKE()", "s ~ 'q'"),
        ("SELECT DISTINCT ON (x) id FROM a", "DISTINCT ON", "DISTINCT ON (x)"),
    ],
)
def test_unsupported_sql_is_named_and_located(ab: Database, sql: str, what: str, span: str) -> None:
    err = error_of(ab, sql)
    assert what in err.message
    assert isinstance(err, UnsupportedSql) and err.code == "unsupported_sql"
    assert err.message.startswith("unsupported SQL: ")
    assert_points_into(sql, err.message, span)


WRITES = ["DELETE FROM a WHERE id = 1", "INSERT INTO a (id) VALUES (1)", "UPDATE a SET x = 1"]


@pytest.mark.parametrize("sql", [*WRITES, "CREATE TABLE z (id int)", "DROP TABLE a"])
def test_writes_are_rejected(ab: Database, sql: str) -> None:
    err = error_of(ab, sql)
    assert type(err) is SqlError and err.code == "sql_error"
    assert sql.split()[0] in err.message
    if sql in WRITES:
        assert "is not allowed: data changes only through reducers" in err.message
    assert run_query(ab, "SELECT COUNT(*) FROM a").rows == [(1,)]


@pytest.mark.parametrize(
    "sql, fragment, span",
    [
        ("SELECT id FROM nope", "no table named 'nope'", "nope"),
        ("SELECT a.id FROM a JOIN nope ON nope.id = a.id", "no table named 'nope'", "nope ON"),
        ("SELECT nope FROM a", "unknown column nope", "nope"),
        ("SELECT a.nope FROM a", "unknown column a.nope", "a.nope"),
        ("SELECT id FROM a WHERE b.y = 1", "unknown table or alias 'b'", "b.y"),
        ("SELECT q.id FROM a AS q JOIN b AS q ON q.id = q.aid", "alias 'q' used twice", "b AS q"),
        ("SELECT a.id FROM a JOIN b ON a.id = b.aid WHERE id = 1", "'id' is ambiguous", "id = 1"),
        ("SELECT x, COUNT(*) FROM a GROUP BY s", "column x must appear in GROUP BY", "x,"),
        ("SELECT id FROM a WHERE COUNT(*) > 1", "aggregate functions are not allowed", "COUNT(*)"),
        ("SELECT id FROM a ORDER BY 3", "ORDER BY position 3 is out of range", None),
        ("SELECT DISTINCT x FROM a ORDER BY id", "must appear in the select list", "id"),
        ("SELECT id FROM a UNION SELECT x, s FROM a", "UNION sides have 1 and 2 columns", None),
        ("SELECT id FROM a LIMIT 'z'", "LIMIT must be a non-negative integer", "'z'"),
        ("SELECT id FROM a WHERE x >", "syntax error", None),
        ("SELECT id FROM a; SELECT id FROM b", "exactly one statement", None),
    ],
)
def test_unknown_names_and_invalid_queries(
    ab: Database, sql: str, fragment: str, span: str | None
) -> None:
    err = error_of(ab, sql)
    assert fragment in err.message
    if span is not None:
        assert_points_into(sql, err.message, span)


@pytest.mark.parametrize(
    "sql, fragment, span",
    [
        ("SELECT id FROM a WHERE s = 1", "cannot compare text with 1", "s = 1"),
        ("SELECT id FROM a WHERE x = 'q'", "cannot compare int64 with 'q'", "x = 'q'"),
        ("SELECT id FROM a WHERE a.x = a.s", "cannot compare", "a.x = a.s"),
        ("SELECT id FROM a WHERE b = 1", "cannot compare bool with 1", "b = 1"),
        ("SELECT id FROM a WHERE x IN (1, 'z')", "cannot compare int64 with 'z'", "'z'"),
        (
            "SELECT id FROM a WHERE s BETWEEN 1 AND 2",
            "cannot compare text with 1",
            "s BETWEEN 1 AND 2",
        ),
        ("SELECT s + 1 FROM a", "arithmetic needs numbers, got text", "s + 1"),
        ("SELECT -s FROM a", "cannot negate a text", "-s"),
        ("SELECT id FROM a WHERE x LIKE 'a%'", "LIKE needs text, got int64", "x LIKE"),
        ("SELECT SUM(s) FROM a", "SUM needs a number, got text", "SUM(s)"),
        ("SELECT AVG(b) FROM a", "AVG needs a number, got bool", "AVG(b)"),
        ("SELECT id FROM a WHERE x = 1 AND (s OR b)", "expected a boolean condition", "s OR b"),
        ("SELECT a.id FROM a JOIN b ON a.s = b.aid", "cannot compare", "a.s = b.aid"),
    ],
)
def test_type_mismatches(ab: Database, sql: str, fragment: str, span: str) -> None:
    err = error_of(ab, sql)
    assert fragment in err.message
    assert_points_into(sql, err.message, span)


@pytest.mark.parametrize(
    "sql, params, what, why, span",
    [
        ("SELECT id FROM a WHERE x = $2", [1], "parameter $2", "only 1 given", "$2"),
        ("SELECT id FROM a WHERE x = $1", None, "parameter $1", "only 0 given", "$1"),
        ("SELECT id FROM a WHERE x = ? AND id = ?", [1], "parameter $2", "only 1 given", None),
        ("SELECT id FROM a WHERE x = :v", [1], "parameter :v", "needs named params", None),
        ("SELECT id FROM a WHERE x = :v", {"w": 1}, "parameter :v", "was not given", None),
        ("SELECT id FROM a WHERE x = $1", {"w": 1}, "parameter $1", "needs positional", "$1"),
        ("SELECT id FROM a WHERE x = $1", ["zz"], "cannot compare", "int64 with 'zz'", "x = $1"),
        ("SELECT id FROM a LIMIT $1", [-1], "LIMIT", "must be a non-negative integer", "$1"),
    ],
)
def test_parameter_errors(
    ab: Database, sql: str, params: Any, what: str, why: str, span: str | None
) -> None:
    msg = error_of(ab, sql, params).message
    assert what in msg and why in msg
    if span is not None:
        assert_points_into(sql, msg, span)


def test_parameters_bind(ab: Database) -> None:
    q = "SELECT id, s FROM a WHERE x = {} AND s = {} AND f < {}"
    assert run_query(ab, q.format("$1", "$2", "$3"), [1, "q", 1]).rows == [(1, "q")]
    assert run_query(ab, q.format("$3", "$1", "$2"), ["q", 1, 1]).rows == [(1, "q")]
    assert run_query(ab, q.format(":x", ":s", ":x"), {"x": 1, "s": "q"}).rows == [(1, "q")]
    assert run_query(ab, q.format("?", "?", "?"), (1, "q", 0.75)).rows == [(1, "q")]
    assert run_query(ab, q.format("$1", "$2", "$1"), [1, "z"]).rows == []
    assert run_query(ab, "SELECT id FROM a WHERE x = $1", [None]).rows == []


# ---------------------------------------------------------------- AS OF


ACCT = TableDef(
    name="acct",
    columns=(
        col("id", ColumnType.INT64),
        col("owner", ColumnType.TEXT),
        col("balance", ColumnType.INT64),
    ),
    primary_key=("id",),
    indexes=(
        IndexDef("by_balance", ("balance",), "btree"),
        IndexDef("by_owner", ("owner",), "hash"),
    ),
)


def iso(ts_us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts_us)).isoformat()


def acct_history(db: Database) -> list[tuple[int, int, list[tuple]]]:
    """Commits a few changes; returns (offset, timestamp, rows then) per commit."""
    steps = [
        [
            ["ins", "acct", {"id": i, "owner": o, "balance": b}]
            for i, o, b in [(1, "ann", 10), (2, "bob", 20), (3, "cy", 30)]
        ],
        [["upd", "acct", {"id": 1, "owner": "ann", "balance": 25}], ["del", "acct", [2]]],
        [
            ["ins", "acct", {"id": 4, "owner": "bob", "balance": 5}],
            ["upd", "acct", {"id": 3, "owner": "cy", "balance": 0}],
        ],
        [["upd", "acct", {"id": 4, "owner": "dee", "balance": 50}]],
    ]
    out = []
    for ops in steps:
        res = db.call_sync("apply", [ops])
        rows = run_query(db, "SELECT * FROM acct ORDER BY id").rows
        out.append((res.offset, res.timestamp, rows))
    return out


def test_as_of_offset_and_timestamp() -> None:
    db = open_db([ACCT])
    hist = acct_history(db)
    for i, (offset, ts, rows) in enumerate(hist):
        for clause in (f"{offset}", f"TIMESTAMP '{iso(ts)}'", f"'{iso(ts)}'"):
            res = run_query(db, f"SELECT * FROM acct FOR SYSTEM_TIME AS OF {clause} ORDER BY id")
            assert (res.rows, res.offset) == (rows, offset), clause
        # just before this commit's timestamp: the previous commit's state
        res = run_query(
            db, f"SELECT * FROM acct FOR SYSTEM_TIME AS OF TIMESTAMP '{iso(ts - 1)}' ORDER BY id"
        )
        if i:
            assert (res.rows, res.offset) == (hist[i - 1][2], hist[i - 1][0])
        # through the indexes, a parameter, a join and a subquery: all at the same point
        res = run_query(
            db,
            "SELECT id FROM acct FOR SYSTEM_TIME AS OF $1 WHERE balance >= 20 ORDER BY 1",
            [offset],
        )
        assert res.rows == [(r[0],) for r in rows if r[2] >= 20]
        res = run_query(
            db, f"SELECT id FROM acct FOR SYSTEM_TIME AS OF {offset} WHERE owner = 'bob'"
        )
        assert res.rows == [(r[0],) for r in rows if r[1] == "bob"]
        res = run_query(
            db,
            f"SELECT x.id, y.balance FROM acct FOR SYSTEM_TIME AS OF {offset} AS x"
            " JOIN acct AS y ON y.id = x.id"
            " WHERE x.id IN (SELECT id FROM acct WHERE balance > 0) ORDER BY 1",
        )
        assert res.rows == [(r[0], r[2]) for r in rows if r[2] > 0]
    future = hist[-1][1] + 10**9
    res = run_query(
        db, f"SELECT COUNT(*) FROM acct FOR SYSTEM_TIME AS OF TIMESTAMP '{iso(future)}'"
    )
    assert res.offset == db.offset and res.rows == [(len(hist[-1][2]),)]
    assert run_query(db, "SELECT * FROM acct ORDER BY id").rows == hist[-1][2]
    with pytest.raises(SqlError, match="same AS OF point"):
        run_query(
            db,
            "SELECT x.id FROM acct FOR SYSTEM_TIME AS OF 2 AS x"
            " JOIN acct FOR SYSTEM_TIME AS OF 3 AS y ON x.id = y.id",
        )
    with pytest.raises(HistoryUnavailable):
        run_query(db, f"SELECT * FROM acct FOR SYSTEM_TIME AS OF {db.offset + 5}")
    with pytest.raises(SqlError, match="invalid timestamp literal"):
        run_query(db, "SELECT * FROM acct FOR SYSTEM_TIME AS OF TIMESTAMP 'yesterday'")
    assert not db.history.pins
    db.close()


def test_as_of_from_disk(tmp_path: Any) -> None:
    """Offsets older than the in-memory history are read from snapshots and the log."""
    cfg = StoreConfig(data_dir=tmp_path, durability="durable", history_commits=0)
    db = Database.open([make_module([ACCT])], cfg)
    try:
        hist = acct_history(db)
        assert db.history_floor > hist[0][0]
        for offset, _, rows in hist:
            res = run_query(db, f"SELECT * FROM acct FOR SYSTEM_TIME AS OF {offset} ORDER BY id")
            assert (res.rows, res.offset) == (rows, offset)
            res = run_query(
                db, f"SELECT id FROM acct FOR SYSTEM_TIME AS OF {offset} WHERE balance < 20"
            )
            assert sorted(res.rows) == [(r[0],) for r in rows if r[2] < 20]
    finally:
        db.close()


# =========================================================================== front-end bugs
# Regression tests for bugs the tests above found in core/sql/{lower,lower_expr,parse,exprc,
# ordering}.py (each docstring describes the bug as it was); they assert PostgreSQL's
# behaviour.


def test_frontend_int_expression_vs_float_constant(ab: Database) -> None:
    """WAS A BUG: lower_expr._coerce: a float constant compared with an int64 expression is an
    error ("cannot compare int64 with 2.5") although ``x = -2.5`` (a Neg, not a Const) is
    accepted; PostgreSQL compares numerically."""
    write(ab, *[["ins", "a", {"id": i, "x": i}] for i in range(2, 6)])
    assert ids(run_query(ab, "SELECT id FROM a WHERE x > -2.5")) == [1, 2, 3, 4, 5]
    assert ids(run_query(ab, "SELECT id FROM a WHERE x < 2.5")) == [1, 2]
    assert ids(run_query(ab, "SELECT id FROM a WHERE x + 1 > 4.5")) == [4, 5]
    assert ids(run_query(ab, "SELECT id FROM a WHERE x IN (2, 3.5, 4.0)")) == [2, 4]
    assert ids(run_query(ab, "SELECT id FROM a WHERE x BETWEEN 1.5 AND 3")) == [2, 3]
    assert ids(run_query(ab, "SELECT id FROM a WHERE x = $1", [3.0])) == [3]


def test_frontend_where_must_be_boolean(ab: Database) -> None:
    """WAS A BUG: lower.Lowerer._select: WHERE/ON conjuncts are not type-checked, so ``WHERE x``
    (int) silently returns no rows; PostgreSQL: "argument of WHERE must be type boolean"."""
    assert "boolean" in error_of(ab, "SELECT id FROM a WHERE s AND id = 1").message  # checked
    for sql in (
        "SELECT id FROM a WHERE x",
        "SELECT a.id FROM a JOIN b ON b.aid = a.id AND b.y",
        "SELECT x FROM a GROUP BY x HAVING COUNT(*)",
    ):
        assert "boolean" in error_of(ab, sql).message, sql


def test_frontend_scalar_function_argument_types(ab: Database) -> None:
    """WAS A BUG: lower_expr (_FUNCS): lower/upper/length/abs arguments are not type-checked, so
    ``length(x)`` on an int64 column crashes the executor with a TypeError."""
    for sql in ("SELECT length(x) FROM a", "SELECT lower(x) FROM a", "SELECT abs(s) FROM a"):
        err = error_of(ab, sql)
        assert "needs" in err.message or "function" in err.message, sql


def test_frontend_union_column_types(ab: Database) -> None:
    """WAS A BUG: lower.Lowerer._union: column types of the sides are not checked; int64 and text
    mix, and bool TRUE dedupes with int 1. PostgreSQL: "UNION types ... cannot be matched"."""
    for sql in ("SELECT id FROM a UNION SELECT s FROM a", "SELECT b FROM a UNION SELECT x FROM a"):
        assert "UNION" in error_of(ab, sql).message, sql


def test_frontend_in_subquery_key_types(ab: Database) -> None:
    """WAS A BUG: lower.Lowerer._semi: the key and the subquery column are not type-checked, so a
    bool key matches int 1 (True == 1 in Python)."""
    for sql in (
        "SELECT id FROM a WHERE b IN (SELECT x FROM a)",
        "SELECT id FROM a WHERE s IN (SELECT x FROM a)",
    ):
        assert "cannot compare" in error_of(ab, sql).message, sql


def test_frontend_too_many_positional_parameters(ab: Database) -> None:
    """WAS A BUG: parse.Params / lower_sql: surplus positional parameters are silently ignored
    (``Params.used`` is never filled); PostgreSQL rejects a wrong parameter count."""
    assert "parameter" in error_of(ab, "SELECT id FROM a WHERE x = $1", [1, 2]).message


def test_frontend_count_takes_one_argument(ab: Database) -> None:
    """WAS A BUG: lower._agg_call: ``COUNT(x, s)`` silently counts x and drops s."""
    assert "COUNT" in error_of(ab, "SELECT COUNT(x, s) FROM a").message


def test_frontend_group_by_position_and_output_name(ab: Database) -> None:
    """WAS A BUG: lower._aggregate: ``GROUP BY 1`` groups by the constant 1 (so ``SELECT x ...
    GROUP BY 1`` is rejected) and ``GROUP BY <output alias>`` is an unknown column; both
    name select-list items in PostgreSQL."""
    write(ab, *[["ins", "a", {"id": i, "x": i % 2}] for i in range(2, 7)])
    want = run_query(ab, "SELECT x, COUNT(*) FROM a GROUP BY x ORDER BY 1").rows
    assert want == [(0, 3), (1, 3)]
    assert run_query(ab, "SELECT x, COUNT(*) FROM a GROUP BY 1 ORDER BY 1").rows == want
    assert run_query(ab, "SELECT x AS k, COUNT(*) FROM a GROUP BY k ORDER BY 1").rows == want


def test_frontend_concat_formats_like_postgres(ab: Database) -> None:
    """WAS A BUG: exprc (||): values are formatted with Python's str(), giving 'True' and '0.5'
    vs PostgreSQL's 'true'; a float8 of 2.0 prints '2' in PostgreSQL, '2.0' here."""
    write(ab, ["ins", "a", {"id": 2, "s": "v", "b": False, "f": 2.0}])
    res = run_query(ab, "SELECT s || b, s || f FROM a WHERE id = 2")
    assert res.rows == [("vfalse", "v2")]


def test_frontend_ordering_of_mixed_json_values(shop: Database) -> None:
    """WAS A BUG: ordering._orderable: only json objects/arrays become canonical text, json strings
    and numbers stay str/int, so sorting rows that mix them (ORDER BY, and the row
    tie-break of every ORDER BY/LIMIT) raises TypeError (bytes < str)."""
    write(shop, ["ins", "doc", {"id": 5, "body": "text"}], ["ins", "doc", {"id": 6, "body": 7}])
    res = run_query(shop, "SELECT id FROM doc ORDER BY body NULLS FIRST, id")
    assert res.rows[0] == (4,) and sorted(res.rows) == [(i,) for i in range(1, 7)]
    res = run_query(shop, "SELECT body, COUNT(*) FROM doc GROUP BY body ORDER BY 2 DESC LIMIT 1")
    assert res.rows == [({"a": [1, 2], "b": 1}, 2)]


def test_frontend_not_like_is_negated(ab: Database) -> None:
    """WAS A BUG: lower_expr (Like/ILike): sqlglot parses ``s NOT LIKE p`` as Like(negate=True),
    not Not(Like); the ``negate`` arg is ignored, so NOT LIKE / NOT ILIKE run as LIKE."""
    write(ab, ["ins", "a", {"id": 2, "s": "abc"}], ["ins", "a", {"id": 3, "s": "Abc"}])
    assert ids(run_query(ab, "SELECT id FROM a WHERE s LIKE 'a%'")) == [2]
    assert ids(run_query(ab, "SELECT id FROM a WHERE NOT (s LIKE 'a%')")) == [1, 3]
    assert ids(run_query(ab, "SELECT id FROM a WHERE s NOT LIKE 'a%'")) == [1, 3]
    assert ids(run_query(ab, "SELECT id FROM a WHERE s NOT ILIKE 'a%'")) == [1]


def test_frontend_parenthesized_in_subquery(ab: Database) -> None:
    """WAS A BUG: lower.conjuncts: a parenthesized top-level ``(x IN (SELECT ...))`` is not
    unwrapped (only a parenthesized AND is), so it is rejected as "IN (subquery) other than
    as a top-level AND-ed WHERE condition"."""
    want = run_query(ab, "SELECT id FROM a WHERE x IN (SELECT aid FROM b)").rows
    assert want == [(1,)]
    assert run_query(ab, "SELECT id FROM a WHERE (x IN (SELECT aid FROM b))").rows == want
    sql = "SELECT id FROM a WHERE (id > 0 AND (x IN (SELECT aid FROM b)))"
    assert run_query(ab, sql).rows == want


@pytest.mark.parametrize("sql", WRITES)
def test_frontend_write_statements_are_located(ab: Database, sql: str) -> None:
    """WAS A BUG: parse.parse (per the task brief; docs/sql.md only promises the message): writes
    are named but carry no "line 1, column N" like every other rejected construct."""
    assert_points_into(sql, error_of(ab, sql).message, sql)


def test_frontend_on_clause_referring_to_a_later_table(ab: Database) -> None:
    """WAS A BUG: lower.Lowerer._select: an ON condition may name a table joined after it (names
    resolve against the whole FROM clause). In a LEFT JOIN it becomes a residual over
    positions the joined row does not have yet, and the executor fails with IndexError; in
    an inner join it is silently accepted. PostgreSQL: invalid reference to FROM-clause
    entry for table "c"."""
    for sql in (
        "SELECT a.id FROM a LEFT JOIN b ON a.id = b.aid AND c.y = 1 JOIN b AS c ON c.id = a.id",
        "SELECT a.id FROM a JOIN b ON b.aid = a.id AND c.y = 1 JOIN b AS c ON c.id = a.id",
    ):
        msg = error_of(ab, sql).message
        assert "'c'" in msg, sql
        assert_points_into(sql, msg, "c.y = 1")
