"""In-process clients of the server: provider adapters and media workers call reducers and
subscribe through the same paths as a WebSocket client, without a socket.

A ``LocalClient`` acts for one principal (usually a declared system identity). Its calls go
through the hub's ``CallService`` (request ids remembered in the same transaction, so a
retry after a restart returns the stored outcome) and return only once the commit is
durable. Its subscriptions are ordinary subscriptions of the hub's manager; the commit hook
only appends each commit's deltas to one queue per client, and a pump task applies them to
the row caches (``voicehub.client.cache.Subscription``) in offset order after the commit is
durable - durable before visible, every subscription of the client moved together per
commit, callbacks run on the event loop and never inside a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from core.errors import StoreError
from core.sql.query import run_query_async
from core.subscriptions import Delta
from core.subscriptions import Subscription as CoreSubscription
from voicehub.auth.principal import Principal
from voicehub.client.cache import Changes, Subscription
from voicehub.client.errors import ServerError
from voicehub.client.keys import single_table
from voicehub.client.wire import CallOutcome, QueryRows
from voicehub.server.errors import ApiError
from voicehub.server.hub import Hub

log = logging.getLogger("voicehub.local")

_Pending = tuple[int, list[tuple[Subscription, Delta]]]


class LocalClient:
    """A client of ``hub`` acting as ``principal``, in the server's own process."""

    def __init__(self, hub: Hub, principal: Principal, name: str = "local") -> None:
        self.hub = hub
        self.principal = principal
        self.name = name
        self.last_offset = 0
        self._subs: dict[CoreSubscription, Subscription] = {}
        self._by_id: dict[Any, CoreSubscription] = {}
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._next_id = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._closed = False
        hub.mgr.hooks.append(self._on_deltas)
        self._pump: asyncio.Task[None] | None = None  # started by the first subscription

    @property
    def identity(self) -> str:
        return self.principal.identity

    async def close(self) -> None:
        """Drop every subscription and stop delivering (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):
            self.hub.mgr.hooks.remove(self._on_deltas)
        for core_sub in list(self._subs):
            self.hub.mgr.unsubscribe(core_sub)
        self._subs.clear()
        self._by_id.clear()
        self._release(self.hub.db.offset)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def __aenter__(self) -> LocalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- calls

    def _check(self) -> None:
        if self._closed:
            raise ServerError("closed", f"local client {self.name!r} is closed")

    async def call(
        self,
        reducer: str,
        args: Any = None,
        *,
        request_id: str | int | None = None,
        timeout: float | None = None,
    ) -> Any:
        out = await self.call_outcome(reducer, args, request_id=request_id, timeout=timeout)
        return out.value

    async def call_outcome(
        self,
        reducer: str,
        args: Any = None,
        *,
        request_id: str | int | None = None,
        timeout: float | None = None,
    ) -> CallOutcome:
        """Run (or replay, by ``request_id``) a reducer; returns once the commit is durable
        and this client's subscriptions hold its effects."""
        self._check()
        hub = self.hub
        try:
            with hub.inflight():
                out = hub.calls.call(self.principal, reducer, args or {}, request_id)
        except ApiError as e:
            raise ServerError(e.code, e.message, getattr(e, "replayed", False)) from None
        except StoreError as e:
            raise ServerError(e.code, e.message) from None
        wait = self._caught_up(out.offset)
        await (wait if timeout is None else asyncio.wait_for(wait, timeout))
        return CallOutcome(request_id, out.value, out.offset, out.replayed)

    async def _caught_up(self, offset: int) -> None:
        """Wait until ``offset`` is durable and its deltas are in this client's caches."""
        await self.hub.wait_durable(offset)
        if self._queue and self._queue[0][0] <= offset and not self._closed:
            f: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((offset, f))
            await f

    async def query(
        self, sql: str, params: Any = None, *, timeout: float | None = None
    ) -> QueryRows:
        self._check()
        await self.hub.wait_durable(self.hub.db.offset)  # see every committed write
        try:
            res = await run_query_async(self.hub.db, sql, params, self.principal.sender)
        except StoreError as e:
            raise ServerError(e.code, e.message) from None
        return QueryRows(res.columns, res.types, res.rows, res.offset)

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(
        self,
        sql: str,
        params: Any = None,
        *,
        query_id: str | int | None = None,
        key: Sequence[str] | Literal["auto"] | None = "auto",
        as_dict: bool | None = None,
        on_insert: Callable[[Any], object] | None = None,
        on_delete: Callable[[Any], object] | None = None,
        on_update: Callable[[Any, Any], object] | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribe; the initial rows are in the cache (and seen by the callbacks) on return."""
        self._check()
        if query_id is None:
            self._next_id += 1
            query_id = f"{self.name}-q{self._next_id}"
        if query_id in self._by_id:
            raise ValueError(f"query id {query_id!r} is already subscribed")
        names = self._key_names(sql) if key == "auto" else key
        sub = Subscription(self, query_id, sql, params, names, bool(as_dict), False)
        if on_insert is not None:
            sub.on_insert(on_insert)
        if on_delete is not None:
            sub.on_delete(on_delete)
        if on_update is not None:
            sub.on_update(on_update)
        hub = self.hub
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"voicehub-local-{self.name}"
            )
        try:
            core_sub, rows = hub.mgr.subscribe(sql, params, self.principal.sender)
        except (StoreError, ApiError) as e:
            raise ServerError(e.code, e.message) from None
        offset = hub.db.offset
        self._subs[core_sub] = sub
        self._by_id[query_id] = core_sub
        await hub.wait_durable(offset)  # the initial rows may include undurable commits
        ch = sub._reset(list(core_sub.columns), list(core_sub.types), list(rows), offset)
        sub.ready.set_result(None)
        sub._fire(ch)
        return sub

    def _key_names(self, sql: str) -> tuple[str, ...] | None:
        table = single_table(sql)
        store = self.hub.db.stores.get(table) if table is not None else None
        return tuple(store.tdef.primary_key) if store is not None else None

    async def _unsubscribe(self, sub: Subscription) -> None:
        core_sub = self._by_id.pop(sub.query_id, None)
        if core_sub is None:
            return
        self._subs.pop(core_sub, None)
        self.hub.mgr.unsubscribe(core_sub)
        sub.active = False
        sub._wake()

    def _on_deltas(self, offset: int, updates: dict[CoreSubscription, Delta]) -> None:
        """Inside a commit: queue this client's part of it (never awaits, never applies)."""
        mine = [(s, d) for cs, d in updates.items() if (s := self._subs.get(cs)) is not None]
        if mine:
            self._queue.append((offset, mine))
            self._wake.set()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                offset = queue[0][0]
                await self.hub.wait_durable(offset)
                _, entries = queue.popleft()
                changes: list[Changes] = []
                for sub, d in entries:
                    if sub.active:
                        changes.append(sub._apply(list(d.inserts), list(d.deletes), offset, False))
                self.last_offset = offset
                for ch in changes:  # callbacks after every subscription of the commit moved
                    ch.subscription._fire(ch)
                self._release(offset)

    def _release(self, offset: int) -> None:
        """Wake the calls whose commit's deltas (if any) are applied: every queued entry
        up to their offset is delivered."""
        if self._queue:
            offset = max(offset, self._queue[0][0] - 1)
        else:
            offset = max(offset, self.hub.db.offset)
        keep = []
        for off, f in self._waiters:
            if off <= offset or self._closed:
                if not f.done():
                    f.set_result(None)
            else:
                keep.append((off, f))
        self._waiters = keep
