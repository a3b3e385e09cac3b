"""Scheduled reducers: the schedule is the ``__schedule__`` table, so it survives restarts.

A schedule row says which reducer to run, with which arguments, at which time, and (for
repeating schedules) every how many microseconds. Firing a schedule is one transaction
that advances or deletes the row *and* runs the reducer, so a crash can neither lose nor
double a firing. If the reducer fails, its changes roll back and a second transaction
still advances/deletes the row, so a broken schedule cannot spin.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from core.errors import ArgumentError, NoSuchReducer, StoreError
from core.module import bind_arguments
from core.schema import ColumnDef, IndexDef, TableDef
from core.types import ColumnType

if TYPE_CHECKING:
    from core.database import CommitResult, Database
    from core.transaction import ReducerContext

log = logging.getLogger("voicehub.scheduler")

SCHEDULE_TABLE = TableDef(
    name="__schedule__",
    columns=(
        ColumnDef("id", ColumnType.INT64, auto_inc=True),
        ColumnDef("reducer", ColumnType.TEXT),
        ColumnDef("args", ColumnType.JSON, nullable=True),
        ColumnDef("at", ColumnType.TIMESTAMP),
        ColumnDef("every_us", ColumnType.INT64, nullable=True),
    ),
    primary_key=("id",),
    indexes=(IndexDef("by_at", ("at",), kind="btree"),),
    public=False,
    system=True,
)


def next_time(at: int, every: int, now: int) -> int:
    """The first ``at + k*every`` strictly after ``now`` (missed firings are not repeated)."""
    nxt = at + every
    if nxt <= now:
        nxt = now + every - ((now - at) % every)
    return nxt


class Scheduler:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        ctx: ReducerContext,
        reducer: str,
        at: int | None,
        delay_us: int | None,
        every_us: int | None,
        args: dict[str, Any],
    ) -> int:
        entry = self.db.reducers.get(reducer)
        if entry is None or entry[0].kind != "reducer":
            raise NoSuchReducer(f"cannot schedule {reducer!r}: no such reducer")
        bind_arguments(entry[0], args)
        if every_us is not None and every_us <= 0:
            raise ArgumentError("every_us must be positive")
        if at is None:
            at = ctx.timestamp + (delay_us if delay_us is not None else (every_us or 0))
        row = ctx.db["__schedule__"].insert(reducer=reducer, args=args, at=at, every_us=every_us)
        return int(row.id)

    def next_at(self) -> int | None:
        store = self.db.stores["__schedule__"]
        rows = store.range("by_at", None, None, True, True, False)
        return int(rows[0].at) if rows else None

    def due(self, now: int) -> list[Any]:
        store = self.db.stores["__schedule__"]
        return store.range("by_at", None, now, True, True, False)

    def fire(self, schedule_id: int) -> CommitResult | None:
        """Run one due schedule in its own transaction; None if it no longer exists."""
        db = self.db
        row: Any = db.stores["__schedule__"].get(schedule_id)
        if row is None:
            return None
        entry = db.reducers.get(row.reducer)

        def advance(ctx: ReducerContext) -> bool:
            t = ctx.db["__schedule__"]
            cur = t.get(schedule_id)
            if cur is None:
                return False
            if cur.every_us:
                t.update(cur, at=next_time(cur.at, cur.every_us, ctx.timestamp))
            else:
                t.delete(schedule_id)
            return True

        if entry is None:
            log.error("schedule %d names unknown reducer %r; dropping it", schedule_id, row.reducer)
            return db._run_internal("__schedule_drop__", lambda ctx: advance(ctx), [])
        rdef, fn = entry
        try:
            argv = bind_arguments(rdef, row.args or {})

            def body(ctx: ReducerContext, *a: Any) -> Any:
                if not advance(ctx):
                    return None
                return fn(ctx, *a)

            return db._run_internal(rdef.name, body, argv)
        except StoreError as e:
            log.warning("scheduled reducer %r (schedule %d) failed: %s", rdef.name, schedule_id, e)
            return db._run_internal("__schedule_skip__", lambda ctx: advance(ctx), [])
