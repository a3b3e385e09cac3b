"""The store's thin async shell: fires scheduled reducers and writes periodic snapshots.

Everything here only decides *when* to call the synchronous core; the heavy half of a
snapshot (encoding and fsync) runs on a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from core.changeset import Changeset
from core.database import Database, now_us

log = logging.getLogger("voicehub.runtime")


class StoreRuntime:
    def __init__(self, db: Database, snapshot_check_s: float = 0.5) -> None:
        self.db = db
        self.snapshot_check_s = snapshot_check_s
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fired = 0

    def _on_commit(self, cs: Changeset) -> None:
        if "__schedule__" in cs.tables:
            self._wake.set()

    async def start(self) -> None:
        self.db.add_listener(self._on_commit)
        self._tasks = [
            asyncio.create_task(self._schedule_loop(), name="voicehub-scheduler"),
            asyncio.create_task(self._snapshot_loop(), name="voicehub-snapshots"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        with contextlib.suppress(ValueError):
            self.db.remove_listener(self._on_commit)

    async def _schedule_loop(self) -> None:
        sched = self.db.scheduler
        while True:
            now = now_us()
            for row in sched.due(now):
                try:
                    sched.fire(row.id)
                    self.fired += 1
                except Exception:
                    log.exception("scheduled reducer %r could not run", row.reducer)
                await asyncio.sleep(0)
            nxt = sched.next_at()
            delay = 1.0 if nxt is None else max(0.0, min(1.0, (nxt - now_us()) / 1e6))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _snapshot_loop(self) -> None:
        db = self.db
        while True:
            await asyncio.sleep(self.snapshot_check_s)
            if db.snapshot_due and not db.closed:
                at, ts, images = db.capture()
                try:
                    await asyncio.to_thread(db.write_captured, at, ts, images)
                except Exception:
                    log.exception("periodic snapshot at offset %d failed", at)
