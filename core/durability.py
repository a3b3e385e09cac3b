"""The durability gate: which offsets are on disk, and who is waiting for which.

The WAL flusher thread calls ``advance(n)``; blocking waiters (scripts, tests) wake on a
condition variable and asyncio waiters are released on their event loop, in offset order.
Invariant: a waiter for offset ``k`` is released only once ``durable >= k`` (or with the
storage error, if the log failed first).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable

from core.errors import StorageFailed


class DurabilityGate:
    def __init__(self, durable: int) -> None:
        self.durable = durable
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._slock = threading.Lock()
        self.listeners: list[Callable[[int], None]] = []

    # ---- called by the flusher thread ----

    def advance(self, offset: int) -> None:
        with self._cond:
            self.durable = offset
            self._cond.notify_all()
        self._kick()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error = exc
            self._cond.notify_all()
        self._kick()

    def _kick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with self._slock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._release)
        except RuntimeError:  # loop closed
            pass

    # ---- on the event loop ----

    def _release(self) -> None:
        with self._slock:
            self._scheduled = False
        d = self.durable
        w = self._waiters
        err = self.error
        while w and (w[0][0] <= d or err is not None):
            off, _, fut = heapq.heappop(w)
            if not fut.done():
                if off <= d:
                    fut.set_result(None)
                else:
                    fut.set_exception(StorageFailed(f"write-ahead log failed: {err!r}"))
        for cb in self.listeners:
            cb(d)

    async def wait_async(self, offset: int) -> None:
        if offset <= self.durable:
            return
        if self.error is not None:
            raise StorageFailed(f"write-ahead log failed: {self.error!r}")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (offset, next(self._seq), fut))
        if offset <= self.durable or self.error is not None:
            self._release()
        await fut

    def wait(self, offset: int, timeout: float | None = None) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.durable >= offset or self.error is not None, timeout
            )
        if self.durable >= offset:
            return
        if self.error is not None:
            raise StorageFailed(f"write-ahead log failed: {self.error!r}")
        if not ok:
            raise TimeoutError(f"offset {offset} not durable after {timeout} s")
