"""The asyncio client: one WebSocket session with calls, queries and cached subscriptions.

``client = await Client.connect("ws://127.0.0.1:8765/v1/ws")`` opens a session (a new
one, or the one named by ``session_token``); then ``await client.call(reducer, args)``,
``await client.query(sql, params)`` and ``sub = await client.subscribe(sql, params)``.

One reader task applies every server message in arrival order, which the protocol makes
offset order, so two promises hold by construction:

* **a call's effects before its result**: the server sends a commit's ``tx_update``
  right before the caller's ``call_result``, so when ``await client.call(...)`` returns,
  every subscription of this client already reflects that commit;
* **atomic updates**: one ``tx_update`` updates all of this client's subscriptions
  before any callback runs.

Reconnect and resume: when the socket drops (a network error, close 1001 "going away",
1011, 1012, 1013, 4000 slow consumer), the client reconnects with backoff and sends
``hello`` with its session token and the highest offset it received. With
``resumed: true`` the server's catch-up is applied like any ``tx_update``; with
``resumed: false`` each subscription's next ``subscribed`` replaces its cache (callbacks
get the difference). Subscriptions the server did not restore are subscribed again, and
calls that were in flight are sent again with the *same* request id (the server runs a
request id once and answers retries with the stored outcome), as are pending queries.
Close 4001 (session taken over), 4003 (the identity was suspended or revoked:
``IdentityNotActive``) and other close codes end the client.

Identity: with ``key_path`` the client keeps an Ed25519 key pair in that file (created
on first use, mode 0600) and logs in by challenge before every ``hello`` - so each
reconnect carries a fresh token; with ``token`` it presents that pre-issued token; with
neither the session is anonymous (if the server allows it). ``authenticate(token)``
logs an established session in; the server then re-sends every subscription in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from voicehub.client.apply import MessageApplier, TxCallback, _Pending
from voicehub.client.backoff import (
    IDENTITY_INACTIVE,
    RECONNECT_CODES,
    TAKEN_OVER,
    retry,
)
from voicehub.client.cache import Subscription
from voicehub.client.errors import (
    ClientClosed,
    ConnectionLost,
    IdentityNotActive,
    ServerError,
    SessionTakenOver,
)
from voicehub.client.keys import KeyResolver
from voicehub.client.wire import (
    Authenticated,
    CallOutcome,
    Encoder,
    Error,
    QueryRows,
    Session,
    decode,
)

log = logging.getLogger("voicehub.client")


class Client(MessageApplier):
    """A voicehub session over one (re)connecting WebSocket. Use ``Client.connect``.

    Options: ``session_token`` resumes an existing session (its subscriptions arrive in
    full, as ``Subscription`` objects with ``sql=None``); ``encoding`` ``"json"``
    (subprotocol ``v1.json``) or ``"msgpack"`` (``v1.msgpack``); ``reconnect`` and
    ``reconnect_timeout_s`` (None: keep trying); ``key_path`` (a machine identity: an
    Ed25519 key file, created if missing, used to log in before every connection) or
    ``token`` (a pre-issued session or owner token) sent as ``auth_token`` in ``hello``
    and as the bearer of the ``/v1/schema`` read; ``display_name`` names a machine
    identity on its first login; ``auth_token`` is sent as ``Authorization: Bearer`` on
    the upgrade request (the server accepts a token there too), ``headers`` as they are;
    ``as_dict`` makes rows dicts by default; ``proxy`` is passed to ``websockets``
    (default: none, not the environment's).
    """

    def __init__(
        self,
        url: str,
        *,
        session_token: str | None = None,
        encoding: Literal["json", "msgpack"] = "json",
        reconnect: bool = True,
        reconnect_timeout_s: float | None = 60.0,
        open_timeout_s: float = 10.0,
        ping_interval_s: float | None = 20.0,
        auth_token: str | None = None,
        headers: dict[str, str] | None = None,
        as_dict: bool = False,
        proxy: str | Literal[True] | None = None,
        key_path: str | Path | None = None,
        token: str | None = None,
        display_name: str | None = None,
    ) -> None:
        self.url = url
        self.session_token = session_token
        self.identity: str | None = None
        self.kind: str | None = None
        """The session identity's kind (``anonymous``, ``machine``, ``human``, ...)."""
        self.key_path = None if key_path is None else Path(key_path)
        self.token = token
        """The token presented in ``hello`` (refreshed before each connection with a key)."""
        self.token_expires_at: int | None = None
        self.display_name = display_name
        self._key: Any = None
        self.resumed = False
        """Whether the last ``session`` answer said ``resumed: true``."""
        self.last_offset = 0
        """The highest offset received (sent as ``last_offset`` when resuming)."""
        self.reconnects = 0
        self.reconnect = reconnect
        self.reconnect_timeout_s = reconnect_timeout_s
        self.open_timeout_s = open_timeout_s
        self.ping_interval_s = ping_interval_s
        self.headers = dict(headers or {})
        if auth_token is not None:
            self.headers["Authorization"] = f"Bearer {auth_token}"
        self.as_dict = as_dict
        self.proxy = proxy
        self.closed = False
        self._enc = Encoder(encoding)
        self._keys = KeyResolver(url, dict(self.headers))
        if token is not None:
            self._keys.headers["Authorization"] = f"Bearer {token}"
        self._auth_waiter: asyncio.Future[Authenticated] | None = None
        self._have_offset = False
        self._prefix = secrets.token_hex(6)
        self._seq = 0
        self._ws: ClientConnection | None = None  # set while a session is established
        self._sock: ClientConnection | None = None  # the socket being opened or used
        self._calls: dict[Any, _Pending] = {}
        self._queries: dict[Any, _Pending] = {}
        self._subs: dict[Any, Subscription] = {}
        self._tx_callbacks: list[TxCallback] = []
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._final: BaseException | None = None
        self._connected = asyncio.Event()

    # ---------------------------------------------------------------- lifetime

    @classmethod
    async def connect(cls, url: str, **options: Any) -> Client:
        """``Client(url, **options).start()``: open a session, return the client."""
        return await cls(url, **options).start()

    async def start(self) -> Client:
        """Open the session; raises ``ServerError``/``OSError``/``WebSocketException``."""
        if self._runner is not None:
            raise RuntimeError("the client is already started")
        ws = await self._open(initial=True)
        self._runner = asyncio.create_task(self._run(ws), name="voicehub-client")
        return self

    async def close(self) -> None:
        """Close the connection (1000); whatever still waits gets ``ClientClosed``."""
        if self.closed:
            return
        self._closing = True
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        sock = self._sock
        self._ws = self._sock = None
        if sock is not None:
            with contextlib.suppress(Exception):
                await sock.close()
        self._shut(ClientClosed("the client was closed"))

    async def __aenter__(self) -> Client:
        """``async with Client(url) as c:`` opens the session (if ``start`` was not called)."""
        if self._runner is None and not self.closed:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until a session is established (after a reconnect, for instance)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def subscriptions(self) -> dict[Any, Subscription]:
        """The live subscriptions by query id (including ones restored from the session)."""
        return dict(self._subs)

    def on_transaction(self, cb: TxCallback) -> TxCallback:
        """``cb(offset, changes)`` once per ``tx_update``, after all its callbacks ran."""
        self._tx_callbacks.append(cb)
        return cb

    # ---------------------------------------------------------------- requests

    def _new_id(self, kind: str) -> str:
        self._seq += 1
        return f"{self._prefix}-{kind}{self._seq}"

    def _check(self) -> None:
        if self._final is not None:
            raise copy.copy(self._final)  # why the client ended (lost, taken over, closed)
        if self.closed or self._closing:
            raise ClientClosed("the client is closed")

    async def call(
        self,
        reducer: str,
        args: Any = None,
        *,
        request_id: str | int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a reducer; its return value. Raises ``ServerError`` with the server's code."""
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
        """Like ``call``, with the commit offset and whether the outcome was replayed.

        ``request_id`` defaults to a fresh id; pass your own to retry a logical call (for
        instance after a crash of the calling process). Within this client, a call in
        flight across a reconnect is retried automatically with its request id.
        """
        self._check()
        rid = self._new_id("r") if request_id is None else request_id
        if rid in self._calls:
            raise ValueError(f"request id {rid!r} is already in flight")
        msg: dict[str, Any] = {"type": "call", "request_id": rid, "reducer": reducer}
        if args is not None:
            msg["args"] = args
        return await self._request(self._calls, rid, msg, timeout)

    async def query(
        self, sql: str, params: Any = None, *, timeout: float | None = None
    ) -> QueryRows:
        """One read-only query (sees this client's own committed calls)."""
        self._check()
        rid = self._new_id("x")
        msg: dict[str, Any] = {"type": "query", "request_id": rid, "sql": sql}
        if params is not None:
            msg["params"] = params
        return await self._request(self._queries, rid, msg, timeout)

    async def _request(
        self, table: dict[Any, _Pending], rid: Any, msg: dict[str, Any], timeout: float | None
    ) -> Any:
        p = _Pending(self._enc.encode(msg), asyncio.get_running_loop().create_future())
        table[rid] = p
        try:
            ws = self._ws
            if ws is not None:
                await self._send(ws, p.data)
            if timeout is None:
                return await p.future
            return await asyncio.wait_for(p.future, timeout)
        finally:
            if table.get(rid) is p:
                del table[rid]

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
        """Subscribe; returns once the initial rows are in the cache.

        ``key``: ``"auto"`` folds delete+insert of one primary key into an update when
        the SQL is a plain single-table SELECT that includes the key (see
        ``voicehub.client.keys``); a list of column names says which key to use; None
        keeps rows as a multiset. Callbacks given here also see the initial rows.
        """
        self._check()
        qid = self._new_id("q") if query_id is None else query_id
        if qid in self._subs:
            raise ValueError(f"query id {qid!r} is already subscribed")
        names = await self._keys.key_for(sql) if key == "auto" else key
        sub = Subscription(
            self,
            qid,
            sql,
            params,
            names,
            self.as_dict if as_dict is None else as_dict,
            not self._enc.binary,
        )
        if on_insert is not None:
            sub.on_insert(on_insert)
        if on_delete is not None:
            sub.on_delete(on_delete)
        if on_update is not None:
            sub.on_update(on_update)
        msg: dict[str, Any] = {"type": "subscribe", "query_id": qid, "sql": sql}
        if params is not None:
            msg["params"] = params
        sub.message = self._enc.encode(msg)
        self._subs[qid] = sub
        ws = self._ws
        if ws is not None:
            await self._send(ws, sub.message)
        await asyncio.wait_for(asyncio.shield(sub.ready), timeout)
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if not sub.active or self._subs.get(sub.query_id) is not sub:
            return
        if sub.unsubscribing is None:
            sub.unsubscribing = asyncio.get_running_loop().create_future()
            ws = self._ws
            if ws is not None:
                await self._send(ws, self._unsub_message(sub.query_id))
        await sub.unsubscribing

    def _unsub_message(self, qid: Any) -> str | bytes:
        return self._enc.encode({"type": "unsubscribe", "query_id": qid})

    async def _send(self, ws: ClientConnection, data: str | bytes) -> None:
        try:
            await ws.send(data)
        except (ConnectionClosed, OSError):
            pass  # the reader sees the close; pending requests are sent again on reconnect

    # ---------------------------------------------------------------- connecting

    async def _login(self) -> str | None:
        """The token for the next ``hello``: a fresh machine login with ``key_path``."""
        if self.key_path is None:
            return self.token
        from voicehub.client import machine  # needs cryptography: only for key logins

        if self._key is None:
            self._key = await asyncio.to_thread(machine.load_or_create_key, self.key_path)
        out = await asyncio.to_thread(
            machine.login, self.url, self._key, self.open_timeout_s, self.display_name
        )
        self.token = str(out["token"])
        self.token_expires_at = int(out["expires_at"])
        self._keys.headers["Authorization"] = f"Bearer {self.token}"
        return self.token

    async def authenticate(self, token: str, *, timeout: float | None = 10.0) -> None:
        """Log this session in as ``token``'s identity (subscriptions arrive in full again)."""
        self._check()
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        fut = asyncio.get_running_loop().create_future()
        self._auth_waiter = fut
        try:
            await self._send(ws, self._enc.encode({"type": "authenticate", "token": token}))
            msg = await asyncio.wait_for(fut, timeout)
        finally:
            self._auth_waiter = None
        self.token = token
        self._keys.headers["Authorization"] = f"Bearer {token}"
        self.identity, self.kind = msg.identity, msg.kind

    async def _open(self, initial: bool) -> ClientConnection:
        """Connect, send ``hello``, handle ``session``; re-send what the server lacks."""
        auth_token = await self._login()
        ws = await ws_connect(
            self.url,
            subprotocols=[self._enc.subprotocol],  # type: ignore[list-item]
            compression=None,
            max_size=None,
            open_timeout=self.open_timeout_s,
            ping_interval=self.ping_interval_s,
            close_timeout=2.0,
            proxy=self.proxy,
            additional_headers=self.headers or None,
        )
        self._sock = ws
        try:
            hello: dict[str, Any] = {"type": "hello"}
            if auth_token is not None:
                hello["auth_token"] = auth_token
            if self.session_token is not None:
                hello["session_token"] = self.session_token
                if not initial and self._have_offset:
                    hello["last_offset"] = self.last_offset
            await ws.send(self._enc.encode(hello))
            async with asyncio.timeout(self.open_timeout_s):
                while True:
                    msg = decode(await ws.recv(), self._enc.binary)
                    if isinstance(msg, Session):
                        break
                    if isinstance(msg, Error):
                        raise ServerError(msg.code, msg.message)
            resend = self._on_session(msg)
        except BaseException:
            self._sock = None
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        self._ws = ws
        self._connected.set()
        for data in resend:
            await self._send(ws, data)
        return ws

    def _on_session(self, msg: Session) -> list[str | bytes]:
        """Adopt the session; the messages that bring the server up to date, in order."""
        if msg.reason:
            log.info("session not resumed (%s)", msg.reason)
        self.session_token, self.identity, self.resumed = (
            msg.session_token,
            msg.identity,
            msg.resumed,
        )
        self.kind = msg.kind
        on_server = set(msg.subscriptions)
        out: list[str | bytes] = []
        for qid, sub in list(self._subs.items()):
            if sub.unsubscribing is not None:
                if qid in on_server:
                    out.append(self._unsub_message(qid))
                else:
                    self._drop_sub(sub)
            elif qid not in on_server:
                if sub.sql is None:  # restored once, now forgotten by the server
                    self._drop_sub(sub)
                else:
                    out.append(sub.message)
        for qid in msg.subscriptions:
            if qid not in self._subs:
                if msg.resumed:
                    out.append(self._unsub_message(qid))  # not ours any more
                else:
                    self._subs[qid] = Subscription(
                        self, qid, None, None, None, self.as_dict, not self._enc.binary
                    )
        out.extend(p.data for p in self._calls.values())
        out.extend(p.data for p in self._queries.values())
        return out

    async def _run(self, ws: ClientConnection) -> None:
        while True:
            code, reason = await self._read(ws)
            self._ws = self._sock = None
            self._connected.clear()
            if self._closing:
                return
            if code == TAKEN_OVER:
                self._shut(SessionTakenOver(f"session taken over (4001 {reason})", code))
                return
            if code == IDENTITY_INACTIVE:
                self._shut(IdentityNotActive(f"identity not active (4003 {reason})", code))
                return
            if not self.reconnect or code not in RECONNECT_CODES:
                self._shut(ConnectionLost(f"connection closed ({code} {reason})", code))
                return
            log.info("connection closed (%s %s): reconnecting", code, reason)
            try:
                ws = await self._reconnect(code)
            except ConnectionLost as e:
                self._shut(e)
                return

    async def _reconnect(self, code: int) -> ClientConnection:
        ws = await retry(lambda: self._open(initial=False), code, self.reconnect_timeout_s)
        self.reconnects += 1
        self._keys.forget()
        return ws

    def _shut(self, exc: BaseException) -> None:
        """The client is finished: fail everything that still waits with ``exc``."""
        self.closed = True
        if self._final is None:
            self._final = exc
        self._connected.clear()
        for table in (self._calls, self._queries):
            for p in table.values():
                if not p.future.done():
                    p.future.set_exception(exc)
            table.clear()
        for sub in self._subs.values():
            sub._fail(exc)
        waiter = self._auth_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # ---------------------------------------------------------------- reading

    async def _read(self, ws: ClientConnection) -> tuple[int, str]:
        """Apply messages until the socket closes; its close code and reason."""
        binary = self._enc.binary
        recv = ws.recv
        dispatch = self._dispatch
        try:
            while True:
                msg = decode(await recv(), binary)
                if msg is not None:
                    try:
                        dispatch(msg)
                    except Exception:
                        log.exception("handling %s failed", type(msg).__name__)
        except ConnectionClosed as e:
            if e.rcvd is None:
                return 1006, "no close frame"
            return e.rcvd.code, e.rcvd.reason
        except OSError as e:
            return 1006, str(e)
        except msgspec.DecodeError as e:
            log.error("undecodable server frame (%s): reconnecting", e)
            with contextlib.suppress(Exception):
                await ws.close(1002, "undecodable frame")
            return 1006, "undecodable frame"
