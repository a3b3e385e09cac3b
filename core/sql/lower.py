"""Lowers a parsed SELECT (or UNION) to the logical plan in ``core.sql.ir``.

Steps: resolve FROM/JOIN tables into one scope (left-deep, positions in the concatenated
row); split WHERE and inner-join ON conditions into conjuncts and push single-table ones
into their scans; take equi-join keys for each join; turn top-level ``x IN (SELECT ...)``
into semi-joins; then aggregates, HAVING, the select list, DISTINCT, ORDER BY/LIMIT.
Invariant: a conjunct is pushed below a join only where that cannot change the result
(never onto the NULL-supplying side of a LEFT JOIN from WHERE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlglot import exp

from core.errors import SqlError
from core.schema import TableDef
from core.sql import ir
from core.sql.lower_expr import AGG_NODES, ExprLowerer, compatible
from core.sql.parse import Params, parse, position, timestamp_literal, unsupported
from core.sql.plan_util import and_all as _and
from core.sql.plan_util import conjuncts, refs, shift
from core.sql.scope import Scope
from core.types import ColumnType

SchemaLookup = Callable[[str], TableDef | None]

_SELECT_ARGS = {
    "expressions",
    "from_",
    "joins",
    "where",
    "group",
    "having",
    "order",
    "limit",
    "offset",
    "distinct",
    "kind",
    "hint",
}


def _name_of(item: exp.Expr) -> str:
    if isinstance(item, exp.Alias):
        return item.alias
    if isinstance(item, exp.Column):
        return item.name
    return item.sql(dialect="postgres")


def _int_clause(sql: str, node: exp.Expr | None, params: Params, what: str) -> int | None:
    if node is None:
        return None
    value = node.expression if isinstance(node, exp.Limit | exp.Offset) else node

    def no_columns(c: exp.Column) -> ir.Expr:
        raise SqlError(f"{what} must be a constant{position(sql, c)}")

    low = ExprLowerer(sql, params, no_columns).lower(value)
    if not isinstance(low, ir.Const) or type(low.value) is not int or low.value < 0:
        raise SqlError(f"{what} must be a non-negative integer{position(sql, value)}")
    return low.value


# ---------------------------------------------------------------- the lowerer


class Lowerer:
    def __init__(self, sql: str, params: Params, schema: SchemaLookup) -> None:
        self.sql = sql
        self.params = params
        self.schema = schema
        self.tables: list[str] = []
        self.as_of: tuple[str, int] | None = None

    # ---- entry

    def query(self, tree: exp.Expr) -> ir.Node:
        if isinstance(tree, exp.Union):
            return self._union(tree)
        if isinstance(tree, exp.Select):
            return self._select(tree)
        if isinstance(tree, exp.Subquery):
            return self.query(tree.this)
        raise unsupported(self.sql, f"{type(tree).__name__} in a query", tree)

    def _union(self, u: exp.Union) -> ir.Node:
        if not isinstance(u, exp.Union) or type(u) is not exp.Union:
            raise unsupported(self.sql, type(u).__name__.upper(), u)
        for k in ("with_",):
            if u.args.get(k):
                raise unsupported(self.sql, "WITH (common table expressions)", u)
        left = self.query(u.this)
        right = self.query(u.expression)
        if len(left.columns) != len(right.columns):
            raise SqlError(
                f"UNION sides have {len(left.columns)} and {len(right.columns)} columns"
                f"{position(self.sql, u)}"
            )
        for i, (a, b) in enumerate(zip(left.columns, right.columns), start=1):
            if (
                a.type is not None
                and b.type is not None
                and not (a.type == b.type or compatible(a.type, b.type))
            ):
                raise SqlError(
                    f"UNION column {i}: {a.type.value} and {b.type.value} cannot be matched"
                    f"{position(self.sql, u)}"
                )
        inputs: list[ir.Node] = []
        for side in (left, right):
            if isinstance(side, ir.Union) and side.all == bool(not u.args.get("distinct")):
                inputs.extend(side.inputs)
            else:
                inputs.append(side)
        cols = [
            ir.OutCol(a.name, a.type or b.type, a.nullable or b.nullable)
            for a, b in zip(left.columns, right.columns)
        ]
        node: ir.Node = ir.Union(inputs, all=not u.args.get("distinct"), columns=cols)
        return self._order_limit(u, node, None, None, False)

    # ---- SELECT

    def _select(self, sel: exp.Select) -> ir.Node:
        for arg, v in sel.args.items():
            if v and arg not in _SELECT_ARGS:
                what = {"with_": "WITH (common table expressions)", "windows": "WINDOW"}.get(
                    arg, arg.upper()
                )
                raise unsupported(self.sql, what, v if isinstance(v, exp.Expr) else sel)
        if isinstance(sel.args.get("distinct"), exp.Distinct) and sel.args["distinct"].args.get(
            "on"
        ):
            raise unsupported(self.sql, "DISTINCT ON", sel)
        from_ = sel.args.get("from_")
        if from_ is None:
            raise unsupported(self.sql, "SELECT without FROM", sel)
        scope = Scope(self.sql)
        scans: list[ir.Scan] = []
        joins: list[exp.Join] = list(sel.args.get("joins") or [])
        self._add_table(scope, scans, from_.this, False)
        for j in joins:
            side = (j.side or "").upper()
            if side in ("RIGHT", "FULL"):
                raise unsupported(self.sql, f"{side} JOIN", j)
            if j.args.get("using") or j.args.get("method"):
                raise unsupported(self.sql, "JOIN ... USING / NATURAL JOIN", j)
            self._add_table(scope, scans, j.this, side == "LEFT")
        low = ExprLowerer(self.sql, self.params, scope.resolve)
        pool: list[ir.Expr] = []
        semis: list[exp.In] = []
        where = sel.args.get("where")
        for src in conjuncts(where.this if where is not None else None):
            if isinstance(src, exp.In) and src.args.get("query") is not None:
                semis.append(src)
            else:
                pool.append(low.condition(src, "argument of WHERE"))
        left_on: dict[int, list[ir.Expr]] = {}
        for jn, j in enumerate(joins, start=1):
            on = []
            for x in conjuncts(j.args.get("on")):
                c = low.condition(x, "argument of JOIN ... ON")
                later = [p for p in refs(c) if p >= scope.entries[jn].end]
                if later:
                    alias = scope.entries[scope.entry_of(max(later))].alias
                    raise SqlError(
                        f"invalid reference to table {alias!r} in JOIN ... ON: it is joined"
                        f" later{position(self.sql, x)}"
                    )
                on.append(c)
            if (j.side or "").upper() == "LEFT":
                left_on[jn] = on
            else:
                pool.extend(on)
        # push single-table conjuncts into scans (not onto NULL-supplying sides)
        rest: list[ir.Expr] = []
        for c in pool:
            r = refs(c)
            ents = {scope.entry_of(p) for p in r}
            if len(ents) == 1 and not scope.entries[next(iter(ents))].nullable:
                self._push(scope, scans, next(iter(ents)), c)
            else:
                rest.append(c)
        node: ir.Node = scans[0]
        cols_so_far = list(scans[0].columns)
        for k in range(1, len(scans)):
            entry = scope.entries[k]
            kind = "left" if entry.nullable else "inner"
            source = left_on.get(k, []) if kind == "left" else rest
            lk, rk, leftover = self._keys(scope, k, source)
            residual: ir.Expr | None = None
            if kind == "left":
                res = []
                for c in leftover:
                    ents = {scope.entry_of(p) for p in refs(c)}
                    if ents == {k}:
                        self._push(scope, scans, k, c)
                    else:
                        res.append(c)
                residual = _and(res)
            else:
                rest = leftover
            if not lk:
                raise unsupported(
                    self.sql,
                    f"join of {entry.alias!r} without an equality condition linking it to the"
                    " tables before it (cross joins)",
                    joins[k - 1],
                )
            cols_so_far = cols_so_far + scans[k].columns
            node = ir.Join(node, scans[k], kind, lk, rk, residual, columns=list(cols_so_far))
            if kind == "inner":
                ready = [c for c in rest if max(refs(c), default=-1) < entry.end]
                if ready:
                    rest = [c for c in rest if c not in ready]
                    node = ir.Filter(node, _and(ready) or ready[0], columns=node.columns)
        # nullability of columns from LEFT-joined tables
        node.columns = scope.out_cols()
        if rest:
            node = ir.Filter(node, _and(rest) or rest[0], columns=node.columns)
        for s in semis:
            node = self._semi(low, s, node)
        return self._finish(sel, scope, node)

    def _add_table(self, scope: Scope, scans: list[ir.Scan], t: exp.Expr, nullable: bool) -> None:
        if isinstance(t, exp.Subquery):
            raise unsupported(self.sql, "subqueries in FROM", t)
        if not isinstance(t, exp.Table):
            raise unsupported(self.sql, f"{type(t).__name__} in FROM", t)
        if t.args.get("db") or t.args.get("catalog"):
            raise SqlError(f"schema-qualified table names are not supported{position(self.sql, t)}")
        name = t.name
        tdef = self.schema(name)
        if tdef is None:
            raise SqlError(f"no table named {name!r}{position(self.sql, t)}")
        version = t.args.get("version")
        if version is not None:
            self._as_of(version)
        alias = t.alias_or_name
        scope.add(alias, tdef, nullable, t)
        if name not in self.tables:
            self.tables.append(name)
        cols = [ir.OutCol(c.name, c.type, c.nullable or nullable) for c in tdef.columns]
        scans.append(ir.Scan(table=name, alias=alias, columns=cols))

    def _as_of(self, v: exp.Expr) -> None:
        if (v.args.get("kind") or "").upper() != "AS OF":
            raise unsupported(self.sql, "FOR SYSTEM_TIME other than AS OF", v)
        e = v.expression
        if isinstance(e, exp.Literal) and not e.is_string:
            point = ("offset", int(e.this))
        elif isinstance(e, exp.Literal):
            point = ("timestamp", timestamp_literal(e.this))
        elif isinstance(e, exp.Cast) and isinstance(e.this, exp.Literal):
            point = ("timestamp", timestamp_literal(e.this.this))
        elif isinstance(e, exp.Parameter | exp.Placeholder):
            val = ExprLowerer(self.sql, self.params, lambda c: ir.Const(None)).lower(e)
            assert isinstance(val, ir.Const)
            if type(val.value) is not int:
                raise SqlError("AS OF parameter must be an integer offset")
            point = ("offset", val.value)
        else:
            raise SqlError(
                f"AS OF needs an offset (integer) or TIMESTAMP '...'{position(self.sql, v)}"
            )
        if self.as_of is not None and self.as_of != point:
            raise SqlError("all tables of a query must use the same AS OF point")
        self.as_of = point

    def _push(self, scope: Scope, scans: list[ir.Scan], k: int, c: ir.Expr) -> None:
        scan = scans[k]
        local = shift(c, -scope.entries[k].start)
        scan.filter = local if scan.filter is None else _and([scan.filter, local])
        if isinstance(local, ir.BinOp) and local.op == "=":
            a, b = local.left, local.right
            if isinstance(b, ir.ColRef):
                a, b = b, a
            if isinstance(a, ir.ColRef) and isinstance(b, ir.Const) and b.value is not None:
                scan.dispatch.append((a.index, b.value))

    def _keys(
        self, scope: Scope, k: int, source: list[ir.Expr]
    ) -> tuple[list[ir.Expr], list[ir.Expr], list[ir.Expr]]:
        entry = scope.entries[k]
        lk: list[ir.Expr] = []
        rk: list[ir.Expr] = []
        leftover: list[ir.Expr] = []
        for c in source:
            if isinstance(c, ir.BinOp) and c.op == "=":
                ra, rb = refs(c.left), refs(c.right)
                before = entry.start
                if ra and rb and max(ra) < before and all(entry.start <= p < entry.end for p in rb):
                    lk.append(c.left)
                    rk.append(shift(c.right, -entry.start))
                    continue
                if ra and rb and max(rb) < before and all(entry.start <= p < entry.end for p in ra):
                    lk.append(c.right)
                    rk.append(shift(c.left, -entry.start))
                    continue
            leftover.append(c)
        return lk, rk, leftover

    def _semi(self, low: ExprLowerer, s: exp.In, node: ir.Node) -> ir.Node:
        key = low.lower(s.this)
        sub = Lowerer(self.sql, self.params, self.schema)
        query = s.args["query"]
        try:
            right = sub.query(query)
        except SqlError as e:
            if _outer_reference(query, low):
                raise unsupported(self.sql, "correlated subqueries", query) from e
            raise
        for t in sub.tables:
            if t not in self.tables:
                self.tables.append(t)
        if sub.as_of is not None and sub.as_of != self.as_of:
            raise SqlError("AS OF inside a subquery must match the outer query")
        if len(right.columns) != 1:
            raise SqlError(f"IN (subquery) must select exactly one column{position(self.sql, s)}")
        rt = right.columns[0].type
        if not compatible(key.type, rt):
            raise SqlError(
                f"cannot compare {key.type.value if key.type else None} with"
                f" {rt.value if rt else None} in IN (subquery){position(self.sql, s)}"
            )
        return ir.SemiJoin(
            node, right, key, ir.ColRef(0, right.columns[0].type), columns=node.columns
        )

    # ---- aggregates, projection, ordering

    def _finish(self, sel: exp.Select, scope: Scope, node: ir.Node) -> ir.Node:
        items: list[exp.Expr] = []
        for item in sel.expressions:
            if isinstance(item, exp.Star):
                items.extend(
                    exp.column(c.name, e.alias) for e in scope.entries for c in e.tdef.columns
                )
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                ents = [e for e in scope.entries if e.alias == item.table]
                if not ents:
                    raise SqlError(f"unknown table {item.table!r}{position(self.sql, item)}")
                items.extend(exp.column(c.name, ents[0].alias) for c in ents[0].tdef.columns)
            else:
                items.append(item)
        group_src = [
            self._group_item(g, items, scope)
            for g in (sel.args["group"].expressions if sel.args.get("group") else [])
        ]
        having = sel.args.get("having")
        has_agg = bool(group_src) or having is not None or any(_has_agg(i) for i in items)
        pre = ExprLowerer(self.sql, self.params, scope.resolve)
        order_src = [o.this for o in sel.args["order"].expressions] if sel.args.get("order") else []
        if has_agg:
            lower, node = self._aggregate(node, group_src, items, order_src, having, pre)
        else:
            lower = pre
        exprs = [lower.lower(i.this if isinstance(i, exp.Alias) else i) for i in items]
        names = [_name_of(i) for i in items]
        distinct = bool(sel.args.get("distinct"))
        return self._order_limit(sel, node, (exprs, names, lower), None, distinct)

    def _group_item(self, g: exp.Expr, items: list[exp.Expr], scope: Scope) -> exp.Expr:
        """GROUP BY 2 and GROUP BY <output alias> name select-list items (as in PostgreSQL)."""
        if isinstance(g, exp.Literal) and not g.is_string:
            n = int(g.this)
            if not 1 <= n <= len(items):
                raise SqlError(f"GROUP BY position {n} is out of range{position(self.sql, g)}")
            item = items[n - 1]
            return item.this if isinstance(item, exp.Alias) else item
        if isinstance(g, exp.Column) and not g.table:
            try:
                scope.resolve(g)
                return g
            except SqlError:
                for item in items:
                    if isinstance(item, exp.Alias) and item.alias == g.name:
                        return item.this
        return g

    def _aggregate(
        self,
        node: ir.Node,
        group_src: list[exp.Expr],
        items: list[exp.Expr],
        order_src: list[exp.Expr],
        having: exp.Expr | None,
        pre: ExprLowerer,
    ) -> tuple[ExprLowerer, ir.Node]:
        group = [pre.lower(g) for g in group_src]
        aggs: list[ir.AggCall] = []

        def on_agg(n: exp.Expr) -> ir.Expr:
            call = self._agg_call(pre, n)
            if call not in aggs:
                aggs.append(call)
            return ir.ColRef(len(group) + aggs.index(call), call.type)

        def whole(n: exp.Expr) -> ir.Expr | None:
            if isinstance(n, AGG_NODES) or not any(isinstance(x, exp.Column) for x in n.walk()):
                return None
            try:
                e = pre.lower(n)
            except SqlError:
                return None
            if e in group:
                return ir.ColRef(group.index(e), e.type)
            return None

        def bad(col: exp.Column) -> ir.Expr:
            raise SqlError(
                f"column {col.sql(dialect='postgres')} must appear in GROUP BY or be used in"
                f" an aggregate function{position(self.sql, col)}"
            )

        post = ExprLowerer(self.sql, self.params, bad, on_agg, whole)
        # lower select items, ORDER BY items and HAVING once now to collect every aggregate
        names = [_name_of(i) for i in items]
        for i in items:
            post.lower(i.this if isinstance(i, exp.Alias) else i)
        for o in order_src:
            by_position = isinstance(o, exp.Literal)
            by_name = isinstance(o, exp.Column) and not o.table and o.name in names
            if not (by_position or by_name):
                post.lower(o)
        hav = post.condition(having.this, "argument of HAVING") if having is not None else None
        gcols = [ir.OutCol(_name_of(g), e.type, True) for g, e in zip(group_src, group)]
        acols = [ir.OutCol(a.func, a.type, a.func != "count") for a in aggs]
        node = ir.Aggregate(node, group, list(aggs), columns=gcols + acols)
        if hav is not None:
            node = ir.Filter(node, hav, columns=node.columns)
        return post, node

    def _agg_call(self, pre: ExprLowerer, n: exp.Expr) -> ir.AggCall:
        func = type(n).__name__.lower()
        arg = n.this
        distinct = False
        if isinstance(arg, exp.Distinct):
            distinct = True
            if len(arg.expressions) != 1:
                raise unsupported(self.sql, "COUNT(DISTINCT a, b)", n)
            arg = arg.expressions[0]
        if isinstance(arg, exp.Star):
            if func != "count":
                raise SqlError(f"{func.upper()}(*) is not valid{position(self.sql, n)}")
            return ir.AggCall("count", None, False, ColumnType.INT64)
        if any(isinstance(x, AGG_NODES) for x in arg.walk()):
            raise SqlError(f"nested aggregate functions{position(self.sql, n)}")
        if distinct and func != "count":
            raise unsupported(self.sql, f"{func.upper()}(DISTINCT ...)", n)
        e = pre.lower(arg)
        if func in ("sum", "avg") and e.type not in (None, ColumnType.INT64, ColumnType.FLOAT64):
            raise SqlError(f"{func.upper()} needs a number, got {e.type}{position(self.sql, n)}")
        t = {
            "count": ColumnType.INT64,
            "avg": ColumnType.FLOAT64,
        }.get(func, e.type)
        return ir.AggCall(func, e, distinct, t)

    def _order_limit(
        self,
        q: exp.Expr,
        node: ir.Node,
        proj: tuple[list[ir.Expr], list[str], ExprLowerer] | None,
        _unused: None,
        distinct: bool,
    ) -> ir.Node:
        order = q.args.get("order")
        limit = _int_clause(self.sql, q.args.get("limit"), self.params, "LIMIT")
        offset = _int_clause(self.sql, q.args.get("offset"), self.params, "OFFSET") or 0
        if proj is not None:
            exprs, names, lower = proj
        else:
            exprs = [ir.ColRef(i, c.type) for i, c in enumerate(node.columns)]
            names = [c.name for c in node.columns]
            lower = None
        visible = len(exprs)
        keys: list[ir.SortKey] = []
        for o in order.expressions if order else []:
            e = o.this
            pos: int | None = None
            if isinstance(e, exp.Literal) and not e.is_string:
                pos = int(e.this) - 1
                if not 0 <= pos < visible:
                    raise SqlError(f"ORDER BY position {pos + 1} is out of range")
            elif isinstance(e, exp.Column) and not e.table and e.name in names:
                pos = names.index(e.name)
            elif lower is not None:
                le = lower.lower(e)
                if le in exprs:
                    pos = exprs.index(le)
                elif distinct:
                    raise SqlError(
                        "for SELECT DISTINCT, ORDER BY expressions must appear in the select"
                        f" list{position(self.sql, e)}"
                    )
                else:
                    exprs.append(le)
                    names.append(f"_order{len(exprs)}")
                    pos = len(exprs) - 1
            else:
                raise SqlError(
                    f"ORDER BY of a UNION must name an output column{position(self.sql, e)}"
                )
            desc = bool(o.args.get("desc"))
            nf = o.args.get("nulls_first")
            keys.append(ir.SortKey(ir.ColRef(pos, exprs[pos].type), desc, bool(nf)))
        cols = [ir.OutCol(n, x.type, True) for n, x in zip(names, exprs)]
        if proj is not None:
            if _is_identity(exprs, node):
                out: ir.Node = node
                out.columns = [dataclasses.replace(c, name=n) for c, n in zip(node.columns, names)]
            else:
                out = ir.Project(node, list(exprs), columns=cols)
            if distinct:
                out = ir.Distinct(out, columns=out.columns)
        else:
            out = node
        if limit is not None or offset:
            if not keys:
                keys = [ir.SortKey(ir.ColRef(i, c.type)) for i, c in enumerate(out.columns)]
            out = ir.TopK(out, keys, limit, offset, columns=out.columns)
        elif keys:
            out = ir.Sort(out, keys, columns=out.columns)
        if len(exprs) > visible:
            out = ir.Project(
                out,
                [ir.ColRef(i, exprs[i].type) for i in range(visible)],
                columns=out.columns[:visible],
            )
        return out


def _outer_reference(query: exp.Expr, outer: ExprLowerer) -> bool:
    """Whether a subquery that failed to resolve names a column of the outer query."""
    inner = {t.alias_or_name for t in query.find_all(exp.Table)}
    for col in query.find_all(exp.Column):
        if col.table and col.table not in inner:
            try:
                outer.resolve(col)
                return True
            except SqlError:
                continue
    return False


def _has_agg(node: exp.Expr) -> bool:
    """An aggregate call in ``node``, not counting those inside subqueries."""
    if isinstance(node, AGG_NODES):
        return True
    if isinstance(node, exp.Subquery | exp.Select):
        return False
    return any(_has_agg(c) for c in node.iter_expressions())


def _is_identity(exprs: list[ir.Expr], node: ir.Node) -> bool:
    return len(exprs) == len(node.columns) and all(
        isinstance(e, ir.ColRef) and e.index == i for i, e in enumerate(exprs)
    )


def lower_sql(
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None,
    schema: SchemaLookup,
) -> ir.Query:
    """Parse and lower one read-only query."""
    tree = parse(sql)
    lw = Lowerer(sql, Params(params), schema)
    root = lw.query(tree)
    lw.params.check_all_used()
    q = ir.Query(root, tables=lw.tables)
    if lw.as_of is not None:
        kind, value = lw.as_of
        if kind == "offset":
            q.as_of_offset = value
        else:
            q.as_of_timestamp = value
    return q
