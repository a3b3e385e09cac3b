"""The ``/v1/ws`` endpoint: one ``Connection`` per WebSocket, speaking docs/protocol.md.

Each connection runs two tasks: a reader that decodes and handles client messages one at
a time, and a pump that sends the connection's ``Outbox`` in order as it becomes durable.
Handlers never await between running a commit and queueing what it produced (the hook's
``tx_update`` first, then the ``call_result``), so a caller's result and the deltas its
commit caused are adjacent and precede any later commit's deltas. A malformed or unknown
frame gets an ``error`` and the connection keeps going; only the pump closes a socket
(1000 normal, 1001 server going away, 1011 storage failed, 4000 slow consumer,
4001 session taken over by a newer connection, 4003 identity suspended or revoked).

Every connection acts for one ``Principal``: anonymous (when allowed), or the identity
of the ``auth_token`` in ``hello`` (or of an ``Authorization: Bearer`` header on the
upgrade request), or the identity a later ``authenticate`` rebinds it to. A session
belongs to one identity: its token is refused with another identity's ``auth_token``.
Every read and subscription of the connection runs as that principal (``sender``), and
its status is re-read before each call, query and subscription. ``authenticate``
re-creates the session's subscriptions under the new identity (fresh ``subscribed``), so
row-level security applies from the moment of login.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from msgspec import UNSET

from core.errors import HistoryUnavailable, StorageFailed, StoreError
from core.sql.query import run_query_async
from core.subscriptions import Subscription
from voicehub.auth.principal import Principal, anonymous
from voicehub.server import sessions
from voicehub.server.calls import request_key
from voicehub.server.codec import (
    AnyClientMessage,
    Authenticate,
    Authenticated,
    Call,
    CallResult,
    Codec,
    Error,
    ErrorBody,
    Hello,
    Query,
    QueryResult,
    ServerMessage,
    SessionInfo,
    Subscribe,
    Subscribed,
    TxUpdate,
    Unsubscribe,
    Unsubscribed,
    Update,
    choose_subprotocol,
    decode_client,
    encode_json,
)
from voicehub.server.errors import ApiError, ReplayedFailure, describe
from voicehub.server.hub import Hub
from voicehub.server.outbox import (
    CLOSE_GOING_AWAY,
    CLOSE_IDENTITY_INACTIVE,
    CLOSE_INTERNAL,
    CLOSE_TAKEN_OVER,
    CloseRequested,
    Outbox,
)
from voicehub.server.sessions import SessionRecord, SubSpec, commit_deltas, net_delta, rows_at
from voicehub.server.system import ANONYMOUS_IDENTITY

log = logging.getLogger("voicehub.server.ws")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WebSocketEndpoint:
    """A raw ASGI app for the route (no per-message framework overhead)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        await Connection(self.hub, scope, receive, send).serve()


def _ref(msg: AnyClientMessage) -> dict[str, Any]:
    ref: dict[str, Any] = {"type": type(msg).__struct_config__.tag}
    for k in ("query_id", "request_id"):
        v = getattr(msg, k, None)
        if v is not None:
            ref[k] = v
    return ref


class Connection:
    def __init__(self, hub: Hub, scope: Any, receive: Receive, send: Send) -> None:
        self.hub = hub
        self.scope = scope
        self.receive = receive
        self.send = send
        self.codec = Codec(None)
        self.outbox = Outbox(hub.cfg.send_queue_limit, hub.durable, hub.wait_durable)
        self.session: SessionRecord | None = None
        self.principal: Principal = anonymous(ANONYMOUS_IDENTITY)
        self.bound: str | None = None
        """The identity the hub files this connection under (``Hub.bind``)."""
        client = scope.get("client")
        self.remote: str | None = client[0] if client else None
        self.subs: dict[str, tuple[Subscription, Any]] = {}
        self.delivered = 0
        self.last_write = 0
        self.done = asyncio.Event()

    @property
    def identity(self) -> str:
        """This connection's caller identity (``ctx.sender`` of its calls)."""
        return self.principal.identity

    # ---------------------------------------------------------------- lifetime

    async def serve(self) -> None:
        first = await self.receive()
        if first["type"] != "websocket.connect":
            return
        hub = self.hub
        if hub.draining or hub.db.closed:
            await self._deny()
            return
        sp = choose_subprotocol(list(self.scope.get("subprotocols") or []))
        self.codec = Codec(sp)
        await self.send({"type": "websocket.accept", "subprotocol": sp})
        hub.connections.add(self)
        if hub.draining:  # the drain began while we were accepting
            self.outbox.finish(CLOSE_GOING_AWAY, "server shutting down: reconnect and resume")
        reader = asyncio.create_task(self._read_loop())
        pump = asyncio.create_task(self._pump())
        try:
            await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (reader, pump):
                t.cancel()
            for t in (reader, pump):
                with contextlib.suppress(asyncio.CancelledError):
                    exc = await asyncio.gather(t, return_exceptions=True)
                    if isinstance(exc[0], Exception) and not isinstance(exc[0], OSError):
                        log.error("websocket task failed", exc_info=exc[0])
            self._cleanup()
            self.done.set()

    async def _deny(self) -> None:
        body = encode_json(
            {"error": {"code": "shutting_down", "message": "the server is shutting down"}}
        )
        if "websocket.http.response" in (self.scope.get("extensions") or {}):
            await self.send(
                {
                    "type": "websocket.http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await self.send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.send({"type": "websocket.close", "code": 1013})

    async def _read_loop(self) -> None:
        receive = self.receive
        while True:
            m = await receive()
            t = m["type"]
            if t == "websocket.receive":
                text = m.get("text")
                if text is not None:
                    await self._handle(text, False)
                else:
                    await self._handle(m.get("bytes") or b"", True)
            elif t == "websocket.disconnect":
                return

    async def _pump(self) -> None:
        send, encode, take = self.send, self.codec.encode, self.outbox.take
        try:
            while True:
                for off, msg in await take():
                    await send(encode(msg))
                    if off > self.delivered:
                        self.delivered = off
        except CloseRequested as c:
            await self._close(c.code, c.reason)
        except StorageFailed:
            await self._close(CLOSE_INTERNAL, "storage failed")

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.send({"type": "websocket.close", "code": code, "reason": reason}),
                self.hub.cfg.close_timeout_s,
            )

    def _cleanup(self) -> None:
        hub = self.hub
        hub.connections.discard(self)
        hub.unbind(self)
        self._drop_subs()
        rec = self.session
        if rec is not None and hub.attached.get(rec.token_hash) is self:
            del hub.attached[rec.token_hash]
            if not hub.db.closed:
                try:
                    hub.sessions.seen(rec, self.delivered)
                except StoreError as e:
                    log.warning("session %s… not updated: %s", rec.token_hash[:8], e)
                self._lifecycle("client_disconnected")

    def _drop_subs(self) -> None:
        for sub, _ in self.subs.values():
            self.hub.owners.pop(sub, None)
            self.hub.mgr.unsubscribe(sub)
        self.subs.clear()

    def deauthorize(self, status: str) -> None:
        """The identity was suspended/revoked (inside that commit): drop and close, 4003."""
        self._drop_subs()
        self.outbox.abort(CLOSE_IDENTITY_INACTIVE, f"identity {status}: do not reconnect")

    def _lifecycle(self, kind: str) -> None:
        try:
            self.hub.db.run_lifecycle(kind, self.identity)
        except StoreError as e:
            log.warning("%s reducer failed for %s…: %s", kind, self.identity[:8], e)

    # ---------------------------------------------------------------- messages

    def _push(self, offset: int, msg: ServerMessage) -> None:
        self.outbox.push(offset, msg)

    def _error(
        self, code: str, message: str, ref: dict[str, Any] | None = None, offset: int = 0
    ) -> None:
        self._push(offset, Error(code, message, UNSET if ref is None else ref))

    async def _handle(self, data: str | bytes, binary: bool) -> None:
        if self.outbox.closing:
            return
        try:
            msg = decode_client(data, binary)
        except ApiError as e:
            self._error(e.code, e.message, e.ref)
            return
        try:
            if self.session is None:
                if isinstance(msg, Hello):
                    await self._hello(msg)
                    return
                if isinstance(msg, Authenticate):
                    await self._hello(Hello(auth_token=msg.token))
                    return
                self._open_new(None, self._header_principal())
                if self.session is None:
                    return
            if isinstance(msg, Call):
                self._call(msg)
            elif isinstance(msg, Subscribe):
                self._subscribe(msg)
            elif isinstance(msg, Unsubscribe):
                self._unsubscribe(msg)
            elif isinstance(msg, Query):
                await self._query(msg)
            elif isinstance(msg, Authenticate):
                self._authenticate(msg)
            else:
                self._error(
                    "session_already_established",
                    "hello must be the first message of a connection",
                    _ref(msg),
                )
        except Exception as e:
            code, message = describe(e)
            self._error(code, message, _ref(msg), self.hub.db.offset)

    def _call(self, m: Call) -> None:
        hub = self.hub
        rid = m.request_id
        if hub.draining:
            err = ErrorBody("shutting_down", "the server is shutting down")
            self._push(0, CallResult(rid, error=err))
            return
        try:
            out = hub.calls.call(self.principal, m.reducer, m.args, rid)
        except Exception as e:
            code, message = describe(e)
            replayed = isinstance(e, ReplayedFailure)
            self._push(
                hub.db.offset, CallResult(rid, error=ErrorBody(code, message), replayed=replayed)
            )
            return
        if out.offset > self.last_write:
            self.last_write = out.offset
        self._push(
            out.offset, CallResult(rid, offset=out.offset, value=out.value, replayed=out.replayed)
        )

    def _subscribe(self, m: Subscribe) -> None:
        hub = self.hub
        ref = _ref(m)
        key = request_key(m.query_id)
        if key in self.subs:
            self._error("duplicate_query_id", f"query_id {m.query_id!r} is already subscribed", ref)
            return
        if hub.draining:
            self._error("shutting_down", "the server is shutting down", ref)
            return
        try:
            p = self._current()
            sub, rows = hub.mgr.subscribe(m.sql, m.params, p.sender)
        except (StoreError, ApiError) as e:
            self._error(e.code, e.message, ref)
            return
        self._register(SubSpec(m.query_id, m.sql, m.params, 0), sub, rows)

    def _register(self, spec: SubSpec, sub: Subscription, rows: list[tuple]) -> None:
        """Remember the subscription in the session, then queue its initial rows.

        ``since`` is the offset of the commit storing it, which is also the offset the
        client sees on ``subscribed``: a client whose last offset is >= since has it.
        """
        hub = self.hub
        assert self.session is not None
        spec.since = hub.db.offset + 1
        try:
            off = hub.sessions.put_sub(self.session, spec)
        except Exception as e:
            hub.mgr.unsubscribe(sub)
            code, message = describe(e)
            self._error(code, message, {"type": "subscribe", "query_id": spec.query_id})
            return
        if off != spec.since:  # offsets are dense and nothing runs in between
            log.error("subscription stored at %d, expected %d", off, spec.since)
        self.subs[spec.key] = (sub, spec.query_id)
        hub.owners[sub] = (self, spec.query_id)
        self._push(off, Subscribed(spec.query_id, sub.columns, sub.types, rows, off))

    def _unsubscribe(self, m: Unsubscribe) -> None:
        hub = self.hub
        key = request_key(m.query_id)
        entry = self.subs.pop(key, None)
        if entry is None:
            self._error("unknown_query_id", f"no subscription {m.query_id!r}", _ref(m))
            return
        hub.owners.pop(entry[0], None)
        hub.mgr.unsubscribe(entry[0])
        assert self.session is not None
        try:
            off = hub.sessions.drop_sub(self.session, key)
        except StoreError:
            off = hub.db.offset
        self._push(off, Unsubscribed(m.query_id, off))

    async def _query(self, m: Query) -> None:
        hub = self.hub
        rid = m.request_id
        try:
            await hub.wait_durable(self.last_write)  # read your own writes
            p = self._current()
            res = await run_query_async(hub.db, m.sql, m.params, p.sender)
        except Exception as e:
            code, message = describe(e)
            self._push(0, QueryResult(rid, error=ErrorBody(code, message)))
            return
        self._push(
            res.offset,
            QueryResult(
                rid, columns=res.columns, types=res.types, rows=res.rows, offset=res.offset
            ),
        )

    # ---------------------------------------------------------------- identity

    def _current(self) -> Principal:
        """This connection's principal as it stands now (raises if no longer active)."""
        p = self.hub.auth.refresh(self.principal)
        self.principal = p
        return p

    def _header_principal(self) -> Principal | None:
        """The principal of an ``Authorization: Bearer`` token on the upgrade request."""
        for k, v in self.scope.get("headers") or ():
            if k == b"authorization":
                scheme, _, token = v.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return self.hub.auth.verify_token(token.strip())
        return None

    def _authenticate(self, m: Authenticate) -> None:
        """Rebind the session to the token's identity; subscriptions re-created under it."""
        hub = self.hub
        rec = self.session
        assert rec is not None
        ref = {"type": "authenticate"}
        try:
            p = hub.auth.verify_token(m.token)
        except ApiError as e:
            self._error(e.code, e.message, ref)
            return
        # From here on nothing awaits: the rebinding and the re-subscriptions are one step.
        specs = list(rec.subs.values())
        qids = [s.query_id for s in specs]
        if p.identity == self.identity:  # a fresh token for the same identity
            self.principal = p
            self._push(hub.db.offset, Authenticated(p.identity, p.kind, hub.db.offset, qids))
            return
        try:
            off = hub.sessions.rebind(rec, p.identity)
        except Exception as e:
            code, message = describe(e)
            self._error(code, message, ref)
            return
        self._drop_subs()
        self._lifecycle("client_disconnected")
        self.principal = p
        hub.bind(self, p.identity)
        self._push(off, Authenticated(p.identity, p.kind, off, qids))
        for s in specs:
            try:
                sub, rows = hub.mgr.subscribe(s.sql, s.params, p.sender)
            except StoreError as e:
                self._error(e.code, e.message, {"type": "subscribe", "query_id": s.query_id}, off)
                with contextlib.suppress(StoreError):
                    hub.sessions.drop_sub(rec, s.key)
                continue
            self._register(s, sub, rows)
        self._lifecycle("client_connected")

    # ---------------------------------------------------------------- sessions

    def _attach(self, rec: SessionRecord, p: Principal) -> None:
        hub = self.hub
        old = hub.attached.get(rec.token_hash)
        if old is not None and old is not self:
            old._drop_subs()
            old.outbox.abort(CLOSE_TAKEN_OVER, "session taken over by a newer connection")
        hub.attached[rec.token_hash] = self
        self.session = rec
        self.principal = p
        hub.bind(self, p.identity)

    def _open_new(self, reason: str | None, p: Principal | None) -> None:
        """A new session for ``p`` (None: a fresh anonymous identity, if allowed)."""
        hub = self.hub
        try:
            if p is None:
                p = hub.auth.refresh(anonymous(secrets.token_hex(32)))
            token, rec, off = hub.sessions.create(p.identity)
        except Exception as e:
            code, message = describe(e)
            self._error(code, message, {"type": "hello"})
            return
        self._attach(rec, p)
        self._push(off, SessionInfo(token, rec.identity, False, reason or UNSET, kind=p.kind))
        self._lifecycle("client_connected")

    async def _hello(self, m: Hello) -> None:
        auth = self.hub.auth
        ref = {"type": "hello"}
        try:
            if m.auth_token is not None:
                p: Principal | None = auth.verify_token(m.auth_token)
            else:
                p = self._header_principal()
        except ApiError as e:
            self._error(e.code, e.message, ref)
            return
        if m.session_token is None:
            self._open_new(None, p)
            return
        rec = self.hub.sessions.load(m.session_token)
        if rec is None:
            self._open_new("unknown_session", p)
            return
        if p is not None and p.identity != rec.identity:
            self._error(
                "session_identity_mismatch",
                "this session belongs to another identity: open a new session, or log in"
                " on it with 'authenticate'",
                ref,
            )
            return
        try:
            p = auth.for_identity(rec.identity, "session") if p is None else p
        except ApiError as e:
            self._error(e.code, e.message, ref)
            return
        await self._resume(m.session_token, rec, m.last_offset, p)

    async def _resume(self, token: str, rec: SessionRecord, k: int | None, p: Principal) -> None:
        hub = self.hub
        specs = list(rec.subs.values())
        old: dict[str, list[tuple]] | None = None
        since_k: list[SubSpec] = []
        replay = False
        reason = None
        if k is None:
            reason = "no_offset"
        elif k < 0 or k > hub.db.visible_offset:
            reason = "invalid_offset"
        else:
            since_k = [s for s in specs if s.since <= k]
            # missed commits still in memory are replayed one by one below (no await
            # between this check and the replay, so the history cannot be collected)
            replay = hub.db.commits_after(k) is not None
            if not replay:
                old = await rows_at(hub.db, hub.mgr, since_k, k, p.sender)
                if old is None:
                    reason = "history_unavailable"
        if self.outbox.closing or hub.db.closed:
            return
        # From here on nothing awaits: no commit can slip between the reads below.
        missed: list[tuple[int, dict[str, tuple[list[tuple], list[tuple]]]]] = []
        if replay:
            assert k is not None
            try:
                # a replay must fit the send queue, or the resume would overflow it again
                fits = max(0, (self.outbox.limit - len(self.outbox)) // 2)
                limit = min(sessions.REPLAY_LIMIT, fits)
                missed, old = commit_deltas(hub.db, hub.mgr, since_k, k, p.sender, limit)
            except HistoryUnavailable:
                reason = "history_unavailable"
        try:
            p = hub.auth.refresh(p)  # the identity may have been suspended meanwhile
            off = hub.sessions.reopen(rec)
        except Exception as e:
            code, message = describe(e)
            self._error(code, message, {"type": "hello"})
            return
        self._attach(rec, p)
        resumed = reason is None
        self._push(
            off,
            SessionInfo(
                token,
                rec.identity,
                resumed,
                reason or UNSET,
                [s.query_id for s in specs],
                kind=p.kind,
            ),
        )
        catch_up: list[Update] = []
        fresh: list[tuple[SubSpec, Subscription, list[tuple]]] = []
        for s in specs:
            try:
                sub, rows = hub.mgr.subscribe(s.sql, s.params, p.sender)
            except StoreError as e:
                self._error(e.code, e.message, {"type": "subscribe", "query_id": s.query_id}, off)
                with contextlib.suppress(StoreError):
                    hub.sessions.drop_sub(rec, s.key)
                continue
            if old is not None and s.key in old:
                self.subs[s.key] = (sub, s.query_id)
                hub.owners[sub] = (self, s.query_id)
                ins, dels = net_delta(rows, old[s.key])
                if ins or dels:
                    catch_up.append(Update(s.query_id, ins, dels))
            else:
                fresh.append((s, sub, rows))
        if resumed:
            qids = {key: q for key, (_, q) in self.subs.items()}
            for j, per in missed:  # one tx_update per missed commit, as it was
                ups = [Update(qids[key], i, d) for key, (i, d) in per.items() if key in qids]
                if ups:
                    self._push(j, TxUpdate(j, ups, catch_up=True))
            # what is left: commits not yet durable at the replay, or the net delta
            self._push(off, TxUpdate(off, catch_up, catch_up=True, caught_up=True))
        for s, sub, rows in fresh:
            self._register(s, sub, rows)
        self._lifecycle("client_connected")
