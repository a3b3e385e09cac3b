"""The user module the server tests run (also loaded by path with ``serve --module``)."""

from __future__ import annotations

from collections import Counter as _Counter

from core import Module, ReducerContext, ReducerError, column, index

app = Module("app")

RUNS: _Counter[str] = _Counter()
"""How often each reducer body ran in this process (tests of idempotency)."""


@app.table(primary_key="id", indexes=[index("by_call", "call_id")])
class Segment:
    id: int = column(auto_inc=True)
    call_id: str
    text: str


@app.table(primary_key="name")
class Tally:
    name: str
    value: int


@app.table(primary_key="id")
class Blob:
    id: int
    data: bytes


@app.reducer
def shout(ctx: ReducerContext, call_id: str, text: str) -> int:
    RUNS["shout"] += 1
    return int(ctx.db.segment.insert(call_id=call_id, text=text).id)


@app.reducer
def shout_many(ctx: ReducerContext, call_ids: list, text: str) -> list:
    """One commit touching several calls."""
    return [int(ctx.db.segment.insert(call_id=c, text=text).id) for c in call_ids]


@app.reducer
def bump(ctx: ReducerContext, name: str, by: int = 1) -> int:
    RUNS["bump"] += 1
    t = ctx.db.tally
    row = t.get(name)
    if row is None:
        t.insert(name=name, value=by)
        return by
    t.update(row, value=row.value + by)
    return int(row.value + by)


@app.reducer
def fail(ctx: ReducerContext, why: str) -> None:
    RUNS["fail"] += 1
    ctx.db.tally.insert(name="never", value=1)
    raise ReducerError(why)


@app.reducer
def boom(ctx: ReducerContext) -> None:
    raise KeyError("boom")


@app.reducer
def twice(ctx: ReducerContext, name: str) -> None:
    ctx.db.tally.insert(name=name, value=1)
    ctx.db.tally.insert(name=name, value=2)


@app.reducer
def put_blob(ctx: ReducerContext, id: int, data: bytes) -> int:
    ctx.db.blob.insert(id=id, data=data)
    return len(data)


@app.reducer
def bulk(ctx: ReducerContext, call_id: str, n: int, size: int) -> None:
    for i in range(n):
        ctx.db.segment.insert(call_id=call_id, text=str(i % 10) * size)
