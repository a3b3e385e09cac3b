"""Secondary indexes over the *current* rows of a table: hash (equality) and B-tree (ranges).

Invariant: an index holds exactly one entry per live row (key -> primary key), updated in
place by the writer and restored on rollback; older versions are found through the table's
history instead, so current reads never filter stale entries. B-tree keys sort NULL first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

from sortedcontainers import SortedList

from core.errors import ConstraintViolation
from core.schema import IndexDef, TableDef


class _Low:
    """Sorts before every value; stands for NULL in B-tree keys and for open lower bounds."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return other is not self

    def __le__(self, other: object) -> bool:
        return True

    def __gt__(self, other: object) -> bool:
        return False

    def __ge__(self, other: object) -> bool:
        return other is self

    def __repr__(self) -> str:
        return "LOW"


class _High:
    """Sorts after every value; used for open and prefix upper bounds."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return other is self

    def __gt__(self, other: object) -> bool:
        return other is not self

    def __ge__(self, other: object) -> bool:
        return True

    def __repr__(self) -> str:
        return "HIGH"


LOW: Any = _Low()
HIGH: Any = _High()


class _Bucket(set):
    """Several primary keys under one hash key (a lone key is stored bare to save memory)."""

    __slots__ = ()


def key_function(tdef: TableDef, columns: tuple[str, ...]) -> Callable[[tuple], Any]:
    """Row -> key: the bare value for one column, a tuple for several."""
    idx = [tdef.column_index(c) for c in columns]
    return itemgetter(*idx)


def _null_safe(kf: Callable[[tuple], Any], composite: bool) -> Callable[[tuple], Any]:
    if composite:
        return lambda row: tuple(LOW if v is None else v for v in kf(row))

    def one(row: tuple) -> Any:
        v = kf(row)
        return LOW if v is None else v

    return one


def has_null(key: Any, composite: bool) -> bool:
    if composite:
        return any(v is None for v in key)
    return key is None


class Index:
    """Common interface; ``key_of(row)`` gives the lookup key of a row."""

    kind: str = ""

    def __init__(self, tdef: TableDef, idef: IndexDef) -> None:
        self.tdef = tdef
        self.idef = idef
        self.name = idef.name
        self.unique = idef.unique
        self.composite = len(idef.columns) > 1
        self.key_of = key_function(tdef, idef.columns)

    def where(self, key: Any) -> str:
        cols = ", ".join(self.idef.columns)
        return f"unique index {self.tdef.name}.{self.name} ({cols}) already holds {key!r}"

    def check_insert(self, row: tuple, pk: Any) -> None:
        raise NotImplementedError

    def add(self, row: tuple, pk: Any) -> None:
        raise NotImplementedError

    def remove(self, row: tuple, pk: Any) -> None:
        raise NotImplementedError

    def lookup(self, key: Any) -> list[Any]:
        raise NotImplementedError


class HashIndex(Index):
    kind = "hash"

    def __init__(self, tdef: TableDef, idef: IndexDef) -> None:
        super().__init__(tdef, idef)
        self.map: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.map)

    def check_insert(self, row: tuple, pk: Any) -> None:
        if self.unique:
            key = self.key_of(row)
            other = self.map.get(key, _MISSING)
            if other is not _MISSING and other != pk and not has_null(key, self.composite):
                raise ConstraintViolation(self.where(key))

    def add(self, row: tuple, pk: Any) -> None:
        key = self.key_of(row)
        m = self.map
        cur = m.get(key, _MISSING)
        if cur is _MISSING:
            m[key] = pk
        elif type(cur) is _Bucket:
            cur.add(pk)
        else:
            m[key] = _Bucket((cur, pk))

    def remove(self, row: tuple, pk: Any) -> None:
        key = self.key_of(row)
        m = self.map
        cur = m[key]
        if type(cur) is _Bucket:
            cur.discard(pk)
            if len(cur) == 1:
                m[key] = next(iter(cur))
        else:
            del m[key]

    def lookup(self, key: Any) -> list[Any]:
        cur = self.map.get(key, _MISSING)
        if cur is _MISSING:
            return []
        if type(cur) is _Bucket:
            return list(cur)
        return [cur]


class BTreeIndex(Index):
    """Ordered (key, pk) pairs; equality, ranges and ordered iteration."""

    kind = "btree"

    def __init__(self, tdef: TableDef, idef: IndexDef) -> None:
        super().__init__(tdef, idef)
        nullable = any(tdef.columns[tdef.column_index(c)].nullable for c in idef.columns)
        self.sort_key = _null_safe(self.key_of, self.composite) if nullable else self.key_of
        self.entries = SortedList()

    def __len__(self) -> int:
        return len(self.entries)

    def encode(self, key: Any) -> Any:
        if self.composite:
            return tuple(LOW if v is None else v for v in key)
        return LOW if key is None else key

    def check_insert(self, row: tuple, pk: Any) -> None:
        if self.unique:
            key = self.key_of(row)
            if has_null(key, self.composite):
                return
            for other in self.lookup(key):
                if other != pk:
                    raise ConstraintViolation(self.where(key))

    def add(self, row: tuple, pk: Any) -> None:
        self.entries.add((self.sort_key(row), pk))

    def remove(self, row: tuple, pk: Any) -> None:
        self.entries.remove((self.sort_key(row), pk))

    def bulk_load(self, pairs: list[tuple[Any, Any]]) -> None:
        self.entries = SortedList(pairs)

    def lookup(self, key: Any) -> list[Any]:
        k = self.encode(key)
        return [pk for _, pk in self.entries.irange((k, LOW), (k, HIGH))]

    def range_pks(
        self,
        lo: Any = None,
        hi: Any = None,
        lo_inclusive: bool = True,
        hi_inclusive: bool = True,
        reverse: bool = False,
    ) -> Iterator[Any]:
        """Primary keys of rows with lo <= key <= hi in key order; None = unbounded."""
        lo_b = (LOW,) if lo is None else ((self.encode(lo), LOW if lo_inclusive else HIGH),)
        hi_b = (HIGH,) if hi is None else ((self.encode(hi), HIGH if hi_inclusive else LOW),)
        for _, pk in self.entries.irange(lo_b[0], hi_b[0], reverse=reverse):
            yield pk

    def in_range(self, key: Any, lo: Any, hi: Any, lo_inclusive: bool, hi_inclusive: bool) -> bool:
        k = self.encode(key)
        if lo is not None:
            lk = self.encode(lo)
            if k < lk or (k == lk and not lo_inclusive):
                return False
        if hi is not None:
            hk = self.encode(hi)
            if k > hk or (k == hk and not hi_inclusive):
                return False
        return True


_MISSING: Any = object()


def make_index(tdef: TableDef, idef: IndexDef) -> Index:
    return BTreeIndex(tdef, idef) if idef.kind == "btree" else HashIndex(tdef, idef)
