"""``run_query_async``: AS OF points rebuilt from disk are read off the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core import Database, Module, StoreConfig, column
from core.sql import query as query_module
from core.sql.query import run_query, run_query_async


def open_db(path: Path) -> Database:
    m = Module("aq")

    @m.table(primary_key="id")
    class Note:
        id: int = column(auto_inc=True)
        text: str

    @m.reducer
    def add(ctx: Any, text: str) -> None:
        ctx.db.note.insert(text=text)

    return Database.open([m], StoreConfig(data_dir=path, history_commits=2))


async def test_old_points_run_on_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_db(tmp_path)
    try:
        first = db.call_sync("add", ["a"]).offset
        for t in "bcdefg":
            db.call_sync("add", [t])
        threaded: list[Any] = []
        real = asyncio.to_thread

        async def spy(fn: Any, *args: Any) -> Any:
            threaded.append(fn)
            return await real(fn, *args)

        monkeypatch.setattr(query_module.asyncio, "to_thread", spy)
        old = f"SELECT text FROM note FOR SYSTEM_TIME AS OF {first}"
        assert db.reads_from_disk(offset=first)
        res = await run_query_async(db, old)
        assert res.rows == [("a",)] and res.offset == first
        assert res.rows == run_query(db, old).rows
        assert len(threaded) == 1
        now = await run_query_async(db, "SELECT COUNT(*) FROM note")
        assert now.rows == [(7,)] and len(threaded) == 1  # live reads stay on the loop
    finally:
        db.close()
