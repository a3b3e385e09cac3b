"""Scheduled reducers fired by ``StoreRuntime``: one-shot, repeating, module-declared,
failing, cancelled, and surviving a restart.

Timing: intervals are tens of milliseconds, but nothing asserts on wall-clock sleeps. Tests
poll with a generous timeout, and "did not fire (again)" is established by waiting for a
*sentinel* schedule due later than the one under test: once the sentinel has fired, the
runtime has certainly passed the other due time. Firing times are checked against the
schedule grid (``at + k * every``) from the commit timestamps the reducers record, which
is exact however late a loaded machine runs the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from core import Database, Module, ReducerError, StoreConfig, Timestamp, column
from core.runtime import StoreRuntime

TIMEOUT = 20.0  # seconds; generous for a loaded 2-core machine
MS = 1000  # microseconds

mod = Module("sched")


@mod.table(primary_key="id")
class Fired:
    id: int = column(auto_inc=True)
    tag: str
    at: Timestamp
    offset: int


ATTEMPTS: list[tuple[str, int]] = []  # outside the store: survives rollbacks


@mod.reducer
def tick(ctx: Any, tag: str) -> None:
    ctx.db.fired.insert(tag=tag, at=ctx.timestamp, offset=ctx.offset)


@mod.reducer
def boom(ctx: Any, tag: str) -> None:
    ATTEMPTS.append((tag, ctx.timestamp))
    ctx.db.fired.insert(tag=tag, at=ctx.timestamp, offset=ctx.offset)  # must roll back
    if tag.startswith("reject"):
        raise ReducerError("rejected")
    raise RuntimeError("scheduled reducer failure")


@mod.reducer
def arm(
    ctx: Any,
    reducer: str,
    tag: str,
    delay_us: int | None = None,
    every_us: int | None = None,
) -> int:
    return ctx.schedule(reducer, delay_us=delay_us, every_us=every_us, args={"tag": tag})


@mod.reducer
def arm_at(ctx: Any, reducer: str, tag: str, at: Timestamp) -> int:
    return ctx.schedule(reducer, at=at, args={"tag": tag})


@mod.reducer
def arm_then_fail(ctx: Any, tag: str, delay_us: int) -> None:
    ctx.schedule("tick", delay_us=delay_us, args={"tag": tag})
    raise ReducerError("rolled back together with its schedule")


@mod.reducer
def cancel(ctx: Any, id: int) -> bool:
    return ctx.cancel_schedule(id)


HEART_EVERY_US = 30 * MS
heart = Module("heart")


@heart.table(primary_key="id")
class Beat:
    id: int = column(auto_inc=True)
    at: Timestamp


@heart.scheduled(every_us=HEART_EVERY_US)
def heartbeat(ctx: Any) -> None:
    ctx.db.beat.insert(at=ctx.timestamp)


# --------------------------------------------------------------------------- helpers


async def wait_for(pred: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


def fired(db: Database, tag: str) -> list[Any]:
    with db.snapshot() as s:
        return sorted((r for r in s.table("fired").rows() if r.tag == tag), key=lambda r: r.at)


def beats(db: Database) -> list[int]:
    with db.snapshot() as s:
        return sorted(r.at for r in s.table("beat").rows())


def schedules(db: Database) -> dict[int, Any]:
    with db.snapshot() as s:
        return {r.id: r for r in s.table("__schedule__").rows()}


def assert_on_grid(times: list[int], first_at: int, every: int, what: str) -> None:
    """Each firing happens at or after its grid point, and no grid slot fires twice.

    A spinning or catching-up scheduler would fire several times within one interval.
    """
    assert times == sorted(times)
    assert times[0] >= first_at, f"{what}: fired before it was due"
    slots = [(t - first_at) // every for t in times]
    assert all(a < b for a, b in itertools.pairwise(slots)), (
        f"{what}: fired more than once per interval: slots {slots}"
    )


async def sentinel(db: Database, delay_us: int, tag: str = "sentinel") -> None:
    """Arm a one-shot due in ``delay_us`` and wait until it has fired."""
    db.execute("arm", {"reducer": "tick", "tag": tag, "delay_us": delay_us})
    await wait_for(lambda: fired(db, tag), f"the {tag} schedule")


@asynccontextmanager
async def running(db: Database) -> AsyncIterator[StoreRuntime]:
    rt = StoreRuntime(db)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
def db() -> Any:
    d = Database.open([mod], StoreConfig(durability="none"))
    ATTEMPTS.clear()
    yield d
    d.close()


# --------------------------------------------------------------------------- tests


async def test_one_shot_fires_once(db: Database) -> None:
    async with running(db):
        res = db.execute("arm", {"reducer": "tick", "tag": "once", "delay_us": 40 * MS})
        sid = res.value
        row = schedules(db)[sid]
        assert (row.reducer, row.args, row.every_us) == ("tick", {"tag": "once"}, None)
        assert row.at == res.timestamp + 40 * MS
        await wait_for(lambda: fired(db, "once"), "the one-shot schedule")
        await sentinel(db, 60 * MS)
        rows = fired(db, "once")
        assert len(rows) == 1, f"a one-shot fired {len(rows)} times"
        assert rows[0].at >= res.timestamp + 40 * MS, "fired before it was due"
        assert sid not in schedules(db), "a fired one-shot must be deleted"


async def test_schedule_at_absolute_time_in_the_past_fires_promptly(db: Database) -> None:
    async with running(db):
        db.execute("arm_at", {"reducer": "tick", "tag": "past", "at": 1})
        await wait_for(lambda: fired(db, "past"), "a schedule already due")
        await sentinel(db, 30 * MS)
        assert len(fired(db, "past")) == 1


async def test_repeating_schedule_fires_repeatedly_then_cancel_stops_it(db: Database) -> None:
    every = 20 * MS
    async with running(db):
        res = db.execute("arm", {"reducer": "tick", "tag": "rep", "every_us": every})
        sid = res.value
        first_at = schedules(db)[sid].at
        assert first_at == res.timestamp + every  # no delay given: first run after one interval
        await wait_for(lambda: len(fired(db, "rep")) >= 4, "four repetitions")
        row = schedules(db)[sid]
        times = [r.at for r in fired(db, "rep")]
        assert_on_grid(times, first_at, every, "repeating schedule")
        assert row.every_us == every and row.at > times[-1] - every
        assert (row.at - first_at) % every == 0, "the schedule drifted off its grid"

        assert db.execute("cancel", {"id": sid}).value is True
        n = len(fired(db, "rep"))
        assert sid not in schedules(db)
        await sentinel(db, 5 * every)
        assert len(fired(db, "rep")) == n, "a cancelled schedule kept firing"
        assert db.execute("cancel", {"id": sid}).value is False


async def test_cancel_before_first_firing(db: Database) -> None:
    async with running(db):
        sid = db.execute("arm", {"reducer": "tick", "tag": "never", "delay_us": 30 * MS}).value
        rep = db.execute("arm", {"reducer": "tick", "tag": "never2", "every_us": 20 * MS}).value
        assert db.execute("cancel", {"id": sid}).value is True
        assert db.execute("cancel", {"id": rep}).value is True
        with pytest.raises(ReducerError):
            db.execute("arm_then_fail", {"tag": "rolled-back", "delay_us": 10 * MS})
        assert all(
            r.args["tag"] not in ("never", "never2", "rolled-back") for r in schedules(db).values()
        )
        await sentinel(db, 120 * MS)
        assert fired(db, "never") == []
        assert fired(db, "never2") == []
        assert fired(db, "rolled-back") == []


async def test_module_declared_scheduled_reducer() -> None:
    db = Database.open([mod, heart], StoreConfig(durability="none"))
    try:
        rows = [r for r in schedules(db).values() if r.reducer == "heartbeat"]
        assert len(rows) == 1
        assert rows[0].every_us == HEART_EVERY_US
        first_at = rows[0].at
        assert beats(db) == [], "must not run before the runtime starts it"
        async with running(db) as rt:
            await wait_for(lambda: len(beats(db)) >= 3, "three heartbeats")
            assert rt.fired >= 3
        times = beats(db)
        assert_on_grid(times, first_at, HEART_EVERY_US, "heartbeat")
        assert len([r for r in schedules(db).values() if r.reducer == "heartbeat"]) == 1
    finally:
        db.close()


async def test_failing_scheduled_reducer_does_not_spin(db: Database) -> None:
    every = 25 * MS
    async with running(db):
        start = db.offset
        rep = db.execute("arm", {"reducer": "boom", "tag": "bad-rep", "every_us": every}).value
        first_at = schedules(db)[rep].at
        once = db.execute("arm", {"reducer": "boom", "tag": "bad-once", "delay_us": 10 * MS}).value
        rej = db.execute(
            "arm", {"reducer": "boom", "tag": "reject-once", "delay_us": 10 * MS}
        ).value
        await wait_for(
            lambda: len([a for a in ATTEMPTS if a[0] == "bad-rep"]) >= 3, "three failing runs"
        )
        await sentinel(db, 100 * MS)
    end = db.offset
    attempts = {tag: [ts for t, ts in ATTEMPTS if t == tag] for tag in ("bad-rep", "bad-once")}
    assert len(attempts["bad-once"]) == 1, "a failing one-shot must run exactly once"
    assert len([a for a in ATTEMPTS if a[0] == "reject-once"]) == 1
    assert once not in schedules(db) and rej not in schedules(db)
    assert_on_grid(attempts["bad-rep"], first_at, every, "failing repeating schedule")
    row = schedules(db)[rep]
    assert row.at > attempts["bad-rep"][-1], "the failing schedule was not advanced"
    # Everything the failing reducer wrote was rolled back.
    for tag in ("bad-rep", "bad-once", "reject-once"):
        assert fired(db, tag) == []
    # Each failed firing costs at most a couple of commits (no spinning on the log either).
    assert end - start <= 3 + 1 + 2 * len(ATTEMPTS)


async def test_runtime_stop_stops_firing(db: Database) -> None:
    every = 20 * MS
    async with running(db):
        db.execute("arm", {"reducer": "tick", "tag": "rep", "every_us": every})
        await wait_for(lambda: len(fired(db, "rep")) >= 2, "two repetitions")
    n = len(fired(db, "rep"))
    await asyncio.sleep(5 * every / 1e6)
    assert len(fired(db, "rep")) == n


@pytest.mark.parametrize("final_snapshot", [True, False])
async def test_schedule_survives_restart(tmp_path: Path, final_snapshot: bool) -> None:
    every = 40 * MS
    cfg = StoreConfig(data_dir=tmp_path, segment_bytes=1 << 20)
    db = Database.open([mod, heart], cfg)
    try:
        once = db.call_sync("arm", {"reducer": "tick", "tag": "after", "delay_us": 30 * MS})
        rep = db.call_sync("arm", {"reducer": "tick", "tag": "rep", "every_us": every})
        rep_first_at = schedules(db)[rep.value].at
        due = schedules(db)[once.value].at
    finally:
        db.close(snapshot=final_snapshot)
    # Let both come due (and several repetitions be missed) while the store is down.
    await wait_for(lambda: time.time_ns() // 1000 > due + 3 * every, "the due time to pass")

    db = Database.open([mod, heart], cfg)
    try:
        rows = schedules(db)
        assert once.value in rows and rep.value in rows
        assert len([r for r in rows.values() if r.reducer == "heartbeat"]) == 1
        assert fired(db, "after") == [] and fired(db, "rep") == []
        async with running(db):
            await wait_for(lambda: fired(db, "after"), "the one-shot after the restart")
            await wait_for(lambda: len(fired(db, "rep")) >= 3, "repetitions after the restart")
            await sentinel(db, 50 * MS)
        assert len(fired(db, "after")) == 1
        assert fired(db, "after")[0].at >= due
        # Missed repetitions are not caught up in a burst: still one per interval.
        assert_on_grid([r.at for r in fired(db, "rep")], rep_first_at, every, "after restart")
        assert len(beats(db)) >= 1
    finally:
        db.close(snapshot=final_snapshot)

    # The firing (and deletion of the one-shot) is durable: a second restart does not
    # fire it again.
    db = Database.open([mod, heart], cfg)
    try:
        assert once.value not in schedules(db)
        async with running(db):
            await sentinel(db, 40 * MS, tag="sentinel2")
        assert len(fired(db, "after")) == 1
        assert len([r for r in schedules(db).values() if r.reducer == "heartbeat"]) == 1
    finally:
        db.close()


async def test_schedule_validation(db: Database) -> None:
    from core import NoSuchReducer
    from core.errors import ArgumentError

    with pytest.raises(NoSuchReducer, match="cannot schedule 'nope'"):
        db.execute("arm", {"reducer": "nope", "tag": "x", "delay_us": 1})
    with pytest.raises(ArgumentError, match="every_us must be positive"):
        db.execute("arm", {"reducer": "tick", "tag": "x", "every_us": 0})
    m = Module("argcheck")

    @m.reducer
    def bad_args(ctx: Any) -> None:
        ctx.schedule("tick", delay_us=1, args={"tag": 5})

    d = Database.open([mod, m], StoreConfig(durability="none"))
    try:
        with pytest.raises(ArgumentError, match="argument 'tag'"):
            d.execute("bad_args")
        assert schedules(d) == {}
    finally:
        d.close()
    assert schedules(db) == {}
