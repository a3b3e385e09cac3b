"""A subscription's local row cache, and the callbacks fired as it changes.

Every ``subscribed`` replaces the cache and every ``tx_update`` is applied to it, deletes
before inserts (docs/protocol.md). Two layouts:

* **keyed** - when the subscription's rows are known to be unique by the table's primary
  key (see ``voicehub.client.keys``): a map key -> row. Within one update a delete and an
  insert of the same key fold into one *update* (``on_update(old, new)``), as docs/sql.md
  prescribes.
* **multiset** - otherwise: row -> (row, multiplicity). Deletes remove one copy each,
  inserts add one; callbacks get ``on_delete`` and ``on_insert`` and never ``on_update``.

Per commit and subscription the callbacks run deletes, then updates, then inserts, then
``on_change`` with the whole ``Changes``; an exception in a callback is logged, not raised.

Invariant kept with the client: for one commit, every subscription of the connection is
applied first and only then are callbacks run, so a callback of one subscription already
sees every other subscription at the same offset (the protocol's atomic update). A fresh
``subscribed`` for a subscription that already had rows (a resume with ``resumed: false``,
a re-subscribe) replaces the cache and fires callbacks for the difference only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from voicehub.client.wire import Row, decode_bytes, row_key


class SubscriptionOwner(Protocol):
    """The client a subscription belongs to (remote ``Client`` or in-process ``LocalClient``)."""

    async def _unsubscribe(self, sub: Subscription) -> None: ...


log = logging.getLogger("voicehub.client")

RowCallback = Callable[[Any], object]
UpdateCallback = Callable[[Any, Any], object]
ChangeCallback = Callable[["Changes"], object]


class Changes:
    """One subscription's part of one commit, folded: what the callbacks are given."""

    __slots__ = ("catch_up", "deletes", "inserts", "offset", "subscription", "updates")

    def __init__(
        self,
        subscription: Subscription,
        offset: int,
        inserts: list[Row],
        deletes: list[Row],
        updates: list[tuple[Row, Row]],
        catch_up: bool = False,
    ) -> None:
        self.subscription = subscription
        self.offset = offset
        self.inserts = inserts
        self.deletes = deletes
        self.updates = updates
        self.catch_up = catch_up

    def __bool__(self) -> bool:
        return bool(self.inserts or self.deletes or self.updates)

    def __repr__(self) -> str:
        return (
            f"Changes({self.subscription.query_id!r} @{self.offset}: +{len(self.inserts)}"
            f" -{len(self.deletes)} ~{len(self.updates)})"
        )


class Subscription:
    """A live query: its rows (kept current by the client) and change callbacks.

    Rows are tuples in ``columns`` order, or dicts by column name with ``as_dict``.
    """

    def __init__(
        self,
        client: SubscriptionOwner | None,
        query_id: Any,
        sql: str | None,
        params: Any,
        key: Sequence[str] | None,
        as_dict: bool,
        decode_bytes: bool,
    ) -> None:
        self.client = client
        self.query_id = query_id
        self.sql = sql
        """None for a subscription restored from the session that this client never made."""
        self.params = params
        self.key_names = tuple(key) if key else None
        self.as_dict = as_dict
        self.columns: list[str] = []
        self.types: list[str | None] = []
        self.offset = 0
        """The offset of the last ``subscribed`` or ``tx_update`` applied."""
        self.active = True
        self.error: BaseException | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decode_bytes = decode_bytes
        self._bytes_at: tuple[int, ...] = ()
        self._kidx: tuple[int, ...] | None = None
        self._by_key: dict[Any, Row] = {}
        self._multi: dict[Any, list[Any]] = {}
        self._on_insert: list[RowCallback] = []
        self._on_delete: list[RowCallback] = []
        self._on_update: list[UpdateCallback] = []
        self._on_change: list[ChangeCallback] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.unsubscribing: asyncio.Future[None] | None = None
        self.message: str | bytes = b""
        """The encoded ``subscribe`` message (re-sent when a reconnect needs it)."""

    # ---------------------------------------------------------------- reading

    @property
    def key(self) -> tuple[str, ...] | None:
        """The primary key columns the rows are folded by, or None (a multiset)."""
        return self.key_names if self._kidx is not None else None

    @property
    def rows(self) -> list[Any]:
        """The current rows (a copy), in arrival order."""
        if self._kidx is not None:
            raw: list[Row] = list(self._by_key.values())
        else:
            raw = [e[0] for e in self._multi.values() for _ in range(e[1])]
        return [self._present(r) for r in raw] if self.as_dict else raw

    def get(self, *key: Any) -> Any:
        """The row with this primary key value (keyed subscriptions only), or None."""
        if self._kidx is None:
            raise TypeError(f"subscription {self.query_id!r} has no primary key to look up by")
        r = self._by_key.get(key[0] if len(self._kidx) == 1 else tuple(key))
        return None if r is None else self._present(r)

    def __len__(self) -> int:
        if self._kidx is not None:
            return len(self._by_key)
        return sum(e[1] for e in self._multi.values())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"<Subscription {self.query_id!r} rows={len(self)} offset={self.offset}>"

    def _present(self, row: Row) -> Any:
        return dict(zip(self.columns, row)) if self.as_dict else row

    # ---------------------------------------------------------------- callbacks

    def on_insert(self, cb: RowCallback) -> RowCallback:
        """``cb(row)`` for every row added (usable as a decorator)."""
        self._on_insert.append(cb)
        return cb

    def on_delete(self, cb: RowCallback) -> RowCallback:
        """``cb(row)`` for every row removed."""
        self._on_delete.append(cb)
        return cb

    def on_update(self, cb: UpdateCallback) -> UpdateCallback:
        """``cb(old, new)`` for every row replaced by one with the same primary key."""
        self._on_update.append(cb)
        return cb

    def on_change(self, cb: ChangeCallback) -> ChangeCallback:
        """``cb(changes)`` once per commit that changed this subscription."""
        self._on_change.append(cb)
        return cb

    async def wait_for(
        self, predicate: Callable[[Subscription], bool], timeout: float = 10.0
    ) -> None:
        """Wait until ``predicate(self)`` holds (checked now and after every change)."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut

    async def unsubscribe(self) -> None:
        """Stop the subscription; returns once the server confirmed (no delta follows)."""
        if self.client is not None:
            await self.client._unsubscribe(self)

    # ---------------------------------------------------------------- applying

    def _key_of(self, row: Row) -> Any:
        kidx = self._kidx
        assert kidx is not None
        if len(kidx) == 1:
            return row[kidx[0]]
        return tuple(row[i] for i in kidx)

    def _reset(
        self, columns: list[str], types: list[str | None], rows: list[Row], offset: int
    ) -> Changes:
        """A full result (``subscribed``): replace the cache, return the difference."""
        self.columns, self.types, self.offset = columns, types, offset
        if self._decode_bytes:
            self._bytes_at = tuple(i for i, t in enumerate(types) if t == "bytes")
        if self._bytes_at:
            rows = decode_bytes(rows, self._bytes_at)
        old = self._by_key if self._kidx is not None else None
        old_multi = self._multi if self._kidx is None else None
        names = self.key_names
        self._kidx = (
            tuple(columns.index(n) for n in names)
            if names and all(n in columns for n in names)
            else None
        )
        ins: list[Row] = []
        dels: list[Row] = []
        upds: list[tuple[Row, Row]] = []
        if self._kidx is not None:
            new = {self._key_of(r): r for r in rows}
            prev = old or {}
            if old is None and old_multi:  # layout changed: compare as multisets below
                prev = {}
                dels.extend(e[0] for e in old_multi.values() for _ in range(e[1]))
            for k, r in new.items():
                o = prev.get(k)
                if o is None:
                    ins.append(r)
                elif o != r:
                    upds.append((o, r))
            dels.extend(o for k, o in prev.items() if k not in new)
            self._by_key, self._multi = new, {}
        else:
            multi: dict[Any, list[Any]] = {}
            for r in rows:
                k = row_key(r)
                e = multi.get(k)
                if e is None:
                    multi[k] = [r, 1]
                else:
                    e[1] += 1
            before: Counter[Any] = Counter()
            sample: dict[Any, Row] = {}
            for k, e in (old_multi or {}).items():
                before[k] = e[1]
                sample[k] = e[0]
            for o in (old or {}).values():
                k = row_key(o)
                before[k] += 1
                sample[k] = o
            for k, e in multi.items():
                d = e[1] - before.pop(k, 0)
                if d > 0:
                    ins.extend([e[0]] * d)
                elif d < 0:
                    dels.extend([sample[k]] * -d)
            for k, n in before.items():
                dels.extend([sample[k]] * n)
            self._multi, self._by_key = multi, {}
        return Changes(self, offset, ins, dels, upds)

    def _apply(
        self, inserts: list[Row], deletes: list[Row], offset: int, catch_up: bool
    ) -> Changes:
        """One ``tx_update`` entry: deletes first, then inserts; returns what changed."""
        self.offset = offset
        if self._bytes_at:
            inserts = decode_bytes(inserts, self._bytes_at)
            deletes = decode_bytes(deletes, self._bytes_at)
        dels: list[Row] = []
        ins: list[Row] = []
        upds: list[tuple[Row, Row]] = []
        if self._kidx is not None:
            by_key = self._by_key
            key_of = self._key_of
            removed: dict[Any, Row] = {}
            for r in deletes:
                k = key_of(r)
                o = by_key.pop(k, None)
                if o is not None:
                    removed[k] = o
            for r in inserts:
                k = key_of(r)
                o = removed.pop(k, None)
                if o is None:
                    o = by_key.get(k)
                by_key[k] = r
                if o is None:
                    ins.append(r)
                else:
                    upds.append((o, r))
            dels.extend(removed.values())
        else:
            multi = self._multi
            for r in deletes:
                k = row_key(r)
                e = multi.get(k)
                if e is None:
                    continue
                e[1] -= 1
                if e[1] == 0:
                    del multi[k]
                dels.append(e[0])
            for r in inserts:
                k = row_key(r)
                e = multi.get(k)
                if e is None:
                    multi[k] = [r, 1]
                else:
                    e[1] += 1
                ins.append(r)
        return Changes(self, offset, ins, dels, upds, catch_up)

    def _fire(self, ch: Changes) -> None:
        """Run the callbacks for ``ch`` (after every subscription of the commit is applied)."""
        p = self._present
        for cb in self._on_delete:
            for r in ch.deletes:
                _safe(cb, p(r))
        for ucb in self._on_update:
            for o, n in ch.updates:
                _safe(ucb, p(o), p(n))
        for cb in self._on_insert:
            for r in ch.inserts:
                _safe(cb, p(r))
        for ccb in self._on_change:
            _safe(ccb, ch)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.active = False
        self.error = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: nobody may be awaiting it any more
        if self.unsubscribing is not None and not self.unsubscribing.done():
            self.unsubscribing.set_result(None)
        self._wake()


def _safe(cb: Callable[..., object], *args: Any) -> None:
    try:
        cb(*args)
    except Exception:
        log.exception("subscription callback %r failed", cb)
