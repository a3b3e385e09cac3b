"""Row-level security: table policies folded into query plans and into reducer table handles.

A table's read policies are SQL predicates over its row, ``:sender`` and (through
``IN (subquery)``) other tables. For a non-system caller every ``Scan`` of a policed table
in a plan is replaced by the rows its policies admit - a plain ``Filter`` for predicates
without subqueries, semi-joins for the ``IN (subquery)`` conditions, and a distinct union
when several alternatives (policies, or top-level ``OR`` branches holding a subquery) must
be combined. Because the rewrite produces ordinary plan nodes, the ad-hoc executor and the
DBSP circuits enforce it with no special case, and subscriptions stay incremental: a new
grant row is an insert delta on the semi-join's right input, a revoked one a delete.

Invariants:

* a restricted plan holds no bare ``Scan`` of a policed table outside the policy
  subtrees, and private tables (``public=False``) are not resolvable at all;
* policy subqueries read their tables unrestricted (the policy is the module author's
  trusted code; this is what lets a private grants table decide visibility);
* the scan's own pushed-down filter and dispatch keys are merged into every policy
  branch, so index access paths and subscription routing survive the rewrite.

The same compiled policies decide, row by row, what a reducer's table handles show and
accept for a non-system caller (``SecuredHandle``): reads skip invisible rows, and a write
whose old or new row fails the write policies (the read policies when the table has no
write policy) raises ``PolicyViolation``, rolling the transaction back.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from core.errors import NoSuchTable, PolicyViolation, SchemaError, StoreError
from core.schema import PolicyDef, TableDef
from core.sql import ir
from core.sql.executor import execute_plan
from core.sql.exprc import compile_expr, compile_predicate
from core.sql.lower import Lowerer, lower_sql
from core.sql.ordering import freeze
from core.sql.parse import Params, parse
from core.sql.plan_util import and_all
from core.storage.table import TableStore
from core.transaction import DbView, TableHandle

if TYPE_CHECKING:
    from core.database import Database

SchemaLookup = Callable[[str], TableDef | None]

_VALIDATION_SENDER = "0" * 64


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _has_subquery(e: exp.Expr) -> bool:
    return any(isinstance(n, exp.In) and n.args.get("query") is not None for n in e.walk()) or any(
        isinstance(n, exp.Exists | exp.Subquery) for n in e.walk()
    )


def _disjuncts(e: exp.Expr) -> list[exp.Expr]:
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.Or):
        return _disjuncts(e.this) + _disjuncts(e.expression)
    return [e]


class TablePolicies:
    """The parsed policies of one table, split into branches that lower to plan nodes."""

    def __init__(self, tdef: TableDef) -> None:
        self.tdef = tdef
        reads = [p for p in tdef.policies if p.kind == "read"]
        writes = [p for p in tdef.policies if p.kind == "write"]
        # None: unrestricted (a table with only write policies is readable by everyone)
        self.read = self._branches(tdef, reads) if reads else None
        self.write = self._branches(tdef, writes) if writes else self.read

    @staticmethod
    def _branches(tdef: TableDef, policies: list[PolicyDef]) -> list[str]:
        """WHERE texts, one per alternative; their union is what the policies admit."""
        simple: list[str] = []
        complex_: list[str] = []
        for p in policies:
            try:
                tree = parse(f"SELECT 1 WHERE {p.predicate}")
            except StoreError as e:
                raise SchemaError(
                    f"policy {p.name!r} on table {tdef.name!r}: {e.message}"
                ) from None
            where = tree.args.get("where")
            if where is None or list(tree.args.get("expressions") or [])[1:]:
                raise SchemaError(f"policy {p.name!r} on table {tdef.name!r}: not a predicate")
            for d in _disjuncts(where.this):
                (complex_ if _has_subquery(d) else simple).append(d.sql())
        branches = []
        if simple:
            branches.append(" OR ".join(f"({s})" for s in simple))
        branches.extend(complex_)
        return branches


_POLICIES: dict[int, tuple[TableDef, TablePolicies | None]] = {}


def policies_of(tdef: TableDef) -> TablePolicies | None:
    """The parsed policies of ``tdef``, parsed once per table definition (not per query)."""
    hit = _POLICIES.get(id(tdef))
    if hit is None or hit[0] is not tdef:
        if len(_POLICIES) >= 4096:
            _POLICIES.clear()
        hit = (tdef, TablePolicies(tdef) if tdef.policies else None)
        _POLICIES[id(tdef)] = hit
    return hit[1]


@functools.lru_cache(maxsize=4096)
def _parse_branch(sql: str) -> exp.Expr:
    return parse(sql)


class PolicyCompiler:
    """Lowers policy branches for one sender, against the unrestricted schema."""

    def __init__(self, stores: Mapping[str, TableStore]) -> None:
        self.stores = stores

    def unrestricted(self, name: str) -> TableDef | None:
        store = self.stores.get(name)
        if store is None or store.tdef.system:
            return None
        return store.tdef

    def restricted(self, name: str) -> TableDef | None:
        tdef = self.unrestricted(name)
        if tdef is None or not tdef.public:
            return None
        return tdef

    def policies(self, tdef: TableDef) -> TablePolicies | None:
        return policies_of(tdef)

    def branch_plans(self, tdef: TableDef, wheres: list[str], sender: str) -> list[ir.Node]:
        out = []
        for where in wheres:
            sql = f"SELECT * FROM {_quote(tdef.name)} WHERE {where}"
            lw = Lowerer(sql, Params({"sender": sender}), self.unrestricted)
            try:
                node = lw.query(_parse_branch(sql).copy())
            except StoreError as e:
                raise SchemaError(f"a policy of table {tdef.name!r}: {e.message}") from None
            if lw.as_of is not None:
                raise SchemaError(f"a policy of table {tdef.name!r} cannot use AS OF")
            out.append(node)
        return out

    # ---- plans

    def secure(self, root: ir.Node, sender: str, tables: list[str]) -> ir.Node:
        """Replace every scan of a policed table in ``root`` by what ``sender`` may see."""

        def visit(node: ir.Node) -> ir.Node:
            if isinstance(node, ir.Scan):
                return self._secure_scan(node, sender, tables)
            for f in dataclasses.fields(node):
                v = getattr(node, f.name)
                if isinstance(v, ir.Node):
                    setattr(node, f.name, visit(v))
                elif isinstance(v, list) and v and isinstance(v[0], ir.Node):
                    setattr(node, f.name, [visit(x) for x in v])
            return node

        return visit(root)

    def _secure_scan(self, scan: ir.Scan, sender: str, tables: list[str]) -> ir.Node:
        tdef = self.unrestricted(scan.table)
        pol = None if tdef is None else self.policies(tdef)
        if tdef is None or pol is None or pol.read is None:
            return scan
        branches = []
        for node in self.branch_plans(tdef, pol.read, sender):
            base = _base_scan(node)
            if scan.filter is not None:
                base.filter = scan.filter if base.filter is None else _and(base.filter, scan.filter)
            base.dispatch = list(scan.dispatch) + list(base.dispatch)
            base.alias = scan.alias
            n: ir.Node | None = node
            while n is not None:
                n.columns = list(scan.columns)
                n = _left_child(n)
            for s in ir.walk(node):
                if isinstance(s, ir.Scan) and s.table not in tables:
                    tables.append(s.table)
            branches.append(node)
        if len(branches) == 1:
            return branches[0]
        return ir.Union(branches, all=False, columns=list(scan.columns))


def _and(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    e = and_all([a, b])
    assert e is not None
    return e


def _left_child(n: ir.Node) -> ir.Node | None:
    if isinstance(n, ir.Filter | ir.Project):
        return n.input
    if isinstance(n, ir.SemiJoin):
        return n.left
    return None


def _base_scan(node: ir.Node) -> ir.Scan:
    n: ir.Node | None = node
    while n is not None and not isinstance(n, ir.Scan):
        if isinstance(n, ir.Project):
            raise SchemaError("a policy must keep every column of its table")
        n = _left_child(n)
    if n is None:
        raise SchemaError("a policy must be a predicate over its own table")
    return n


def lower_for(
    stores: Mapping[str, TableStore],
    sql: str,
    params: Any,
    sender: str | None,
    compiler: PolicyCompiler | None = None,
) -> ir.Query:
    """Lower ``sql`` as ``sender`` sees the database (``None``: the system, unrestricted)."""
    comp = compiler or PolicyCompiler(stores)
    if sender is None:
        return lower_sql(sql, params, comp.unrestricted)
    q = lower_sql(sql, params, comp.restricted)
    q.root = comp.secure(q.root, sender, q.tables)
    return q


def validate_policies(stores: Mapping[str, TableStore]) -> None:
    """Lower every policy once, so a bad predicate fails at install, not at first read."""
    comp = PolicyCompiler(stores)
    for store in stores.values():
        pol = comp.policies(store.tdef)
        if pol is None:
            continue
        for wheres in (pol.read or [], pol.write or []):
            for node in comp.branch_plans(store.tdef, wheres, _VALIDATION_SENDER):
                _base_scan(node)


# ---------------------------------------------------------------- row checks (reducers)


class _LiveTable:
    """The executor's table interface over the newest state (this transaction's writes)."""

    def __init__(self, store: TableStore) -> None:
        self._store = store
        self.name = store.name
        self.tdef = store.tdef

    def get(self, *pk: Any) -> Any:
        return self._store.get(pk[0] if len(pk) == 1 else pk)

    def find(self, index: str, *key: Any) -> list[Any]:
        return self._store.lookup(index, key[0] if len(key) == 1 else key)

    def range(
        self,
        index: str,
        lo: Any = None,
        hi: Any = None,
        *,
        lo_inclusive: bool = True,
        hi_inclusive: bool = True,
        reverse: bool = False,
    ) -> list[Any]:
        return self._store.range(index, lo, hi, lo_inclusive, hi_inclusive, reverse)

    def rows(self) -> list[Any]:
        return list(self._store.rows())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows())

    def count(self) -> int:
        return len(self._store)


class _LiveSnapshot:
    def __init__(self, stores: Mapping[str, TableStore]) -> None:
        self._stores = stores

    def table(self, name: str) -> _LiveTable:
        store = self._stores.get(name)
        if store is None:
            raise NoSuchTable(f"no table {name!r}")
        return _LiveTable(store)


RowTest = Callable[[tuple], bool]


class RowPolicy:
    """Per-row tests compiled from one table's policy branches for one sender."""

    def __init__(self, stores: Mapping[str, TableStore], branches: list[ir.Node] | None) -> None:
        """``branches`` None: every row passes."""
        self._stores = stores
        self.unrestricted = branches is None
        self._branches = [self._compile(b) for b in branches or []]

    def _compile(self, node: ir.Node) -> list[tuple[str, Any, Any]]:
        steps: list[tuple[str, Any, Any]] = []
        n: ir.Node | None = node
        while n is not None:
            if isinstance(n, ir.Scan):
                if n.filter is not None:
                    steps.append(("pred", compile_predicate(n.filter), None))
            elif isinstance(n, ir.Filter):
                steps.append(("pred", compile_predicate(n.predicate), None))
            elif isinstance(n, ir.SemiJoin):
                steps.append(("in", compile_expr(n.left_key), (n.right, compile_expr(n.right_key))))
            n = _left_child(n)
        return steps

    def tester(self) -> RowTest:
        """A test for many rows against the current state (subquery keys read once)."""
        keys: dict[int, set[Any]] = {}
        live = _LiveSnapshot(self._stores)

        def key_set(spec: tuple[ir.Node, Any]) -> set[Any]:
            got = keys.get(id(spec))
            if got is None:
                plan, fr = spec
                got = {freeze(v) for r in execute_plan(plan, live) if (v := fr(r)) is not None}  # type: ignore[arg-type]
                keys[id(spec)] = got
            return got

        if self.unrestricted:
            return _always

        def admits(row: tuple) -> bool:
            for steps in self._branches:
                for kind, f, spec in steps:
                    if kind == "pred":
                        if not f(row):
                            break
                    else:
                        v = f(row)
                        if v is None or freeze(v) not in key_set(spec):
                            break
                else:
                    return True
            return False

        return admits


def _always(row: tuple) -> bool:
    return True


class SecuredHandle(TableHandle):
    """A reducer's handle on a policed table, for a non-system caller."""

    def __init__(self, db: Database, store: TableStore, read: RowPolicy, write: RowPolicy) -> None:
        super().__init__(db, store)
        self._read = read
        self._write = write

    def _visible(self, rows: Any) -> list[Any]:
        test = self._read.tester()
        return [r for r in rows if test(r)]

    def _check_write(self, row: tuple, what: str) -> None:
        if not self._write.tester()(row):
            err = PolicyViolation(
                f"{what} on table {self.name!r} is not allowed by its row-level security policy"
            )
            self._tx().doomed = err
            raise err

    # ---- reads

    def get(self, *pk: Any) -> Any:
        row = super().get(*pk)
        return row if row is not None and self._read.tester()(row) else None

    def find(self, index: str, *key: Any) -> list[Any]:
        return self._visible(super().find(index, *key))

    def range(
        self,
        index: str,
        lo: Any = None,
        hi: Any = None,
        *,
        lo_inclusive: bool = True,
        hi_inclusive: bool = True,
        reverse: bool = False,
    ) -> list[Any]:
        rows = super().range(
            index, lo, hi, lo_inclusive=lo_inclusive, hi_inclusive=hi_inclusive, reverse=reverse
        )
        return self._visible(rows)

    def scan(self) -> Iterator[Any]:
        return iter(self._visible(list(super().scan())))

    def count(self) -> int:
        return len(self._visible(list(super().scan())))

    # ---- writes

    def insert(self, row: Mapping[str, Any] | None = None, /, **values: Any) -> Any:
        r = super().insert(row, **values)
        self._check_write(r, "insert")
        return r

    def update(self, row: Any, /, **changes: Any) -> Any:
        values = dict(row._asdict() if hasattr(row, "_asdict") else row)
        values.update(changes)  # the row written is the one at the *resulting* key
        pk = self._store.pk_of(self._build_preview(values))
        old = self._store.get(pk)
        if old is None or not self._read.tester()(old):
            err = PolicyViolation(
                f"update on table {self.name!r}: no visible row with this primary key"
            )
            self._tx().doomed = err
            raise err
        self._check_write(old, "update")
        r = super().update(row, **changes)
        self._check_write(r, "update")
        return r

    def _build_preview(self, values: dict[str, Any]) -> tuple:
        return tuple(values.get(c.name) for c in self._store.tdef.columns)

    def delete(self, *pk: Any) -> bool:
        old = self._store.get(self._key(pk))
        if old is None or not self._read.tester()(old):
            return False
        self._check_write(old, "delete")
        return super().delete(*pk)


class SecuredViews:
    """Caches the compiled per-sender policies of a database's tables for reducer handles."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[tuple[str, str], tuple[TableDef, RowPolicy, RowPolicy]] = {}
        self._handles: dict[str, TableHandle] = {}
        self.policed: list[TableStore] = []
        self._views: dict[str, DbView] = {}

    def reset(self, handles: dict[str, TableHandle]) -> None:
        """The schema changed: these are the plain handles now; forget built views."""
        self._handles = handles
        self.policed = [s for s in self.db.stores.values() if s.tdef.policies and not s.tdef.system]
        self._views = {}

    def view(self, sender: str) -> DbView:
        """``ctx.db`` for a non-system caller: policed tables behind ``SecuredHandle``s.

        Handles hold no transaction state, so one view per sender is built and reused
        (until the schema changes): a call pays a dict lookup, not a handle per table.
        """
        view = self._views.get(sender)
        if view is None:
            handles = dict(self._handles)
            for store in self.policed:
                h = self.handle(store, sender)
                if h is not None:
                    handles[store.name] = h
            view = DbView(handles)
            if len(self._views) >= 1024:
                self._views.pop(next(iter(self._views)))
            self._views[sender] = view
        return view

    def handle(self, store: TableStore, sender: str) -> TableHandle | None:
        """A secured handle, or None when the table has no policy."""
        tdef = store.tdef
        if not tdef.policies or tdef.system:
            return None
        hit = self._cache.get((tdef.name, sender))
        if hit is None or hit[0] is not tdef:
            comp = PolicyCompiler(self.db.stores)
            pol = comp.policies(tdef)
            assert pol is not None

            def plans(wheres: list[str] | None) -> list[ir.Node] | None:
                return None if wheres is None else comp.branch_plans(tdef, wheres, sender)

            read = RowPolicy(self.db.stores, plans(pol.read))
            write = read if pol.write is pol.read else RowPolicy(self.db.stores, plans(pol.write))
            if len(self._cache) > 4096:
                self._cache.clear()
            hit = (tdef, read, write)
            self._cache[(tdef.name, sender)] = hit
        return SecuredHandle(self.db, store, hit[1], hit[2])
