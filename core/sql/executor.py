"""The ad-hoc executor: evaluates a logical plan (``core.sql.ir``) over one MVCC snapshot.

Every node is evaluated eagerly into a list of positional rows (tuples; base rows are the
table's namedtuples until the end, where they are handed out as plain tuples). Semantics
follow PostgreSQL as described in ``core.sql.ir``: a predicate keeps a row only when it is
TRUE, join and semi-join keys containing NULL never match, NULL groups are equal, and
``ORDER BY`` uses ``ordering.sort_key`` (with the whole row as the tie-break).

Scans reach rows through the table's indexes where the pushed-down filter allows it: an
equality (or ``IN`` list) on the whole primary key -> ``get``; on all columns of a hash or
B-tree index -> ``find``; comparisons on the first column of a B-tree index -> ``range``;
otherwise every visible row. Invariant: the index only narrows the *candidates*; the full
filter is always applied to them, so an access path can never change a result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.reads import ReadSnapshot, SnapshotTable
from core.schema import TableDef
from core.sql import ir
from core.sql.exprc import compile_expr, compile_key, compile_predicate, compile_row
from core.sql.ordering import freeze, freeze_row, sort_key, value_key
from core.storage.indexes import HIGH
from core.types import ColumnType

Row = tuple


def execute_plan(root: ir.Node, snap: ReadSnapshot) -> list[tuple]:
    """Evaluate the plan rooted at ``root`` over ``snap``; rows as plain tuples."""
    return [r if type(r) is tuple else tuple(r) for r in _run(root, snap)]


def _run(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    fn = _NODES.get(type(node))
    if fn is None:
        raise TypeError(f"the executor has no rule for plan node {type(node).__name__}")
    return fn(node, snap)


# ---------------------------------------------------------------- scans and index choice


@dataclass
class _Bound:
    value: Any
    inclusive: bool


@dataclass
class _Conditions:
    """What the top-level conjuncts of a scan filter say about single columns."""

    eq: dict[int, Any] = field(default_factory=dict)  # column = constant (None: IS NULL)
    in_lists: dict[int, list[Any]] = field(default_factory=dict)  # column IN (constants)
    lo: dict[int, _Bound] = field(default_factory=dict)
    hi: dict[int, _Bound] = field(default_factory=dict)
    empty: bool = False  # some conjunct can never be TRUE (a comparison with NULL)


_FLIP = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _flatten_and(e: ir.Expr | None) -> list[ir.Expr]:
    if e is None:
        return []
    if isinstance(e, ir.BoolOp) and e.op == "and":
        out: list[ir.Expr] = []
        for a in e.args:
            out.extend(_flatten_and(a))
        return out
    return [e]


_NO_CONST: Any = object()


def _const(e: ir.Expr) -> Any:
    """The value of a constant expression (``Const`` or ``-Const``), else ``_NO_CONST``."""
    if isinstance(e, ir.Const):
        return e.value
    if isinstance(e, ir.Neg) and isinstance(e.arg, ir.Const):
        v = e.arg.value
        if v is None:
            return None
        if type(v) in (int, float):
            return -v
    return _NO_CONST


def _as_column_type(tdef: TableDef, col: int, v: Any) -> Any:
    if type(v) is int and tdef.columns[col].type == ColumnType.FLOAT64:
        return float(v)
    return v


def _key_columns(tdef: TableDef) -> set[int]:
    """Positions of the columns some access path can use (primary key and index columns)."""
    names = set(tdef.primary_key).union(*(ix.columns for ix in tdef.indexes))
    return {i for i, c in enumerate(tdef.columns) if c.name in names}


def _analyse(filt: ir.Expr | None, tdef: TableDef) -> _Conditions:
    cond = _Conditions()
    keyed = _key_columns(tdef)  # only these matter (and json values, never keys, are unhashable)
    for c in _flatten_and(filt):
        if isinstance(c, ir.BinOp) and c.op in _FLIP:
            op = c.op
            if isinstance(c.left, ir.ColRef):
                col, v = c.left.index, _const(c.right)
            elif isinstance(c.right, ir.ColRef):
                col, v, op = c.right.index, _const(c.left), _FLIP[op]
            else:
                continue
            if v is None:  # x op NULL is NULL: the conjunction is never TRUE
                cond.empty = True
                continue
            if v is _NO_CONST or col not in keyed:
                continue
            v = _as_column_type(tdef, col, v)
            if op == "=":
                cond.eq.setdefault(col, v)
            elif op in ("<", "<="):
                _tighten(cond.hi, col, _Bound(v, op == "<="), upper=True)
            else:
                _tighten(cond.lo, col, _Bound(v, op == ">="), upper=False)
        elif isinstance(c, ir.IsNull) and not c.negated and isinstance(c.arg, ir.ColRef):
            if c.arg.index in keyed:
                cond.eq.setdefault(c.arg.index, None)
        elif (
            isinstance(c, ir.InList)
            and not c.negated
            and isinstance(c.arg, ir.ColRef)
            and c.arg.index in keyed
        ):
            vals = [_const(v) for v in c.values]
            if any(v is _NO_CONST for v in vals):
                continue
            col = c.arg.index
            keep = [_as_column_type(tdef, col, v) for v in vals if v is not None]
            if col not in cond.in_lists:
                cond.in_lists[col] = list(dict.fromkeys(keep))
    return cond


def _tighten(bounds: dict[int, _Bound], col: int, b: _Bound, upper: bool) -> None:
    cur = bounds.get(col)
    if cur is None:
        bounds[col] = b
        return
    try:
        if b.value == cur.value:
            cur.inclusive = cur.inclusive and b.inclusive
        elif (b.value < cur.value) == upper:
            bounds[col] = b
    except TypeError:  # incomparable constants: keep the first bound, the filter decides
        pass


def _candidates(t: SnapshotTable, cond: _Conditions) -> Iterable[Row]:
    """The rows the filter can possibly keep, reached through the cheapest access path."""
    tdef = t.tdef
    if cond.empty:
        return ()
    pos = {c.name: i for i, c in enumerate(tdef.columns)}
    eq = cond.eq
    # 1. the whole primary key by equality (or one key column by an IN list)
    pk = [pos[c] for c in tdef.primary_key]
    if all(eq.get(p, None) is not None for p in pk):
        row = t.get(*[eq[p] for p in pk])
        return () if row is None else (row,)
    if len(pk) == 1 and pk[0] in cond.in_lists:
        found = (t.get(v) for v in cond.in_lists[pk[0]])
        return [r for r in found if r is not None]
    # 2. every column of a secondary index by equality / IS NULL (unique indexes first,
    # then those with more columns: they match fewer rows)
    indexes = sorted(tdef.indexes, key=lambda ix: (not ix.unique, -len(ix.columns)))
    for ix in indexes:
        cols = [pos[c] for c in ix.columns]
        if all(p in eq for p in cols):
            return t.find(ix.name, *[eq[p] for p in cols])
    for ix in indexes:
        if len(ix.columns) == 1 and pos[ix.columns[0]] in cond.in_lists:
            out: list[Row] = []
            for v in cond.in_lists[pos[ix.columns[0]]]:
                out.extend(t.find(ix.name, v))
            return out
    # 3. a range (or a prefix equality) on the first column of a B-tree index
    best: tuple[int, _Bound | None, _Bound | None, Any] | None = None
    for ix in tdef.indexes:
        if ix.kind != "btree":
            continue
        p = pos[ix.columns[0]]
        lo, hi = cond.lo.get(p), cond.hi.get(p)
        score = (lo is not None) + (hi is not None)
        if eq.get(p) is not None:  # a prefix equality beats any range
            lo = hi = _Bound(eq[p], True)
            score = 3
        if score and (best is None or score > best[0]):
            best = (score, lo, hi, ix)
    if best is not None:
        _, lo, hi, ix = best
        if len(ix.columns) == 1:
            return t.range(
                ix.name,
                lo.value if lo else None,
                hi.value if hi else None,
                lo_inclusive=lo.inclusive if lo else True,
                hi_inclusive=hi.inclusive if hi else True,
            )
        # composite key: bound by prefixes; (v,) sorts before and (v, HIGH) after every
        # key starting with v, so both bounds can be passed as inclusive
        lo_key = None if lo is None else ((lo.value,) if lo.inclusive else (lo.value, HIGH))
        hi_key = None if hi is None else ((hi.value, HIGH) if hi.inclusive else (hi.value,))
        return t.range(ix.name, lo_key, hi_key)
    return t.rows()


def _scan(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Scan)
    t = snap.table(node.table)
    rows = _candidates(t, _analyse(node.filter, t.tdef))
    pred = compile_predicate(node.filter)
    if pred is None:
        return list(rows)
    return [r for r in rows if pred(r)]


# ---------------------------------------------------------------- row-at-a-time nodes


def _filter(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Filter)
    pred = compile_predicate(node.predicate)
    assert pred is not None
    return [r for r in _run(node.input, snap) if pred(r)]


def _project(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Project)
    f = compile_row(node.exprs)
    return [f(r) for r in _run(node.input, snap)]


# ---------------------------------------------------------------- joins


def _key_fn(exprs: list[ir.Expr]) -> Callable[[Row], Any]:
    """Row -> hashable join key, or None when any part of the key is NULL."""
    f = compile_key(exprs)
    if len(exprs) == 1:

        def one(r: Row) -> Any:
            v = f(r)
            return None if v is None else freeze(v)

        return one

    def many(r: Row) -> Any:
        k = f(r)
        for v in k:
            if v is None:
                return None
        return freeze_row(k)

    return many


def _join(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Join)
    left = _run(node.left, snap)
    right = _run(node.right, snap)
    lkey, rkey = _key_fn(node.left_keys), _key_fn(node.right_keys)
    table: dict[Any, list[Row]] = {}
    for r in right:
        k = rkey(r)
        if k is not None:
            table.setdefault(k, []).append(r)
    residual = compile_predicate(node.residual)
    outer = node.kind == "left"
    pad = (None,) * len(node.right.columns)
    out: list[Row] = []
    for lr in left:
        k = lkey(lr)
        matched = False
        if k is not None:
            for rr in table.get(k, ()):
                row = lr + rr
                if residual is None or residual(row):
                    out.append(row)
                    matched = True
        if outer and not matched:
            out.append(lr + pad)
    return out


def _semi_join(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.SemiJoin)
    fr = compile_expr(node.right_key)
    present = {freeze(v) for r in _run(node.right, snap) if (v := fr(r)) is not None}
    fl = compile_expr(node.left_key)
    out: list[Row] = []
    for r in _run(node.left, snap):
        v = fl(r)
        if v is not None and freeze(v) in present:
            out.append(r)
    return out


# ---------------------------------------------------------------- aggregation


def _agg_fn(call: ir.AggCall) -> Callable[[list[Row]], Any]:
    """Rows of one group -> the aggregate's value (SQL NULL rules)."""
    if call.arg is None:
        return len
    f = compile_expr(call.arg)
    func = call.func

    def values(rows: list[Row]) -> list[Any]:
        return [v for r in rows if (v := f(r)) is not None]

    if func == "count":
        if call.distinct:
            return lambda rows: len({freeze(v) for v in values(rows)})
        return lambda rows: len(values(rows))
    if func == "sum":
        as_float = call.type == ColumnType.FLOAT64

        def sum_(rows: list[Row]) -> Any:
            vs = values(rows)
            if not vs:
                return None
            total = sum(vs)
            return float(total) if as_float else total

        return sum_
    if func == "avg":

        def avg(rows: list[Row]) -> Any:
            vs = values(rows)
            return sum(vs) / len(vs) if vs else None

        return avg
    if func in ("min", "max"):
        pick = min if func == "min" else max

        def extreme(rows: list[Row]) -> Any:
            vs = values(rows)
            return pick(vs, key=value_key) if vs else None

        return extreme
    raise TypeError(f"unknown aggregate function {func!r}")


def _aggregate(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Aggregate)
    rows = _run(node.input, snap)
    aggs = [_agg_fn(a) for a in node.aggs]
    groups: dict[Any, tuple[tuple, list[Row]]] = {}
    if node.group:
        gf = compile_row(node.group)
        for r in rows:
            vals = gf(r)
            k = freeze_row(vals)
            g = groups.get(k)
            if g is None:
                groups[k] = (vals, [r])
            else:
                g[1].append(r)
    else:
        groups[()] = ((), rows)  # a global aggregate has exactly one row, even for no input
    return [vals + tuple(a(rs) for a in aggs) for vals, rs in groups.values()]


# ---------------------------------------------------------------- sets and ordering


def _distinct_rows(rows: Iterable[Row]) -> list[Row]:
    seen: set[Any] = set()
    out: list[Row] = []
    for r in rows:
        k = freeze_row(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _distinct(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Distinct)
    return _distinct_rows(_run(node.input, snap))


def _union(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Union)
    rows = [r for child in node.inputs for r in _run(child, snap)]
    return rows if node.all else _distinct_rows(rows)


def _sort(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.Sort)
    return sorted(_run(node.input, snap), key=sort_key(node.order))


def _top_k(node: ir.Node, snap: ReadSnapshot) -> list[Row]:
    assert isinstance(node, ir.TopK)
    rows = sorted(_run(node.input, snap), key=sort_key(node.order))
    end = None if node.limit is None else node.offset + node.limit
    return rows[node.offset : end]


_NODES: dict[type, Callable[[ir.Node, ReadSnapshot], list[Row]]] = {
    ir.Scan: _scan,
    ir.Filter: _filter,
    ir.Project: _project,
    ir.Join: _join,
    ir.SemiJoin: _semi_join,
    ir.Aggregate: _aggregate,
    ir.Distinct: _distinct,
    ir.Union: _union,
    ir.Sort: _sort,
    ir.TopK: _top_k,
}
