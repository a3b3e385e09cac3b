"""Arrangements: the integrated state of a stream indexed by a join key, and the registry
that lets circuits share them.

A join side reads its input's state *before* the commit (``old``) or *after* it (``new``)
for one key. Three kinds of side:

- ``PrivateSide``: an arrangement owned by one operator (inputs that are derived streams);
  ``old`` is the index, ``new`` adds this commit's delta; ``commit`` integrates the delta.
- ``SharedSide``: an arrangement of a filtered base table held by the registry and used by
  every circuit that joins that table on that key; the registry integrates it once per
  commit, after all circuits have read it.
- ``StoreSide``: the store's own primary-key or secondary index is the arrangement (no
  extra memory). Commit listeners run after the store applied the commit, so the index
  shows the *new* state and ``old = new - delta``.

NULL keys never match, so they are not indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from core.dbsp.zset import ZSet, zadd
from core.sql.exprc import compile_predicate
from core.sql.ordering import freeze_row
from core.storage.table import TableStore

KeyFn = Callable[[tuple], Any]
Index = dict[Any, ZSet]


def null_key(k: Any) -> bool:
    return k is None or (type(k) is tuple and any(v is None for v in k))


def group(delta: ZSet | None, key: KeyFn) -> Index:
    out: Index = {}
    if delta:
        if len(delta) == 1:
            for r, w in delta.items():
                k = key(r)
                return {} if null_key(k) else {k: {r: w}}
        for r, w in delta.items():
            k = key(r)
            if not null_key(k):
                out.setdefault(k, {})[r] = w
    return out


def integrate(index: Index, grouped: Index) -> None:
    for k, rows in grouped.items():
        bucket = index.get(k)
        if bucket is None:
            index[k] = dict(rows)
            continue
        for r, w in rows.items():
            zadd(bucket, r, w)
        if not bucket:
            del index[k]


def _plus(bucket: ZSet | None, delta: ZSet | None) -> Iterator[tuple[tuple, int]]:
    """The rows of ``bucket + delta`` (the state after this commit, for one key)."""
    if not delta:
        return iter(bucket.items()) if bucket else iter(())
    merged = dict(bucket) if bucket else {}
    for r, w in delta.items():
        zadd(merged, r, w)
    return iter(merged.items())


class Side:
    key: KeyFn

    def prepare(self, delta: ZSet | None) -> Index:
        """Group this commit's delta by key (and remember it for ``old``/``new``)."""
        self.pending = group(delta, self.key)
        return self.pending

    def old(self, k: Any) -> Iterator[tuple[tuple, int]]:
        raise NotImplementedError

    def new(self, k: Any) -> Iterator[tuple[tuple, int]]:
        raise NotImplementedError

    def commit(self) -> None:
        self.pending = {}

    def release(self) -> None:
        pass


class PrivateSide(Side):
    def __init__(self, key: KeyFn) -> None:
        self.key = key
        self.index: Index = {}
        self.pending: Index = {}

    def load(self, full: ZSet) -> None:
        integrate(self.index, group(full, self.key))

    def old(self, k: Any) -> Iterator[tuple[tuple, int]]:
        b = self.index.get(k)
        return iter(b.items()) if b else iter(())

    def new(self, k: Any) -> Iterator[tuple[tuple, int]]:
        return _plus(self.index.get(k), self.pending.get(k))

    def commit(self) -> None:
        if self.pending:
            integrate(self.index, self.pending)
        self.pending = {}


class SharedArrangement:
    """A registry-held arrangement of ``σ_filter(table)`` by ``key``."""

    def __init__(self, sig: tuple[Any, ...], key: KeyFn, store: TableStore, filt: Any) -> None:
        self.sig = sig
        self.table = store.name
        self.key = key
        self.refs = 0
        self.index: Index = {}
        self.pending: Index = {}
        self.offset = -1
        pred = compile_predicate(filt)
        self.pred = pred
        rows = [freeze_row(r) for r in store.rows() if pred is None or pred(r)]
        # a base table never holds duplicate rows (primary key), so weight 1 is exact
        integrate(self.index, group({r: 1 for r in rows} if rows else {}, key))

    def delta_of(self, ch: Any) -> ZSet:
        """The filtered, frozen change of this arrangement's table in one commit."""
        out: ZSet = {}
        pred = self.pred
        for rows, w in ((ch.deletes, -1), (ch.inserts, 1)):
            for r in rows:
                if pred is None or pred(r):
                    zadd(out, freeze_row(r), w)
        return out


class SharedSide(Side):
    def __init__(self, arr: SharedArrangement, registry: ArrangementRegistry) -> None:
        self.arr = arr
        self.key = arr.key
        self.registry = registry
        self.pending = {}

    def prepare(self, delta: ZSet | None) -> Index:
        self.pending = self.registry.pending_of(self.arr, delta)
        return self.pending

    def old(self, k: Any) -> Iterator[tuple[tuple, int]]:
        b = self.arr.index.get(k)
        return iter(b.items()) if b else iter(())

    def new(self, k: Any) -> Iterator[tuple[tuple, int]]:
        return _plus(self.arr.index.get(k), self.pending.get(k))

    def full(self) -> ZSet:
        out: ZSet = {}
        for rows in self.arr.index.values():
            out.update(rows)
        return out

    def commit(self) -> None:
        self.pending = {}

    def release(self) -> None:
        self.registry.release(self.arr)


class StoreSide(Side):
    """The store's index on the join columns, filtered by the scan's predicate."""

    def __init__(self, store: TableStore, index_name: str | None, key: KeyFn, filt: Any) -> None:
        from core.types import ColumnType

        self.store = store
        self.freeze = any(c.type == ColumnType.JSON for c in store.tdef.columns)
        self.index_name = index_name
        self.key = key
        self.pred = compile_predicate(filt)
        self.pending = {}

    def _current(self, k: Any) -> list[tuple]:
        s = self.store
        if self.index_name is None:
            row = s.get(k)
            rows = [] if row is None else [row]
        else:
            rows = s.lookup(self.index_name, k)
        pred = self.pred
        out = [r for r in rows if pred is None or pred(r)]
        return [freeze_row(r) for r in out] if self.freeze else out

    def new(self, k: Any) -> Iterator[tuple[tuple, int]]:
        return iter([(r, 1) for r in self._current(k)])

    def old(self, k: Any) -> Iterator[tuple[tuple, int]]:
        d = self.pending.get(k) if self.pending else None
        if not d:
            return self.new(k)
        cur: ZSet = {r: 1 for r in self._current(k)}
        for r, w in d.items():
            zadd(cur, r, -w)
        return iter(cur.items())


class ArrangementRegistry:
    """Shared arrangements by (table, filter, key); integrated once per commit."""

    def __init__(self) -> None:
        self.arrangements: dict[tuple[Any, ...], SharedArrangement] = {}
        self._touched: list[SharedArrangement] = []

    def acquire(
        self, table: str, filt: Any, key_sig: Any, key: KeyFn, store: TableStore
    ) -> SharedArrangement:
        sig = (table, repr(filt), repr(key_sig))
        arr = self.arrangements.get(sig)
        if arr is None:
            arr = self.arrangements[sig] = SharedArrangement(sig, key, store, filt)
        arr.refs += 1
        return arr

    def release(self, arr: SharedArrangement) -> None:
        arr.refs -= 1
        if arr.refs <= 0:
            self.arrangements.pop(arr.sig, None)

    def pending_of(self, arr: SharedArrangement, delta: ZSet | None) -> Index:
        """This commit's grouped delta of ``arr`` (computed once, by its first reader)."""
        if arr.offset != self.offset:
            arr.offset = self.offset
            arr.pending = group(delta, arr.key)
            self._touched.append(arr)
        return arr.pending

    offset = 0

    def begin(self, offset: int) -> None:
        self.offset = offset
        self._touched = []

    def end(self, changes: dict[str, Any]) -> None:
        """Integrate this commit into every shared arrangement, read by a circuit or not."""
        if not self.arrangements:
            return
        done = {id(a) for a in self._touched}
        for arr in self.arrangements.values():
            ch = changes.get(arr.table)
            if ch is not None and id(arr) not in done:
                d = arr.delta_of(ch)
                if d:
                    integrate(arr.index, group(d, arr.key))
        for arr in self._touched:
            integrate(arr.index, arr.pending)
            arr.pending = {}
        self._touched = []
