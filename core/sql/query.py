"""Ad-hoc SQL queries against a database: lower, pick the snapshot, execute, describe.

``run_query`` reads one MVCC snapshot: the point named by ``FOR SYSTEM_TIME AS OF`` (an
offset or a timestamp) when the query has one, else the newest visible offset. The
snapshot is always closed before returning, so a query never holds back garbage
collection. System tables (``TableDef.system``) are invisible to SQL; for a ``sender``
(any caller but the system) private tables are too, and row-level security policies are
folded into the plan (``core.rls``) before it runs.
``run_query_async`` is the same for an event loop: an AS OF point that must be rebuilt from
snapshots and the log is read on a worker thread (that state is private to the thread);
every other read runs inline, because live MVCC structures belong to the loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.rls import lower_for
from core.sql.executor import execute_plan
from core.sql.ir import Query

if TYPE_CHECKING:
    from core.database import Database
    from core.reads import ReadSnapshot


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str | None]  # ColumnType values; None where the type is unknown
    rows: list[tuple]
    offset: int  # the offset of the snapshot the rows were read from


def _lower(db: Database, sql: str, params: Any, sender: str | None = None) -> Query:
    return lower_for(db.stores, sql, params, sender)


def run_query(
    db: Database,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    sender: str | None = None,
) -> QueryResult:
    """Run one read-only query; raises ``SqlError``/``UnsupportedSql`` for bad SQL.

    ``sender`` is the identity the query runs as: row-level security and private tables
    apply to it. ``None`` is the system (every row of every non-system table).
    """
    return _run(db, _lower(db, sql, params, sender))


async def run_query_async(
    db: Database,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    sender: str | None = None,
) -> QueryResult:
    """``run_query`` for an event loop: slow AS OF reads from disk go to a worker thread."""
    q = _lower(db, sql, params, sender)
    if db.reads_from_disk(q.as_of_offset, q.as_of_timestamp):
        return await asyncio.to_thread(_run, db, q)
    return _run(db, q)


def _run(db: Database, q: Query) -> QueryResult:
    snap: ReadSnapshot
    if q.as_of_offset is not None:
        snap = db.as_of(offset=q.as_of_offset)
    elif q.as_of_timestamp is not None:
        snap = db.as_of(timestamp=q.as_of_timestamp)
    else:
        snap = db.snapshot()
    try:
        rows = execute_plan(q.root, snap)
        offset = snap.offset
    finally:
        snap.close()
    cols = q.root.columns
    return QueryResult(
        columns=[c.name for c in cols],
        types=[c.type.value if c.type is not None else None for c in cols],
        rows=rows,
        offset=offset,
    )
