"""A write or fsync error of the log is fatal for writes, loudly, and never acknowledged.

The flusher's ``fdatasync`` is made to fail with EIO (the kind of error after which a
file's state is unknown): the commit waiting for it must fail, every later reducer call
must be refused with ``storage_failed``, the failure must be logged at CRITICAL, and a
restart must recover every commit that had been acknowledged before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from core import Database, Module, StorageFailed, StoreConfig, column
from core.wal import writer as wal_writer


def module() -> Module:
    m = Module("walfail")

    @m.table(primary_key="id")
    class Item:
        id: int = column(auto_inc=True)
        k: int

    @m.reducer
    def add(ctx: Any, k: int) -> int:
        return int(ctx.db.item.insert(k=k).id)

    return m


class FailingSync:
    """``os`` stand-in whose fdatasync raises EIO once armed."""

    def __init__(self) -> None:
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)


def test_fsync_error_fails_the_waiter_and_refuses_later_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FailingSync()
    monkeypatch.setattr(wal_writer, "os", fake)
    db = Database.open([module()], StoreConfig(data_dir=tmp_path))
    acked = [db.call_sync("add", [i]).value for i in range(5)]
    fake.armed = True
    with caplog.at_level(logging.CRITICAL), pytest.raises(StorageFailed):
        db.call_sync("add", [99])
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)
    for _ in range(3):
        with pytest.raises(StorageFailed, match="refuses writes"):
            db.execute("add", [100])
    # reads still work, and never show the commit that was not made durable
    with db.snapshot() as snap:
        assert sorted(r.id for r in snap.table("item").rows()) == acked
    db.close()
    monkeypatch.setattr(wal_writer, "os", os)
    again = Database.open([module()], StoreConfig(data_dir=tmp_path))
    try:
        with again.snapshot() as snap:
            ids = sorted(r.id for r in snap.table("item").rows())
        assert ids[: len(acked)] == acked  # every acknowledged commit survived
        assert again.call_sync("add", [7]).offset == again.offset  # and it writes again
    finally:
        again.close()


async def test_async_waiters_get_the_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FailingSync()
    monkeypatch.setattr(wal_writer, "os", fake)
    db = Database.open([module()], StoreConfig(data_dir=tmp_path))
    try:
        await db.call("add", [1])
        fake.armed = True
        results = await asyncio.gather(
            *(db.call("add", [i]) for i in range(8)), return_exceptions=True
        )
        assert results and all(isinstance(r, StorageFailed) for r in results), results
        with pytest.raises(StorageFailed):
            await db.call("add", [2])
    finally:
        db.close(snapshot=False)
