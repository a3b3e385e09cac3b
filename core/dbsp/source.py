"""Source: a base table's change for one commit, filtered by the scan's pushed predicate.

Incremental rule (linear): Δout = σ_filter(Δtable). ``init`` reads the table's current
rows, through an index when the filter pins an indexed column to a constant.
Rows of tables with json columns are frozen (hashable) here and thawed at the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from core.changeset import TableChange
from core.dbsp.operator import Operator
from core.dbsp.zset import ZSet, zadd
from core.sql import ir
from core.sql.exprc import compile_predicate
from core.sql.ordering import freeze_row
from core.storage.table import TableStore
from core.types import ColumnType


class Source(Operator):
    def __init__(self, scan: ir.Scan, store: TableStore) -> None:
        super().__init__([])
        self.scan = scan
        self.store = store
        self.table = scan.table
        self.tables = frozenset([scan.table])
        self.pred = compile_predicate(scan.filter)
        self.has_json = any(c.type == ColumnType.JSON for c in store.tdef.columns)

    def _rows(self, rows: list[Any], w: int, out: ZSet) -> None:
        pred = self.pred
        fz = freeze_row if self.has_json else None
        for r in rows:
            if pred is None or pred(r):
                zadd(out, fz(r) if fz else r, w)

    def change(self, ch: TableChange) -> ZSet | None:
        pred = self.pred
        if not self.has_json and len(ch.inserts) + len(ch.deletes) == 1:
            if ch.inserts:  # the common single-row commit, without the general loop
                r, w = ch.inserts[0], 1
            else:
                r, w = ch.deletes[0], -1
            return {r: w} if pred is None or pred(r) else None
        out: ZSet = {}
        self._rows(ch.deletes, -1, out)
        self._rows(ch.inserts, 1, out)
        return out or None

    def current(self) -> list[Any]:
        """The table's current rows that pass the filter (index-assisted when possible)."""
        store = self.store
        cands: list[Any] | None = None
        for pos, value in self.scan.dispatch:
            if store.pk_positions == (pos,):
                row = store.get(value)
                cands = [] if row is None else [row]
                break
            for ix in store.indexes.values():
                if [store.tdef.column_index(c) for c in ix.idef.columns] == [pos]:
                    cands = store.lookup(ix.name, value)
                    break
            if cands is not None:
                break
        rows = list(store.rows()) if cands is None else cands
        pred = self.pred
        return [r for r in rows if pred is None or pred(r)]

    def init(self, full: list[ZSet]) -> ZSet:
        out: ZSet = {}
        self._rows(self.current(), 1, out)
        return out

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:  # pragma: no cover - not used
        raise AssertionError("sources are fed by change()")


def thaw(row: tuple) -> tuple:
    """Undo ``freeze_row``: json values come back as Python objects."""
    if any(type(v) is tuple and len(v) == 2 and v[0] == "__json__" for v in row):
        return tuple(
            msgspec.json.decode(v[1])
            if type(v) is tuple and len(v) == 2 and v[0] == "__json__"
            else v
            for v in row
        )
    return row
