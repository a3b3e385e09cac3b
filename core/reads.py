"""Read-only views of the committed state at one offset (MVCC snapshots).

A ``ReadSnapshot`` pins its offset so the writer's garbage collection keeps every version
it can see; reads never block the writer and stay consistent across ``await`` points.
Every method materializes its result before returning, so nothing iterates live dicts
while the writer changes them. Close it (or use ``with``) to release the pin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from core.errors import NoSuchTable, StoreClosed
from core.schema import TableDef
from core.storage.table import TableStore


class SnapshotTable:
    __slots__ = ("_at", "_snap", "_store", "name", "tdef")

    def __init__(self, snap: ReadSnapshot, store: TableStore) -> None:
        self._snap = snap
        self._store = store
        self._at = snap.offset
        self.name = store.name
        self.tdef: TableDef = store.tdef

    def _key(self, parts: tuple[Any, ...]) -> Any:
        return parts[0] if len(parts) == 1 else parts

    def get(self, *pk: Any) -> Any:
        self._snap._check()
        return self._store.get_at(self._key(pk), self._at)

    def find(self, index: str, *key: Any) -> list[Any]:
        self._snap._check()
        return self._store.lookup_at(index, self._key(key), self._at)

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
        self._snap._check()
        return self._store.range_at(index, lo, hi, lo_inclusive, hi_inclusive, reverse, self._at)

    def rows(self) -> list[Any]:
        """Every row visible at the snapshot's offset (unordered)."""
        self._snap._check()
        return [v.row for v in self._store.versions_at(self._at)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows())

    def count(self) -> int:
        return len(self.rows())


class ReadSnapshot:
    """The committed state as of ``offset`` (commit timestamp ``timestamp``)."""

    def __init__(
        self,
        stores: dict[str, TableStore],
        offset: int,
        timestamp: int,
        release: Callable[[int], None] | None,
    ) -> None:
        self._stores = stores
        self.offset = offset
        self.timestamp = timestamp
        self._release = release
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"snapshot at offset {self.offset} was closed")

    def table(self, name: str) -> SnapshotTable:
        self._check()
        store = self._stores.get(name)
        if store is None:
            raise NoSuchTable(f"no table {name!r} at offset {self.offset}")
        return SnapshotTable(self, store)

    def tables(self) -> list[TableDef]:
        return [s.tdef for s in self._stores.values()]

    def has_table(self, name: str) -> bool:
        return name in self._stores

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._release is not None:
                self._release(self.offset)

    def __enter__(self) -> ReadSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
