"""A connection's bounded send queue, released in order once each message is durable.

Every message is queued with the offset it depends on (a commit's deltas and its caller's
result: that commit; initial rows: the offset they were read at; messages that depend on
no state: 0). ``take`` hands out messages strictly in queue order and only once the
head's offset is durable, so "durable before visible" holds per message and no message
overtakes an earlier one (a commit's ``tx_update`` and ``call_result`` stay adjacent and
before any later commit's deltas).

``push`` never blocks and never awaits: it runs inside the commit path (subscription
hooks). A connection whose queue holds ``limit`` messages while its head is already
durable (the backlog is the reader's, not the fsync's), or ``4 * limit`` messages in any
case, is marked for closing and its queue dropped; its pump then closes the socket with
4000. The writer and the other clients never wait for a slow reader.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

BATCH = 64
HARD_FACTOR = 4

CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL = 1011
CLOSE_SLOW_CONSUMER = 4000
CLOSE_TAKEN_OVER = 4001
CLOSE_IDENTITY_INACTIVE = 4003
"""The connection's identity was suspended or revoked: do not reconnect."""


class CloseRequested(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Outbox:
    __slots__ = (
        "_durable",
        "_wait",
        "_wake",
        "close_code",
        "close_reason",
        "closing",
        "flush",
        "items",
        "limit",
    )

    def __init__(
        self,
        limit: int,
        durable: Callable[[], int],
        wait_durable: Callable[[int], Awaitable[None]],
    ) -> None:
        self.items: deque[tuple[int, Any]] = deque()
        self.limit = limit
        self._durable = durable
        self._wait = wait_durable
        self._wake = asyncio.Event()
        self.closing = False
        self.flush = True
        self.close_code = 1000
        self.close_reason = ""

    def __len__(self) -> int:
        return len(self.items)

    def push(self, offset: int, msg: Any) -> None:
        if self.closing and not self.flush:
            return
        items = self.items
        n = len(items)
        if n >= self.limit and (n >= HARD_FACTOR * self.limit or items[0][0] <= self._durable()):
            self.abort(CLOSE_SLOW_CONSUMER, "send queue overflow: resume with the session")
            return
        items.append((offset, msg))
        if len(items) == 1:
            self._wake.set()

    def finish(self, code: int, reason: str) -> None:
        """Close after everything queued so far (and anything pushed meanwhile) is sent."""
        if not self.closing:
            self.closing = True
            self.close_code, self.close_reason = code, reason
            self._wake.set()

    def abort(self, code: int, reason: str) -> None:
        """Drop the queue and close as soon as possible."""
        if self.closing and not self.flush:
            return
        self.closing = True
        self.flush = False
        self.close_code, self.close_reason = code, reason
        self.items.clear()
        self._wake.set()

    async def take(self) -> list[tuple[int, Any]]:
        """The next durable messages in order; raises ``CloseRequested`` when done."""
        items = self.items
        while True:
            if self.closing and (not self.flush or not items):
                raise CloseRequested(self.close_code, self.close_reason)
            if not items:
                self._wake.clear()
                await self._wake.wait()
                continue
            head = items[0][0]
            if head > self._durable():
                await self._wait(head)
                continue
            d = self._durable()
            out: list[tuple[int, Any]] = []
            while items and items[0][0] <= d and len(out) < BATCH:
                out.append(items.popleft())
            return out
