"""``Database.commits_after``: which tables each retained commit changed, in memory and
after a restart (rebuilt from the log), and where it stops knowing (the resume replay
relies on it never inventing or skipping a commit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import Database, Module, StoreConfig

m = Module("journal")


@m.table(primary_key="id")
class Left:
    id: int


@m.table(primary_key="id")
class Right:
    id: int


@m.reducer
def put(ctx: Any, left: list[int], right: list[int]) -> None:
    for i in left:
        ctx.db.left.insert(id=i)
    for i in right:
        ctx.db.right.insert(id=i)


def open_db(d: Path | None, history: int = 100) -> Database:
    return Database.open([m], StoreConfig(data_dir=d, history_commits=history))


def test_commits_after_lists_every_commit_with_its_tables(tmp_path: Path) -> None:
    db = open_db(tmp_path / "d")
    try:
        start = db.offset
        a = db.execute("put", {"left": [1], "right": []}).offset
        b = db.execute("put", {"left": [], "right": [1]}).offset
        c = db.execute("put", {"left": [2], "right": [2]}).offset
        got = db.commits_after(start)
        assert got is not None
        assert [(o, sorted(t)) for o, t in got] == [
            (a, ["left"]),
            (b, ["right"]),
            (c, ["left", "right"]),
        ]
        assert db.commits_after(b) == [(c, got[2][1])]
        assert db.commits_after(c) == []
        assert db.commits_after(c + 1) is None  # the future is not known
        db.close(snapshot=False)  # as after a kill: the log is all there is
        db = open_db(tmp_path / "d")
        again = db.commits_after(start)
        assert again is not None and [(o, sorted(t)) for o, t in again] == [
            (o, sorted(t)) for o, t in got
        ]
        db.close(snapshot=True)  # a snapshot: commits before it are no longer itemized
        db = open_db(tmp_path / "d")
        assert db.commits_after(start) is None
        assert db.commits_after(db.offset) == []
        d = db.execute("put", {"left": [3], "right": []}).offset
        assert db.commits_after(db.offset - 1) == [(d, ("left",))]
    finally:
        db.close()


def test_commits_after_stops_at_the_history_floor() -> None:
    db = open_db(None, history=3)
    try:
        offs = [db.execute("put", {"left": [i], "right": []}).offset for i in range(3000)]
        floor = db.history_floor
        assert floor > offs[0]
        assert db.commits_after(offs[0]) is None
        tail = db.commits_after(floor)
        assert tail is not None and [o for o, _ in tail] == list(range(floor + 1, db.offset + 1))
    finally:
        db.close()
