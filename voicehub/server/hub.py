"""The server's shared state: one subscription manager, the connections, their sessions.

The hub's subscription hook runs synchronously inside every commit that changes some
subscription (``SubscriptionManager.hooks``) and turns that commit's deltas into exactly
one ``tx_update`` per affected connection, carrying every subscription of that connection
the commit changed - so a client's subscriptions move together, once per commit, in
offset order. The hook only appends to per-connection queues; it never awaits, encodes
or touches a socket. Durability is the queues' business (``Outbox``).

The hub also runs maintenance (expiring request ids and sessions, as commits) and the
graceful drain: refuse new work, let in-flight calls finish, flush every queue, then
close every socket with 1001.

Authentication is the ``AuthService``'s (``hub.auth``); the hub keeps the connections of
each identity so that the commit suspending or revoking an identity closes all of them
with 4003 (``_identity_inactive`` runs synchronously inside that commit's listener):
their subscriptions are dropped and their queues discarded before any later commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

from core.database import Database, now_us
from core.errors import StoreError
from core.subscriptions import Delta, Subscription, SubscriptionManager
from voicehub.server.calls import CallService
from voicehub.server.codec import TxUpdate, Update
from voicehub.server.errors import ApiError
from voicehub.server.outbox import CLOSE_GOING_AWAY
from voicehub.server.sessions import SessionStore
from voicehub.server.settings import ServerConfig
from voicehub.server.system import REQUESTS, SESSIONS, ServerSystem, latest

if TYPE_CHECKING:
    from voicehub.auth.service import AuthService
    from voicehub.server.ws import Connection

log = logging.getLogger("voicehub.server")

_ALWAYS = sys.maxsize


class Hub:
    def __init__(
        self,
        db: Database,
        system: ServerSystem,
        cfg: ServerConfig,
        auth: AuthService | None = None,
    ) -> None:
        self.db = db
        self.system = system
        self.cfg = cfg
        self.mgr = SubscriptionManager(db)
        self.mgr.hooks.append(self._on_deltas)
        if auth is None:  # imported here: voicehub.auth imports this package
            from voicehub.auth.service import AuthService
            from voicehub.auth.settings import AuthSettings

            settings = AuthSettings(data_dir=db.config.data_dir)
            auth = AuthService(db, settings, sessions_table=SESSIONS)
        self.auth = auth
        self.auth.wait_durable = self.wait_durable
        self.auth.on_inactive.append(self._identity_inactive)
        self.calls = CallService(db, system, cfg, self.auth.refresh)
        self.sessions = SessionStore(db)
        self.owners: dict[Subscription, tuple[Connection, Any]] = {}
        self.connections: set[Connection] = set()
        self.attached: dict[str, Connection] = {}
        self.by_identity: dict[str, set[Connection]] = {}
        self.durable_policy = db.config.durability == "durable" and db.config.data_dir is not None
        self.draining = False
        self.started = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.auth.start()
        self._tasks.append(asyncio.create_task(self._maintenance(), name="voicehub-expire"))
        self.started = True

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.auth.stop()
        self.mgr.close()

    def ready(self) -> str | None:
        """None when ready, else why not."""
        if not self.started:
            return "starting"
        if self.draining:
            return "shutting down"
        if self.db.closed:
            return "store closed"
        if self.db.gate.error is not None:
            return "storage failed"
        return None

    # ---------------------------------------------------------------- durability

    def durable(self) -> int:
        return self.db.gate.durable if self.durable_policy else _ALWAYS

    async def wait_durable(self, offset: int) -> None:
        if self.durable_policy and offset > self.db.gate.durable:
            await self.db.gate.wait_async(offset)

    # ---------------------------------------------------------------- fan-out

    def _on_deltas(self, offset: int, updates: dict[Subscription, Delta]) -> None:
        owners = self.owners
        per: dict[Connection, list[Update]] = {}
        for sub, d in updates.items():
            o = owners.get(sub)
            if o is None:
                continue
            conn, qid = o
            lst = per.get(conn)
            if lst is None:
                lst = per[conn] = []
            lst.append(Update(qid, d.inserts, d.deletes))
        for conn, lst in per.items():
            conn.outbox.push(offset, TxUpdate(offset, lst))

    # ---------------------------------------------------------------- identities

    def bind(self, conn: Connection, identity: str) -> None:
        """Record that ``conn`` now acts for ``identity`` (replacing its previous one)."""
        self.unbind(conn)
        conn.bound = identity
        self.by_identity.setdefault(identity, set()).add(conn)

    def unbind(self, conn: Connection) -> None:
        old = conn.bound
        if old is None:
            return
        conns = self.by_identity.get(old)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_identity[old]
        conn.bound = None

    def _identity_inactive(self, identity: str, status: str) -> None:
        """Inside the commit that suspended/revoked ``identity``: close its connections."""
        for conn in list(self.by_identity.get(identity, ())):
            conn.deauthorize(status)

    # ---------------------------------------------------------------- calls over HTTP

    @contextlib.contextmanager
    def inflight(self) -> Any:
        if self.draining:
            raise ApiError("shutting_down", "the server is shutting down")
        self._inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    # ---------------------------------------------------------------- maintenance

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.maintenance_interval_s)
            try:
                while self.expire_once() >= self.cfg.expire_batch:
                    await asyncio.sleep(0)
            except StoreError as e:
                log.warning("expiring request ids and sessions failed: %s", e)

    def expire_once(self, now: int | None = None) -> int:
        """Delete expired request ids (up to a batch) and sessions; returns ids deleted."""
        db = self.db
        if db.closed:
            return 0
        now = now_us() if now is None else now
        before = now - int(self.cfg.idempotency_window_s * 1e6)
        idle_before = now - int(self.cfg.session_ttl_s * 1e6)
        reqs = latest(db.stores, REQUESTS).range("by_time", None, before, True, False, False)
        rows: list[Any] = list(latest(db.stores, SESSIONS).rows())
        sessions = [
            r.token_hash
            for r in rows
            if r.seen_at < idle_before and r.token_hash not in self.attached
        ]
        if not reqs and not sessions:
            return 0
        res = db.execute(
            "voicehub_expire",
            {"requests_before": before, "limit": self.cfg.expire_batch, "sessions": sessions},
        )
        return int(res.value)

    # ---------------------------------------------------------------- drain

    async def drain(self) -> None:
        """Graceful stop: no new work, finish calls, flush queues, close with 1001."""
        if self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.shutdown_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
        conns = list(self.connections)
        for c in conns:
            c.outbox.finish(CLOSE_GOING_AWAY, "server shutting down: reconnect and resume")
        waits = [c.done.wait() for c in conns]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), max(0.1, deadline - loop.time()))
        for c in conns:
            if not c.done.is_set():
                c.outbox.abort(CLOSE_GOING_AWAY, "server shutting down")
        log.info("drained %d connection(s)", len(conns))
