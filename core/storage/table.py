"""One table's committed and in-flight state: live rows, indexes, version chains, history.

The single writer mutates ``heads`` and the indexes in place while a transaction runs;
versions it creates carry ``begin = pending offset`` and so are invisible to every reader
snapshot (all snapshots are at committed offsets below it). ``finish`` stamps ends and
records history at commit; ``undo`` restores the exact pre-transaction state on rollback.
Invariants: ``heads`` holds exactly the live rows; every index holds exactly one entry per
live row; ``history`` holds every superseded version with ``end`` above the GC horizon.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

import msgspec

from core.errors import ConstraintViolation
from core.schema import TableDef
from core.storage.indexes import BTreeIndex, HashIndex, Index, make_index
from core.storage.versions import LIVE, History, Version
from core.types import ColumnType

_JSON = msgspec.json.Encoder()

Touched = dict[Any, Version | None]


class TableStore:
    def __init__(self, tdef: TableDef) -> None:
        self.tdef = tdef
        self.name = tdef.name
        self.row_type: type[tuple] = namedtuple(  # type: ignore[misc]
            f"{tdef.name}_row", [c.name for c in tdef.columns]
        )
        pk_idx = [tdef.column_index(c) for c in tdef.primary_key]
        self.pk_of = itemgetter(*pk_idx)
        self.pk_positions = tuple(pk_idx)
        self.heads: dict[Any, Version] = {}
        self.tombstones: dict[Any, Version] = {}
        self.history = History()
        self.indexes: dict[str, Index] = {ix.name: make_index(tdef, ix) for ix in tdef.indexes}
        self._index_list = list(self.indexes.values())
        self._unique = [ix for ix in self._index_list if ix.unique]
        self.sequences: dict[int, int] = {i: 0 for i, c in enumerate(tdef.columns) if c.auto_inc}
        self._json_cols = [i for i, c in enumerate(tdef.columns) if c.type == ColumnType.JSON]

    # ---- writer operations (inside a transaction; ``touched`` is the tx's record) ----

    def insert(self, row: tuple, pending: int, touched: Touched) -> None:
        pk = self.pk_of(row)
        if pk in self.heads:
            raise ConstraintViolation(
                f"primary key {self.name}({', '.join(self.tdef.primary_key)}) = {pk!r}"
                " already exists"
            )
        for ix in self._unique:
            ix.check_insert(row, pk)
        if pk not in touched:
            touched[pk] = None
        for ix in self._index_list:
            ix.add(row, pk)
        self.heads[pk] = Version(row, pending)

    def delete(self, pk: Any, pending: int, touched: Touched) -> tuple | None:
        v = self.heads.pop(pk, None)
        if v is None:
            return None
        if pk not in touched:
            touched[pk] = v
        for ix in self._index_list:
            ix.remove(v.row, pk)
        return v.row

    def update(self, pk: Any, row: tuple, pending: int, touched: Touched) -> tuple:
        """Replace the live row with primary key ``pk``; returns the previous row."""
        v = self.heads.get(pk)
        if v is None:
            raise ConstraintViolation(f"update of {self.name}: no row with primary key {pk!r}")
        old = v.row
        changed = [ix for ix in self._index_list if ix.key_of(old) != ix.key_of(row)]
        for ix in changed:
            if ix.unique:
                ix.check_insert(row, pk)
        if pk not in touched:
            touched[pk] = v
        for ix in changed:
            ix.remove(old, pk)
            ix.add(row, pk)
        if v.begin == pending:
            v.row = row
        else:
            self.heads[pk] = Version(row, pending)
        return old

    def undo(self, touched: Touched) -> None:
        """Roll back every change a failed transaction made to this table."""
        heads = self.heads
        for pk, orig in touched.items():
            cur = heads.get(pk)
            if cur is orig:
                continue
            if cur is not None:
                for ix in self._index_list:
                    ix.remove(cur.row, pk)
                del heads[pk]
        for pk, orig in touched.items():
            if orig is not None and heads.get(pk) is not orig:
                for ix in self._index_list:
                    ix.add(orig.row, pk)
                heads[pk] = orig

    def finish(self, touched: Touched, offset: int) -> tuple[list[tuple], list[tuple]]:
        """Commit this table's part of a transaction at ``offset``: (inserts, deletes)."""
        inserts: list[tuple] = []
        deletes: list[tuple] = []
        heads = self.heads
        for pk, orig in touched.items():
            final = heads.get(pk)
            if final is orig:
                continue
            if orig is not None and final is not None and self._same(orig.row, final.row):
                heads[pk] = orig  # net no-op update: keep the old version, no delta
                continue
            if orig is not None:
                orig.end = offset
                self.history.append(offset, pk, orig)
                deletes.append(orig.row)
                if final is None:
                    self.tombstones[pk] = orig
            if final is not None:
                final.older = orig if orig is not None else self.tombstones.pop(pk, None)
                inserts.append(final.row)
        return inserts, deletes

    def _same(self, a: tuple, b: tuple) -> bool:
        """Row equality that also tells json ``1``, ``1.0`` and ``true`` apart."""
        if a != b:
            return False
        return all(_JSON.encode(a[i]) == _JSON.encode(b[i]) for i in self._json_cols)

    def gc(self, horizon: int) -> int:
        """Forget superseded versions no reader at ``>= horizon`` can see; returns count."""
        h = self.history
        n = 0
        while True:
            end = h.oldest_end()
            if end is None or end > horizon:
                return n
            pk, v = h.pop_oldest()
            n += 1
            if self.tombstones.get(pk) is v:
                del self.tombstones[pk]
                continue
            x = self.heads.get(pk) or self.tombstones.get(pk)
            while x is not None and x.older is not v:
                x = x.older
            if x is not None:
                x.older = None

    # ---- replay (recovery): apply logged changes without constraint re-checks ----

    def apply_logged(
        self, inserts: list[tuple], deletes: list[Any], offset: int, keep_history: bool
    ) -> None:
        heads = self.heads
        for pk in deletes:
            v = heads.pop(pk)
            for ix in self._index_list:
                ix.remove(v.row, pk)
            if keep_history:
                v.end = offset
                self.history.append(offset, pk, v)
                self.tombstones[pk] = v
        for row in inserts:
            pk = self.pk_of(row)
            nv = Version(row, offset)
            if keep_history:
                nv.older = self.tombstones.pop(pk, None)
            for ix in self._index_list:
                ix.add(row, pk)
            heads[pk] = nv

    def load(self, rows: list[tuple], offset: int) -> None:
        """Bulk-load a snapshot's rows (all visible from ``offset``)."""
        heads = self.heads
        pk_of = self.pk_of
        for row in rows:
            heads[pk_of(row)] = Version(row, offset)
        for ix in self._index_list:
            if isinstance(ix, BTreeIndex):
                sk = ix.sort_key
                ix.bulk_load([(sk(v.row), pk) for pk, v in heads.items()])
            else:
                for pk, v in heads.items():
                    ix.add(v.row, pk)

    # ---- reads of the latest state (the writer's view) ----

    def get(self, pk: Any) -> tuple | None:
        v = self.heads.get(pk)
        return None if v is None else v.row

    def __len__(self) -> int:
        return len(self.heads)

    def rows(self) -> Iterator[tuple]:
        for v in list(self.heads.values()):
            yield v.row

    def index(self, name: str) -> Index:
        try:
            return self.indexes[name]
        except KeyError:
            raise ConstraintViolation(f"table {self.name!r} has no index {name!r}") from None

    def lookup(self, index: str, key: Any) -> list[tuple]:
        heads = self.heads
        return [heads[pk].row for pk in self.index(index).lookup(key)]

    def range(self, index: str, lo: Any, hi: Any, lo_inc: bool, hi_inc: bool, rev: bool) -> list:
        ix = self.index(index)
        if not isinstance(ix, BTreeIndex):
            raise ConstraintViolation(f"index {self.name}.{index} is a hash index: no ranges")
        heads = self.heads
        return [heads[pk].row for pk in ix.range_pks(lo, hi, lo_inc, hi_inc, rev)]

    # ---- reads at a committed offset (MVCC snapshot) ----

    def get_at(self, pk: Any, at: int) -> tuple | None:
        v = self.heads.get(pk) or self.tombstones.get(pk)
        while v is not None and v.begin > at:
            v = v.older
        if v is not None and at < v.end:
            return v.row
        return None

    def versions_at(self, at: int) -> list[Version]:
        """Every version visible at ``at``, materialized (safe to consume across awaits)."""
        out = [v for v in list(self.heads.values()) if v.begin <= at]
        out.extend(v for _, v in self.history.ended_after(at) if v.begin <= at)
        return out

    def lookup_at(self, index: str, key: Any, at: int) -> list[tuple]:
        ix = self.index(index)
        out = [v.row for pk in ix.lookup(key) if (v := self.heads[pk]).begin <= at]
        kf = ix.key_of
        out.extend(
            v.row for _, v in self.history.ended_after(at) if v.begin <= at and kf(v.row) == key
        )
        return out

    def range_at(
        self, index: str, lo: Any, hi: Any, lo_inc: bool, hi_inc: bool, rev: bool, at: int
    ) -> list[tuple]:
        ix = self.index(index)
        if not isinstance(ix, BTreeIndex):
            raise ConstraintViolation(f"index {self.name}.{index} is a hash index: no ranges")
        heads = self.heads
        found = [v for pk in ix.range_pks(lo, hi, lo_inc, hi_inc) if (v := heads[pk]).begin <= at]
        found.extend(
            v
            for _, v in self.history.ended_after(at)
            if v.begin <= at and ix.in_range(ix.key_of(v.row), lo, hi, lo_inc, hi_inc)
        )
        sk = ix.sort_key
        pk_of = self.pk_of
        found.sort(key=lambda v: (sk(v.row), pk_of(v.row)), reverse=rev)
        return [v.row for v in found]

    def hash_index(self, name: str) -> HashIndex | None:
        ix = self.indexes.get(name)
        return ix if isinstance(ix, HashIndex) else None


def is_live(v: Version) -> bool:
    return v.end == LIVE
