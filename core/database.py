"""The database: modules, the single-writer commit path, listeners, snapshots, AS OF.

Commit path (all on the caller's thread, synchronous): validate arguments -> run the
reducer against one ``Transaction`` -> on any error roll back and raise -> otherwise assign
the next dense offset and a strictly increasing timestamp, stamp versions, append the
commit record to the WAL batch, hand the ``Changeset`` to every listener in order, collect
garbage below the horizon. ``call`` (async) and ``call_sync`` then wait until the commit is
durable under the ``durable`` policy. Invariants: reducers are the only writers; a failed
reducer leaves no trace; offsets are dense; reads at ``visible_offset`` never show a commit
that is not yet durable.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from core.changeset import Changeset, TableChange
from core.config import StoreConfig
from core.datadir import lock, prune
from core.durability import DurabilityGate
from core.errors import (
    HistoryUnavailable,
    NoSuchReducer,
    ReducerFailed,
    SchemaError,
    StorageFailed,
    StoreClosed,
    StoreError,
)
from core.history import CommitHistory, read_from_disk
from core.module import Module, ReducerFn, bind_arguments
from core.reads import ReadSnapshot
from core.recovery import RecoveredState, recover
from core.rls import SecuredViews, validate_policies
from core.scheduler import SCHEDULE_TABLE, Scheduler
from core.schema import ColumnDef, ReducerDef, TableDef, to_builtins
from core.snapshot import TableImage, write_snapshot
from core.storage.table import TableStore
from core.transaction import DbView, ReducerContext, TableHandle, Transaction
from core.types import ColumnType, check
from core.wal.format import ENCODER, CommitRecord
from core.wal.writer import WalWriter

log = logging.getLogger("voicehub.store")

SYSTEM_IDENTITY = "0" * 64
"""The caller of lifecycle, scheduled and internal transactions."""

MODULES_TABLE = TableDef(
    name="__modules__",
    columns=(
        ColumnDef("name", ColumnType.TEXT),
        ColumnDef("installed_at", ColumnType.TIMESTAMP),
        ColumnDef("definition", ColumnType.JSON),
    ),
    primary_key=("name",),
    public=False,
    system=True,
)

Listener = Callable[[Changeset], None]
Then = Callable[[ReducerContext, Any], None]
"""Runs inside a call's transaction after the reducer returned (its writes commit with it)."""


class CommitResult:
    __slots__ = ("changeset", "offset", "timestamp", "value")

    def __init__(self, offset: int, timestamp: int, value: Any, changeset: Changeset) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.value = value
        self.changeset = changeset

    def __repr__(self) -> str:
        return f"CommitResult(offset={self.offset}, value={self.value!r})"


def now_us() -> int:
    return time.time_ns() // 1000


class Database:
    """Open with ``Database.open(modules, StoreConfig(...))``; close with ``close()``."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.stores: dict[str, TableStore] = {}
        self.reducers: dict[str, tuple[ReducerDef, ReducerFn]] = {}
        self.lifecycle: dict[str, list[str]] = {"client_connected": [], "client_disconnected": []}
        self.modules: list[Module] = []
        self.view = DbView({})
        self._secured = SecuredViews(self)
        self.scheduler = Scheduler(self)
        self.offset = 0
        self.timestamp = 0
        self._tx: Transaction | None = None
        self._listeners: list[Listener] = []
        self.history = CommitHistory()
        self._wal: WalWriter | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self.gate = DurabilityGate(0)
        self.last_snapshot_offset = 0
        self.snapshot_due = False
        self._snapshot_lock = threading.Lock()
        self.recovered: RecoveredState | None = None

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, modules: Iterable[Module], config: StoreConfig | None = None) -> Database:
        db = cls(config or StoreConfig())
        try:
            db._open(list(modules))
        except BaseException:
            db._release_lock()
            raise
        return db

    def _open(self, modules: list[Module]) -> None:
        cfg = self.config
        if cfg.data_dir is not None and cfg.durability != "none":
            self._lock_fd = lock(cfg.data_dir)
            # Recovery allocates millions of long-lived objects: collecting while it runs
            # only rescans them; afterwards they move to the permanent generation.
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                state = recover(cfg.data_dir, repair=True, timestamps_kept=cfg.history_commits + 1)
            finally:
                gc.freeze()
                if was_enabled:
                    gc.enable()
            self.recovered = state
            if state.log_end != state.offset:
                raise StoreError(
                    f"log ends at offset {state.log_end} but the snapshot is at {state.offset}"
                )
            self.stores = state.stores
            self.offset = state.offset
            self.timestamp = state.timestamp
            self.last_snapshot_offset = state.snapshot_offset
            self.history.restore(state.timestamps, state.touched, self.offset, self.stores.values())
            self.gate = DurabilityGate(self.offset)
            assert state.active_segment is not None
            self._wal = WalWriter(
                cfg.data_dir / "wal",
                state.active_segment,
                state.active_size,
                cfg.durability,
                cfg.interval_ms,
                cfg.segment_bytes,
                self.gate.advance,
                self._on_wal_failure,
            )
            log.info(
                "store opened at offset %d in %.2f s (snapshot %d, %d rows, %d commits replayed)",
                self.offset,
                state.seconds,
                state.snapshot_offset,
                state.rows_loaded,
                state.replayed,
            )
        self._install(modules)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _install(self, modules: list[Module]) -> None:
        """Register reducers, create missing tables (one schema commit), run new inits."""
        declared: list[TableDef] = [MODULES_TABLE, SCHEDULE_TABLE]
        for m in modules:
            declared.extend(m.tables)
            for rname, (rdef, fn) in m.reducers.items():
                if rname in self.reducers:
                    raise SchemaError(f"reducer {rname!r} is declared by two modules")
                self.reducers[rname] = (rdef, fn)
                if rdef.kind in self.lifecycle:
                    self.lifecycle[rdef.kind].append(rname)
        new: list[TableDef] = []
        seen: set[str] = set()
        for t in declared:
            if t.name in seen:
                raise SchemaError(f"table {t.name!r} is declared twice")
            seen.add(t.name)
            stored = self.stores.get(t.name)
            if stored is None:
                new.append(t)
            elif msgspec.structs.replace(stored.tdef, policies=t.policies) != t:
                raise SchemaError(
                    f"table {t.name!r}: the declared schema differs from the stored one"
                    " (schema migrations are not supported yet)"
                )
        # policies are code, not data: the declared ones apply, checked before any commit
        validate_policies({t.name: TableStore(t) for t in declared})
        for t in declared:
            stored = self.stores.get(t.name)
            if stored is not None and stored.tdef.policies != t.policies:
                stored.tdef = t
        if new:

            def create(ctx: ReducerContext) -> None:
                for t in new:
                    self.stores[t.name] = TableStore(t)
                self._rebuild_view()

            self._run_internal("__schema__", create, [], schema=new)
        self._rebuild_view()
        self.modules = modules
        installed = self.stores["__modules__"]
        for m in modules:
            if installed.get(m.name) is not None:
                continue
            self._run_internal(f"{m.name}_install", self._installer(m), [])

    def _installer(self, m: Module) -> ReducerFn:
        inits = [fn for rdef, fn in m.reducers.values() if rdef.kind == "init"]

        def install(ctx: ReducerContext) -> None:
            ctx.db["__modules__"].insert(
                name=m.name, installed_at=ctx.timestamp, definition=to_builtins(m.definition())
            )
            for s in m.schedules:
                self.scheduler.add(ctx, s.reducer, None, None, s.every_us, {})
            for fn in inits:
                fn(ctx)

        return install

    def _rebuild_view(self) -> None:
        handles = {n: TableHandle(self, s) for n, s in self.stores.items()}
        self.view = DbView(handles)
        self._secured.reset(handles)

    # ---------------------------------------------------------------- writing

    def execute(
        self,
        reducer: str,
        args: Any = None,
        caller: str = SYSTEM_IDENTITY,
        then: Then | None = None,
        bypass_rls: bool = False,
    ) -> CommitResult:
        """Run a reducer in one transaction and commit it (does not wait for durability).

        ``then(ctx, value)``, if given, runs in the same transaction after the reducer
        returned: the server records a call's request id this way, so the record commits
        (or rolls back) together with the reducer's effects. The reducer's table handles
        enforce row-level security for ``caller`` unless it is the system identity or
        ``bypass_rls`` is set (a declared system identity).
        """
        entry = self.reducers.get(reducer)
        if entry is None or entry[0].kind != "reducer":
            raise NoSuchReducer(f"no reducer named {reducer!r}")
        rdef, fn = entry
        return self._run(
            reducer, fn, bind_arguments(rdef, args), caller, then=then, bypass_rls=bypass_rls
        )

    def call_sync(
        self, reducer: str, args: Any = None, caller: str = SYSTEM_IDENTITY
    ) -> CommitResult:
        """``execute`` then block until the commit is durable (scripts, tests)."""
        res = self.execute(reducer, args, caller)
        if self.config.durability == "durable":
            self.gate.wait(res.offset)
        return res

    async def call(
        self, reducer: str, args: Any = None, caller: str = SYSTEM_IDENTITY
    ) -> CommitResult:
        """``execute`` then await durability (under ``durable``; immediate otherwise)."""
        res = self.execute(reducer, args, caller)
        if self._wal is not None and self.config.durability == "durable":
            await self.gate.wait_async(res.offset)
        return res

    def run_lifecycle(self, kind: str, caller: str) -> list[CommitResult]:
        """Run the ``client_connected``/``client_disconnected`` reducers of every module."""
        out = []
        for name in self.lifecycle[kind]:
            _, fn = self.reducers[name]
            out.append(self._run(name, fn, [], caller))
        return out

    def _run_internal(
        self, name: str, fn: ReducerFn, argv: list[Any], schema: list[TableDef] | None = None
    ) -> CommitResult:
        return self._run(name, fn, argv, SYSTEM_IDENTITY, schema=schema)

    def _run(
        self,
        name: str,
        fn: ReducerFn,
        argv: list[Any],
        caller: str,
        schema: list[TableDef] | None = None,
        then: Then | None = None,
        bypass_rls: bool = True,
    ) -> CommitResult:
        if self._closed:
            raise StoreClosed("the store is closed")
        if self.gate.error is not None:
            raise StorageFailed(
                f"the write-ahead log failed ({self.gate.error!r}); the store refuses writes"
                " until it is restarted"
            )
        if self._tx is not None:
            raise StoreError("reducers cannot call other reducers through the database")
        offset = self.offset + 1
        ts = now_us()
        if ts <= self.timestamp:
            ts = self.timestamp + 1
        tx = Transaction(offset, ts, caller, name)
        self._tx = tx
        try:
            ctx = ReducerContext(self, tx)
            if not bypass_rls and caller != SYSTEM_IDENTITY and self._secured.policed:
                ctx.db = self._secured.view(caller)
            value = fn(ctx, *argv)
            if value is not None:
                value = check(ColumnType.JSON, True, value, f"return value of {name!r}")
            if then is not None:
                then(ctx, value)
            if tx.doomed is not None:
                raise tx.doomed
        except BaseException as e:
            self._tx = None
            tx.rollback()
            if schema is not None:
                for t in schema:
                    self.stores.pop(t.name, None)
                self._rebuild_view()
            if isinstance(e, StoreError) or not isinstance(e, Exception):
                raise
            raise ReducerFailed(f"reducer {name!r} failed: {type(e).__name__}: {e}") from e
        self._tx = None
        return self._commit(tx, argv, value, schema)

    def _commit(
        self, tx: Transaction, argv: list[Any], value: Any, schema: list[TableDef] | None
    ) -> CommitResult:
        offset = tx.offset
        changes: dict[str, TableChange] = {}
        logged: list[tuple[str, list[Any], list[Any]]] = []
        wal = self._wal
        for store, touched in tx.touched.items():
            ins, dels = store.finish(touched, offset)
            if ins or dels:
                changes[store.name] = TableChange(ins, dels)
                if dels:
                    self.history.versioned.add(store)
                if wal is not None:
                    pk_of = store.pk_of
                    logged.append((store.name, ins, [pk_of(r) for r in dels]))
        self.offset = offset
        self.timestamp = tx.timestamp
        self.history.record(tx.timestamp, tuple(changes))
        if wal is not None:
            seqs = [
                (s.name, pos, s.sequences[pos])
                for s, saved in tx.saved_seqs.items()
                for pos, old in saved.items()
                if s.sequences[pos] != old
            ]
            rec = CommitRecord(
                offset,
                tx.timestamp,
                tx.reducer,
                tx.caller,
                argv,
                logged,
                seqs,
                [to_builtins(t) for t in schema] if schema else [],
                value,
            )
            try:
                payload = ENCODER.encode(rec)
            except Exception as e:  # values were validated: this is a bug, and fatal
                self._on_wal_failure(e)
                raise StorageFailed(f"commit {offset} could not be encoded: {e!r}") from e
            wal.append(offset, payload)
        cs = Changeset(offset, tx.timestamp, tx.reducer, tx.caller, argv, changes)
        for listener in self._listeners:
            try:
                listener(cs)
            except Exception:
                log.exception("commit listener %r failed at offset %d", listener, offset)
        self._collect()
        cfg = self.config
        if cfg.snapshot_every and offset - self.last_snapshot_offset >= cfg.snapshot_every:
            self.snapshot_due = True
        return CommitResult(offset, tx.timestamp, value, cs)

    def _on_wal_failure(self, exc: BaseException) -> None:
        log.critical("STORAGE FAILURE: %r - the store now refuses every write", exc)
        self.gate.fail(exc)

    # ---------------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(changeset)`` synchronously after every commit, in offset order."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # ---------------------------------------------------------------- MVCC

    @property
    def visible_offset(self) -> int:
        """The newest offset readers may see: durable under ``durable``, else committed."""
        if self._wal is not None and self.config.durability == "durable":
            return min(self.gate.durable, self.offset)
        return self.offset

    @property
    def history_floor(self) -> int:
        """The oldest offset answerable from memory."""
        return self.history.floor

    def commits_after(self, offset: int) -> list[tuple[int, tuple[str, ...]]] | None:
        """Every commit after ``offset`` up to the newest, with the tables it changed, from
        memory (in offset order); None when some of them are no longer known here."""
        return self.history.commits_after(offset, self.offset)

    def _collect(self) -> None:
        self.history.collect(min(self.offset - self.config.history_commits, self.visible_offset))

    def timestamp_of(self, offset: int) -> int:
        ts = self.history.timestamp_of(offset)
        if ts is not None:
            return ts
        if offset == self.offset:
            return self.timestamp
        raise HistoryUnavailable(f"offset {offset} is outside the in-memory history")

    def snapshot(self, offset: int | None = None) -> ReadSnapshot:
        """A pinned read view at ``offset`` (default: ``visible_offset``)."""
        at = self.visible_offset if offset is None else offset
        if at > self.visible_offset or at < 0:
            raise HistoryUnavailable(
                f"offset {at} is not committed and durable yet (visible: {self.visible_offset})"
            )
        if at < self.history_floor:
            raise HistoryUnavailable(
                f"offset {at} is older than the in-memory history (from {self.history_floor});"
                " use as_of() to read it from snapshots and the log"
            )
        ts = self.timestamp_of(at) if at > 0 else 0
        self.history.pin(at)
        return ReadSnapshot(self.stores, at, ts, self.history.unpin)

    def offset_at_time(self, timestamp: int) -> int | None:
        """The last in-memory offset committed at or before ``timestamp``, if answerable."""
        return self.history.offset_at_time(timestamp, self.visible_offset)

    def as_of(self, offset: int | None = None, timestamp: int | None = None) -> ReadSnapshot:
        """Read the state at an offset or a timestamp: from memory, else snapshots + log."""
        if (offset is None) == (timestamp is None):
            raise ValueError("as_of() takes exactly one of offset= or timestamp=")
        if timestamp is not None:
            if timestamp >= self.timestamp:
                return self.snapshot()
            off = self.offset_at_time(timestamp)
            if off is not None and off >= self.history_floor:
                return self.snapshot(off)
            return self._as_of_disk(None, timestamp)
        assert offset is not None
        if offset >= self.history_floor:
            return self.snapshot(offset)
        return self._as_of_disk(offset, None)

    def reads_from_disk(self, offset: int | None = None, timestamp: int | None = None) -> bool:
        """Whether ``as_of`` for this point must rebuild it from snapshots and the log (slow:
        callers on an event loop should run that read on a worker thread)."""
        if timestamp is not None:
            if timestamp >= self.timestamp:
                return False
            off = self.offset_at_time(timestamp)
            return off is None or off < self.history_floor
        return offset is not None and offset < self.history_floor

    def _as_of_disk(self, offset: int | None, timestamp: int | None) -> ReadSnapshot:
        if self._wal is None:
            raise HistoryUnavailable("this store keeps no log: only in-memory history")
        return read_from_disk(self.config, offset, timestamp)

    # ---------------------------------------------------------------- snapshots

    def capture(self) -> tuple[int, int, list[TableImage]]:
        """The visible state as table images (on the writer's thread; cheap copy of refs)."""
        if self._wal is not None and self.config.durability == "durable":
            # sequences are not versioned: capture only when visible_offset == offset
            self.gate.wait(self.offset, timeout=60)
        at = self.visible_offset
        ts = self.timestamp_of(at) if at > 0 else 0
        images = [
            TableImage(s.tdef, [v.row for v in s.versions_at(at)], dict(s.sequences))
            for s in self.stores.values()
        ]
        return at, ts, images

    def take_snapshot(self) -> Path | None:
        """Write a snapshot of the visible state now (blocking), then prune old files."""
        if self.config.data_dir is None or self._wal is None:
            return None
        at, ts, images = self.capture()
        return self.write_captured(at, ts, images)

    def write_captured(self, at: int, ts: int, images: list[TableImage]) -> Path | None:
        """Second half of a snapshot; may run on a worker thread."""
        assert self.config.data_dir is not None
        with self._snapshot_lock:
            if at <= self.last_snapshot_offset and at > 0:
                self.snapshot_due = False
                return None
            self.gate.wait(at, timeout=60)
            path = write_snapshot(self.config.data_dir / "snapshots", at, ts, images)
            self.last_snapshot_offset = at
            self.snapshot_due = False
            prune(self.config.data_dir, self.config.keep_snapshots)
            return path

    # ---------------------------------------------------------------- closing

    def close(self, snapshot: bool = True) -> None:
        """Flush the log, write a final snapshot (if asked), release the data directory."""
        if self._closed:
            return
        try:
            if self._wal is not None and self.gate.error is None:
                self._wal_flush()
                if snapshot and self.offset > self.last_snapshot_offset:
                    self.take_snapshot()
        finally:
            self._closed = True
            if self._wal is not None:
                self._wal.close()
            self._release_lock()

    def _wal_flush(self) -> None:
        """Make everything appended durable now (interval policy: do not wait a tick)."""
        if self._wal is None:
            return
        if self.config.durability == "interval":
            deadline = time.monotonic() + 60
            while self.gate.durable < self.offset and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            self.gate.wait(self.offset, timeout=60)

    @property
    def closed(self) -> bool:
        return self._closed
