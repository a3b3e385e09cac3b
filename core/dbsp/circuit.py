"""Builds a DBSP circuit from a logical plan and drives it commit by commit.

One operator per plan node; ``Sort`` (ORDER BY without LIMIT) is dropped: subscription
results are multisets and clients order them. Join sides are chosen here: a base-table
input joined on the columns of one of the store's indexes reads that index directly
(``StoreSide``); another base-table input shares a registry arrangement (``SharedSide``);
derived inputs and the left input of a LEFT JOIN keep a private one. Invariant: per commit,
only operators above a changed table run, each once, children before parents.
"""

from __future__ import annotations

from typing import Any

from core.changeset import TableChange
from core.dbsp.aggregate import Aggregate
from core.dbsp.arrangement import (
    ArrangementRegistry,
    PrivateSide,
    SharedSide,
    Side,
    StoreSide,
)
from core.dbsp.distinct import Distinct
from core.dbsp.filter import Filter
from core.dbsp.join import Join
from core.dbsp.operator import Operator
from core.dbsp.project import Project
from core.dbsp.semijoin import SemiJoin
from core.dbsp.source import Source
from core.dbsp.topk import TopK
from core.dbsp.union import Union
from core.dbsp.zset import ZSet
from core.errors import UnsupportedSql
from core.sql import ir
from core.sql.exprc import compile_key
from core.storage.table import TableStore


class Circuit:
    def __init__(
        self, root: ir.Node, stores: dict[str, TableStore], registry: ArrangementRegistry
    ) -> None:
        self.stores = stores
        self.registry = registry
        self.sources: list[Source] = []
        self.root = self._build(root)
        self.tables = self.root.tables

    # ---- building

    def _side(self, node: ir.Node, op: Operator, keys: list[ir.Expr], private: bool) -> Side:
        key = compile_key(keys)
        if private or not isinstance(node, ir.Scan):
            return PrivateSide(key)
        store = self.stores[node.table]
        if all(isinstance(k, ir.ColRef) for k in keys):
            positions = tuple(k.index for k in keys)  # type: ignore[attr-defined]
            if positions == store.pk_positions:
                return StoreSide(store, None, key, node.filter)
            for ix in store.indexes.values():
                cols = tuple(store.tdef.column_index(c) for c in ix.idef.columns)
                if cols == positions:
                    return StoreSide(store, ix.name, key, node.filter)
        arr = self.registry.acquire(node.table, node.filter, keys, key, store)
        return SharedSide(arr, self.registry)

    def _build(self, n: ir.Node) -> Operator:
        if isinstance(n, ir.Scan):
            src = Source(n, self.stores[n.table])
            self.sources.append(src)
            return src
        if isinstance(n, ir.Filter):
            return Filter(self._build(n.input), n.predicate)
        if isinstance(n, ir.Project):
            return Project(self._build(n.input), n.exprs)
        if isinstance(n, ir.Join):
            left = self._build(n.left)
            right = self._build(n.right)
            ls = self._side(n.left, left, n.left_keys, private=n.kind == "left")
            rs = self._side(n.right, right, n.right_keys, private=False)
            return Join(left, right, n.kind, ls, rs, n.residual, len(n.right.columns))
        if isinstance(n, ir.SemiJoin):
            return SemiJoin(self._build(n.left), self._build(n.right), n.left_key, n.right_key)
        if isinstance(n, ir.Aggregate):
            return Aggregate(self._build(n.input), n.group, n.aggs)
        if isinstance(n, ir.Distinct):
            return Distinct(self._build(n.input))
        if isinstance(n, ir.TopK):
            return TopK(self._build(n.input), n.order, n.limit, n.offset)
        if isinstance(n, ir.Sort):
            return self._build(n.input)
        if isinstance(n, ir.Union):
            u: Operator = Union([self._build(i) for i in n.inputs])
            return u if n.all else Distinct(u)
        raise UnsupportedSql(f"no incremental operator for {type(n).__name__}")

    # ---- running

    def init(self) -> ZSet:
        """Build every operator's state from the current tables; the full result."""
        return self._init(self.root)

    def _init(self, op: Operator) -> ZSet:
        if isinstance(op, Source):
            return op.init([])
        return op.init([self._init(i) for i in op.inputs])

    def step(self, changes: dict[str, TableChange]) -> ZSet | None:
        """The change of the result caused by one commit's table changes."""
        return self._step(self.root, changes)

    def _step(self, op: Operator, changes: dict[str, Any]) -> ZSet | None:
        if op.tables.isdisjoint(changes):
            return None
        if type(op) is Source:
            return op.change(changes[op.table])
        inputs = op.inputs
        if len(inputs) == 1:
            d = self._step(inputs[0], changes)
            return None if d is None else op.step((d,))
        deltas = [self._step(i, changes) for i in inputs]
        for d in deltas:
            if d is not None:
                return op.step(deltas)
        return None

    def release(self) -> None:
        self.root.release()
