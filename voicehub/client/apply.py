"""Applying server messages to a client's state: results, subscription caches, callbacks.

``MessageApplier`` is the part of ``voicehub.client.Client`` that the reader task runs
for every decoded server message, one at a time in arrival order (which the protocol
makes offset order). It never awaits, so a ``tx_update`` updates every subscription it
touches before any callback runs (atomic per commit), and a call's result is applied
after the ``tx_update`` of its commit - when ``await client.call(...)`` returns, the
caches already hold its effects. ``last_offset`` only grows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voicehub.client.backoff import TRANSIENT_ERRORS
from voicehub.client.cache import Changes, Subscription
from voicehub.client.errors import ServerError
from voicehub.client.wire import (
    AnyServerMessage,
    Authenticated,
    CallOutcome,
    CallResult,
    Encoder,
    Error,
    QueryResult,
    QueryRows,
    Session,
    Subscribed,
    TxUpdate,
    Unsubscribed,
    decode_bytes,
)

log = logging.getLogger("voicehub.client")

TxCallback = Callable[[int, list[Changes]], object]


@dataclass
class _Pending:
    data: str | bytes
    future: asyncio.Future[Any]


class MessageApplier:
    """Message handlers of ``Client`` (which owns and initializes these attributes)."""

    _subs: dict[Any, Subscription]
    _calls: dict[Any, _Pending]
    _queries: dict[Any, _Pending]
    _tx_callbacks: list[TxCallback]
    _auth_waiter: asyncio.Future[Authenticated] | None
    _enc: Encoder
    _have_offset: bool
    last_offset: int
    reconnect: bool

    def _seen(self, offset: int | None) -> None:
        if offset is not None:
            self._have_offset = True
            if offset > self.last_offset:
                self.last_offset = offset

    def _dispatch(self, msg: AnyServerMessage) -> None:
        t = type(msg)
        if t is TxUpdate:
            self._on_tx(msg)  # type: ignore[arg-type]
        elif t is CallResult:
            self._on_call_result(msg)  # type: ignore[arg-type]
        elif t is Subscribed:
            self._on_subscribed(msg)  # type: ignore[arg-type]
        elif t is QueryResult:
            self._on_query_result(msg)  # type: ignore[arg-type]
        elif t is Unsubscribed:
            assert isinstance(msg, Unsubscribed)
            self._seen(msg.offset)
            sub = self._subs.get(msg.query_id)
            if sub is not None:
                self._drop_sub(sub)
        elif t is Error:
            self._on_error(msg)  # type: ignore[arg-type]
        elif t is Authenticated:
            assert isinstance(msg, Authenticated)
            self._seen(msg.offset)
            waiter = self._auth_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
        elif t is Session:
            log.warning("unexpected session message ignored")

    def _on_tx(self, msg: TxUpdate) -> None:
        subs = self._subs
        off = msg.offset
        changed: list[Changes] = []
        for u in msg.updates:
            sub = subs.get(u.query_id)
            if sub is not None:
                ch = sub._apply(u.inserts, u.deletes, off, msg.catch_up)
                if ch:
                    changed.append(ch)
        self._seen(off)
        for ch in changed:
            ch.subscription._fire(ch)
        for cb in self._tx_callbacks:
            try:
                cb(off, changed)
            except Exception:
                log.exception("transaction callback %r failed", cb)

    def _on_subscribed(self, msg: Subscribed) -> None:
        self._seen(msg.offset)
        sub = self._subs.get(msg.query_id)
        if sub is None:
            return
        try:
            ch = sub._reset(msg.columns, msg.types, msg.rows, msg.offset)
        except Exception as e:  # rows this SDK cannot hold (a bug): fail, do not hang
            self._drop_sub(sub, e)
            raise
        if not sub.ready.done():
            sub.ready.set_result(None)
        if ch:
            sub._fire(ch)

    def _on_call_result(self, msg: CallResult) -> None:
        self._seen(msg.offset)
        p = self._calls.get(msg.request_id)
        if p is None or p.future.done():
            return
        err = msg.error
        if err is None:
            off = msg.offset if msg.offset is not None else 0
            p.future.set_result(CallOutcome(msg.request_id, msg.value, off, msg.replayed))
        elif not (err.code in TRANSIENT_ERRORS and self.reconnect):
            p.future.set_exception(ServerError(err.code, err.message, msg.replayed))
        # a transient refusal (the server is going away): sent again after the reconnect

    def _on_query_result(self, msg: QueryResult) -> None:
        self._seen(msg.offset)
        p = self._queries.get(msg.request_id)
        if p is None or p.future.done():
            return
        err = msg.error
        if err is not None:
            if not (err.code in TRANSIENT_ERRORS and self.reconnect):
                p.future.set_exception(ServerError(err.code, err.message))
            return
        rows = msg.rows
        if not self._enc.binary:
            at = tuple(i for i, t in enumerate(msg.types) if t == "bytes")
            if at:
                rows = decode_bytes(rows, at)
        p.future.set_result(QueryRows(msg.columns, msg.types, rows, msg.offset or 0))

    def _on_error(self, msg: Error) -> None:
        ref = msg.ref or {}
        kind = ref.get("type")
        transient = msg.code in TRANSIENT_ERRORS and self.reconnect
        exc = ServerError(msg.code, msg.message)
        if kind == "authenticate":
            waiter = self._auth_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                return
        if kind in ("call", "query"):
            table = self._calls if kind == "call" else self._queries
            p = table.get(ref.get("request_id"))
            if p is not None and not p.future.done() and not transient:
                p.future.set_exception(exc)
                return
        elif kind == "subscribe":
            sub = self._subs.get(ref.get("query_id"))
            if sub is not None and not transient:
                self._drop_sub(sub, exc)
                return
        elif kind == "unsubscribe":
            sub = self._subs.get(ref.get("query_id"))
            if sub is not None and sub.unsubscribing is not None:
                self._drop_sub(sub)  # unknown_query_id: it is gone either way
                return
        if not transient:
            log.warning("server error %s: %s (ref %s)", msg.code, msg.message, ref)

    def _drop_sub(self, sub: Subscription, exc: BaseException | None = None) -> None:
        if self._subs.get(sub.query_id) is sub:
            del self._subs[sub.query_id]
        sub.active = False
        if exc is not None:
            sub._fail(exc)
        else:
            if not sub.ready.done():
                sub.ready.cancel()
            if sub.unsubscribing is not None and not sub.unsubscribing.done():
                sub.unsubscribing.set_result(None)
