"""The server's own system module: request ids and sessions as rows, plus call wrapping.

Tables (``system=True``: invisible to SQL and subscriptions):

* ``__requests__`` (identity, request_key) -> reducer, commit offset, time, return value.
  A row is written *in the same transaction* as the reducer's effects, so an outcome is
  remembered exactly when the call committed, and replayed from the log after a restart.
* ``__sessions__`` token_hash -> identity, created/seen times, last offset delivered.
* ``__session_subs__`` (token_hash, query_key) -> query_id, sql, params, since-offset.

A call's request id is recorded by ``record_request``, which the server passes to
``Database.execute(..., then=...)``: it runs inside the reducer's own transaction after
the reducer returned, so the ``__requests__`` row commits (or rolls back) together with
the reducer's effects. The WAL logs the row changes, so replay rebuilds the rows without
re-running anything. The maintenance reducers are hidden from clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from core.module import Module, ReducerFn, reducer_def_from_function
from core.schema import ColumnDef, IndexDef, TableDef
from core.storage.table import TableStore
from core.transaction import ReducerContext
from core.types import ColumnType, Identity, Timestamp
from voicehub.auth.identities import HIDDEN as AUTH_HIDDEN
from voicehub.auth.identities import build_auth_module
from voicehub.auth.passkey_store import PASSKEY_REDUCERS, add_passkey_reducers, passkey_tables

REQUESTS = "__requests__"
SESSIONS = "__sessions__"
SESSION_SUBS = "__session_subs__"

ANONYMOUS_IDENTITY = "f" * 64
"""The caller of REST requests that present no credentials (an anonymous principal)."""

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

    @_reducer(m, "voicehub_session_rebind")
    def session_rebind(ctx: ReducerContext, token_hash: str, identity: Identity) -> None:
        t = ctx.db[SESSIONS]
        row = t.get(token_hash)
        if row is not None:
            t.update(row, identity=identity, seen_at=ctx.timestamp)

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
    """The server's modules and the names of their hidden maintenance reducers.

    ``module`` is the ``voicehub`` module above; ``auth`` the identity model
    (``voicehub.auth.identities``) with the passkey tables. Their reducers are hidden from
    clients, except the admin-only lifecycle reducers (``identity_activate`` ...).
    """

    def __init__(self) -> None:
        self.module = build_module()
        self.auth = build_auth_module(SESSIONS, SESSION_SUBS)
        for t in passkey_tables():
            self.auth.add_table(t)
        add_passkey_reducers(self.auth)
        self.system_modules: tuple[Module, ...] = (self.module, self.auth)
        self.hidden = frozenset(self.module.reducers) | AUTH_HIDDEN | PASSKEY_REDUCERS

    def modules(self, user: Iterable[Module]) -> list[Module]:
        """What to install: the server's modules first, then every user module."""
        return [*self.system_modules, *user]


def record_request(identity: str, key: str) -> Callable[[ReducerContext, Any], None]:
    """An in-transaction hook that stores the call's outcome under its request id."""

    def record(ctx: ReducerContext, value: Any) -> None:
        ctx.db[REQUESTS].insert(
            identity=identity,
            request_key=key,
            reducer=ctx.reducer,
            commit_offset=ctx.offset,
            committed_at=ctx.timestamp,
            value=value,
        )

    return record


def latest(stores: dict[str, TableStore], name: str) -> TableStore:
    """The newest committed state of a server table (the writer's view, like the scheduler).

    Durability is handled by the caller: whatever is answered from here is released to a
    client only once the offset it depends on is durable.
    """
    return stores[name]
