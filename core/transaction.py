"""A reducer's transaction and the API it sees: ``ctx`` and per-table handles.

One transaction at a time (single writer). Handles validate every value against the
declared column types before touching storage, and every storage change is recorded in the
transaction's ``touched`` maps and saved sequence values, so ``rollback`` restores rows,
indexes and sequences exactly. Handles refuse to work outside a running transaction.
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from core.errors import ConstraintViolation, NoSuchTable, StoreError
from core.storage.table import TableStore, Touched
from core.types import CHECKERS, check

if TYPE_CHECKING:
    from core.database import Database

_MISSING: Any = object()


class Transaction:
    __slots__ = (
        "caller",
        "doomed",
        "offset",
        "reducer",
        "saved_seqs",
        "schedule_ops",
        "timestamp",
        "touched",
    )

    def __init__(self, offset: int, timestamp: int, caller: str, reducer: str) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.caller = caller
        self.reducer = reducer
        self.touched: dict[TableStore, Touched] = {}
        self.saved_seqs: dict[TableStore, dict[int, int]] = {}
        self.schedule_ops = 0
        # set by a refused write (row-level security): the transaction can only roll back,
        # even if the reducer catches the exception
        self.doomed: StoreError | None = None

    def touched_for(self, store: TableStore) -> Touched:
        t = self.touched.get(store)
        if t is None:
            t = self.touched[store] = {}
        return t

    def rollback(self) -> None:
        for store, touched in self.touched.items():
            store.undo(touched)
        for store, seqs in self.saved_seqs.items():
            store.sequences.update(seqs)
        self.touched.clear()
        self.saved_seqs.clear()


class TableHandle:
    """Reads and writes on one table inside the current transaction."""

    __slots__ = ("_cols", "_db", "_store", "name")

    def __init__(self, db: Database, store: TableStore) -> None:
        self._db = db
        self._store = store
        self.name = store.name
        t = store.tdef
        self._cols = [
            (
                c.name,
                CHECKERS[c.type],
                c.type,
                c.nullable,
                c.has_default,
                c.default,
                c.auto_inc,
                i,
                f"{t.name}.{c.name}",
            )
            for i, c in enumerate(t.columns)
        ]

    def _tx(self) -> Transaction:
        tx = self._db._tx
        if tx is None:
            raise StoreError(f"table {self.name!r} used outside a reducer transaction")
        return tx

    def _build(self, values: Mapping[str, Any], tx: Transaction, fill_seq: bool) -> tuple:
        store = self._store
        out: list[Any] = []
        used = 0
        for (
            name,
            checker,
            ctype,
            nullable,
            has_default,
            default,
            auto_inc,
            pos,
            where,
        ) in self._cols:
            v = values.get(name, _MISSING)
            if v is _MISSING:
                if auto_inc and fill_seq:
                    v = self._next_seq(tx, pos)
                elif has_default:
                    v = default
                elif nullable:
                    v = None
                else:
                    raise ConstraintViolation(f"{where}: a value is required (NOT NULL)")
            else:
                used += 1
                if v is None and auto_inc and fill_seq:
                    v = self._next_seq(tx, pos)
                else:
                    if v is None:
                        if not nullable:
                            check(ctype, nullable, v, where)  # raises the NOT NULL error
                    else:
                        try:
                            v = checker(v)
                        except (TypeError, ValueError):
                            check(ctype, nullable, v, where)  # raises the typed error
                            raise
                    if auto_inc and fill_seq:
                        seqs = store.sequences
                        if v > seqs[pos]:
                            self._save_seq(tx)
                            seqs[pos] = v
            out.append(v)
        if used != len(values):
            known = {c[0] for c in self._cols}
            unknown = sorted(k for k in values if k not in known)
            raise ConstraintViolation(f"table {self.name!r} has no column(s) {unknown}")
        return tuple.__new__(store.row_type, out)

    def _save_seq(self, tx: Transaction) -> None:
        if self._store not in tx.saved_seqs:
            tx.saved_seqs[self._store] = dict(self._store.sequences)

    def _next_seq(self, tx: Transaction, pos: int) -> int:
        self._save_seq(tx)
        v = self._store.sequences[pos] + 1
        self._store.sequences[pos] = v
        return v

    def _key(self, pk: tuple[Any, ...]) -> Any:
        return pk[0] if len(pk) == 1 else pk

    # ---- writes ----

    def insert(self, row: Mapping[str, Any] | None = None, /, **values: Any) -> Any:
        """Insert a row given as a mapping and/or keywords; returns it (sequences filled)."""
        tx = self._tx()
        if row is not None:
            values = {**row, **values}
        r = self._build(values, tx, True)
        self._store.insert(r, tx.offset, tx.touched_for(self._store))
        return r

    def update(self, row: Any, /, **changes: Any) -> Any:
        """Replace the row with the same primary key by ``row`` (with ``changes`` applied)."""
        tx = self._tx()
        values = dict(row._asdict() if hasattr(row, "_asdict") else row)
        values.update(changes)
        r = self._build(values, tx, False)
        store = self._store
        pk = store.pk_of(r)
        if changes and hasattr(row, "_asdict") and store.pk_of(row) != pk:
            raise ConstraintViolation(f"update of {self.name}: the primary key cannot change")
        store.update(pk, r, tx.offset, tx.touched_for(store))
        return r

    def delete(self, *pk: Any) -> bool:
        """Delete the row with this primary key; False if there was none."""
        tx = self._tx()
        store = self._store
        return store.delete(self._key(pk), tx.offset, tx.touched_for(store)) is not None

    def delete_row(self, row: Any) -> bool:
        return self.delete(*[row[i] for i in self._store.pk_positions])

    # ---- reads (see this transaction's own writes) ----

    def get(self, *pk: Any) -> Any:
        self._tx()
        return self._store.get(self._key(pk))

    def find(self, index: str, *key: Any) -> list[Any]:
        """Rows whose ``index`` key equals ``key`` (hash or B-tree index)."""
        self._tx()
        return self._store.lookup(index, self._key(key))

    def find_one(self, index: str, *key: Any) -> Any:
        rows = self.find(index, *key)
        return rows[0] if rows else None

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
        """Rows with ``lo <= key <= hi`` on a B-tree index, in key order (None = open)."""
        self._tx()
        return self._store.range(index, lo, hi, lo_inclusive, hi_inclusive, reverse)

    def scan(self) -> Iterator[Any]:
        self._tx()
        return self._store.rows()

    def __iter__(self) -> Iterator[Any]:
        return self.scan()

    def count(self) -> int:
        self._tx()
        return len(self._store)


class DbView:
    """``ctx.db``: one attribute per table (``ctx.db.calls``), plus ``ctx.db["calls"]``."""

    def __init__(self, handles: dict[str, TableHandle]) -> None:
        self.__dict__.update(handles)
        self._handles = handles

    def __getitem__(self, name: str) -> TableHandle:
        try:
            return self._handles[name]
        except KeyError:
            raise NoSuchTable(f"no table {name!r}") from None

    def __getattr__(self, name: str) -> TableHandle:
        raise NoSuchTable(f"no table {name!r}")


class ReducerContext:
    """What a reducer receives: who called, when, a deterministic random source, tables."""

    __slots__ = ("_db", "_random", "_tx", "db")

    def __init__(self, db: Database, tx: Transaction) -> None:
        self._db = db
        self._tx = tx
        self.db: Any = db.view
        self._random: _random.Random | None = None

    @property
    def sender(self) -> str:
        return self._tx.caller

    @property
    def timestamp(self) -> int:
        """The transaction's timestamp in microseconds since the epoch (UTC)."""
        return self._tx.timestamp

    @property
    def offset(self) -> int:
        """The offset this transaction will commit at."""
        return self._tx.offset

    @property
    def reducer(self) -> str:
        return self._tx.reducer

    @property
    def random(self) -> _random.Random:
        """Seeded from (offset, timestamp): replaying the log reproduces every draw."""
        if self._random is None:
            self._random = _random.Random((self._tx.offset << 64) ^ self._tx.timestamp)
        return self._random

    def schedule(
        self,
        reducer: str,
        *,
        at: int | None = None,
        delay_us: int | None = None,
        every_us: int | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> int:
        """Run ``reducer`` at a time (or after a delay), optionally repeating; returns its id.

        The schedule is a row of the ``__schedule__`` table, so it survives restarts.
        """
        return self._db.scheduler.add(self, reducer, at, delay_us, every_us, dict(args or {}))

    def cancel_schedule(self, schedule_id: int) -> bool:
        return self._db.view["__schedule__"].delete(schedule_id)
