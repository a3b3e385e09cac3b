"""The server's own system module: request ids and sessions as rows, plus call wrapping.

Tables (``system=True``: invisible to SQL and subscriptions):

* ``__requests__`` (identity, request_key) -> reducer, commit offset, time, return value.
  A row is written *in the same transaction* as the reducer's effects, so an outcome is
  remembered exactly when the call committed, and replayed from the log after a restart.
* ``__sessions__`` token_hash -> identity, created/seen times, last offset delivered.
* ``__session_subs__`` (token_hash, query_key) -> query_id, sql, params, since-offset.

How a reducer's transaction learns its request id: reducers cannot call other reducers,
so every user reducer is wrapped (``ServerSystem.wrap``) at installation. The server sets
``pending`` right before the synchronous ``Database.execute`` and clears it right after;
the wrapper, still inside the transaction, inserts the ``__requests__`` row after the
reducer returned. Invariant: ``pending`` is only ever set around one ``execute`` on the
event loop, and the wrapper checks the reducer name, so no other transaction (scheduled,
lifecycle, internal) can pick it up. The WAL logs the row changes, so replay rebuilds the
rows without re-running anything. The maintenance reducers are hidden from clients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from core.module import Module, ReducerFn, reducer_def_from_function
from core.schema import ColumnDef, IndexDef, TableDef
from core.storage.table import TableStore
from core.transaction import ReducerContext
from core.types import ColumnType, Identity, Timestamp, check

REQUESTS = "__requests__"
SESSIONS = "__sessions__"
SESSION_SUBS = "__session_subs__"

ANONYMOUS_IDENTITY = "f" * 64
"""The caller of REST requests that present no session token."""

_T = ColumnType


def _col(name: str, t: ColumnType, nullable: bool = False) -> ColumnDef:
    return ColumnDef(name, t, nullable=nullable)


REQUESTS_TABLE = TableDef(
    name=REQUESTS,
    columns=(
        _col("identity", _T.IDENTITY),
        _col("request_key", _T.TEXT),
        _col("reducer", _T.TEXT),
        _col("commit_offset", _T.INT64),
        _col("committed_at", _T.TIMESTAMP),
        _col("value", _T.JSON, nullable=True),
    ),
    primary_key=("identity", "request_key"),
    indexes=(IndexDef("by_time", ("committed_at",), kind="btree"),),
    public=False,
    system=True,
)

SESSIONS_TABLE = TableDef(
    name=SESSIONS,
    columns=(
        _col("token_hash", _T.TEXT),
        _col("identity", _T.IDENTITY),
        _col("created_at", _T.TIMESTAMP),
        _col("seen_at", _T.TIMESTAMP),
        _col("last_offset", _T.INT64),
    ),
    primary_key=("token_hash",),
    public=False,
    system=True,
)

SESSION_SUBS_TABLE = TableDef(
    name=SESSION_SUBS,
    columns=(
        _col("token_hash", _T.TEXT),
        _col("query_key", _T.TEXT),
        _col("query_id", _T.JSON),
        _col("sql", _T.TEXT),
        _col("params", _T.JSON, nullable=True),
        _col("since", _T.INT64),
    ),
    primary_key=("token_hash", "query_key"),
    indexes=(IndexDef("by_session", ("token_hash",)),),
    public=False,
    system=True,
)


class PendingRequest(NamedTuple):
    identity: str
    key: str
    reducer: str


def _reducer(m: Module, name: str) -> Callable[[ReducerFn], ReducerFn]:
    def add(fn: ReducerFn) -> ReducerFn:
        m.add_reducer(reducer_def_from_function(fn, name, "reducer", None), fn)
        return fn

    return add


def build_module() -> Module:
    """The ``voicehub`` module: the tables above and their (hidden) maintenance reducers."""
    m = Module("voicehub")
    for t in (REQUESTS_TABLE, SESSIONS_TABLE, SESSION_SUBS_TABLE):
        m.add_table(t)

    @_reducer(m, "voicehub_session_open")
    def session_open(ctx: ReducerContext, token_hash: str, identity: Identity) -> None:
        t = ctx.db[SESSIONS]
        row = t.get(token_hash)
        if row is None:
            t.insert(
                token_hash=token_hash,
                identity=identity,
                created_at=ctx.timestamp,
                seen_at=ctx.timestamp,
                last_offset=0,
            )
        else:
            t.update(row, seen_at=ctx.timestamp)

    @_reducer(m, "voicehub_session_seen")
    def session_seen(ctx: ReducerContext, token_hash: str, last_offset: int) -> None:
        t = ctx.db[SESSIONS]
        row = t.get(token_hash)
        if row is not None:
            t.update(row, seen_at=ctx.timestamp, last_offset=max(row.last_offset, last_offset))

    @_reducer(m, "voicehub_sub_put")
    def sub_put(
        ctx: ReducerContext,
        token_hash: str,
        query_key: str,
        query_id: Any,
        sql: str,
        params: Any | None,
        since: int,
    ) -> None:
        t = ctx.db[SESSION_SUBS]
        row = t.get(token_hash, query_key)
        values = {"query_id": query_id, "sql": sql, "params": params, "since": since}
        if row is None:
            t.insert(token_hash=token_hash, query_key=query_key, **values)
        else:
            t.update(row, **values)

    @_reducer(m, "voicehub_sub_drop")
    def sub_drop(ctx: ReducerContext, token_hash: str, query_key: str) -> None:
        ctx.db[SESSION_SUBS].delete(token_hash, query_key)

    @_reducer(m, "voicehub_expire")
    def expire(ctx: ReducerContext, requests_before: Timestamp, limit: int, sessions: list) -> int:
        reqs = ctx.db[REQUESTS]
        old = reqs.range("by_time", None, requests_before, hi_inclusive=False)
        for row in old[:limit]:
            reqs.delete_row(row)
        subs = ctx.db[SESSION_SUBS]
        for h in sessions:
            for s in subs.find("by_session", h):
                subs.delete_row(s)
            ctx.db[SESSIONS].delete(h)
        return min(len(old), limit)

    return m


class ServerSystem:
    """The server module, the hidden reducer names and the request-id side channel."""

    def __init__(self) -> None:
        self.module = build_module()
        self.hidden = frozenset(self.module.reducers)
        self.pending: PendingRequest | None = None

    def modules(self, user: Iterable[Module]) -> list[Module]:
        """What to install: this module first, then every user module with wrapped reducers."""
        return [self.module, *(self.wrap(m) for m in user)]

    def wrap(self, m: Module) -> Module:
        """A copy of ``m`` whose callable reducers record their request id (see above)."""
        w = Module(m.name)
        w.tables = list(m.tables)
        w.schedules = list(m.schedules)
        for name, (rdef, fn) in m.reducers.items():
            w.reducers[name] = (rdef, self._wrap_fn(fn) if rdef.kind == "reducer" else fn)
        return w

    def _wrap_fn(self, fn: ReducerFn) -> ReducerFn:
        @functools.wraps(fn)
        def reducer(ctx: ReducerContext, *args: Any) -> Any:
            value = fn(ctx, *args)
            p = self.pending
            if p is not None and p.reducer == ctx.reducer:
                self.pending = None
                value = check(_T.JSON, True, value, f"return value of {ctx.reducer!r}")
                ctx.db[REQUESTS].insert(
                    identity=p.identity,
                    request_key=p.key,
                    reducer=p.reducer,
                    commit_offset=ctx.offset,
                    committed_at=ctx.timestamp,
                    value=value,
                )
            return value

        return reducer


def latest(stores: dict[str, TableStore], name: str) -> TableStore:
    """The newest committed state of a server table (the writer's view, like the scheduler).

    Durability is handled by the caller: whatever is answered from here is released to a
    client only once the offset it depends on is durable.
    """
    return stores[name]
