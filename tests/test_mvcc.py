"""MVCC snapshots and AS OF reads, checked against a simple reference model.

The model is a dict ``id -> row`` per committed offset. Random transactions (inserts,
upserts, deletes, some failing on purpose or on a constraint) run against both; snapshots
opened at random points stay open while more commits happen, and every read they serve
(get, hash and B-tree ``find``, B-tree ``range`` in both directions, ``rows``) must equal the
model's state at the snapshot's offset - also after garbage collection of history, with a
tiny ``history_commits`` so that only pins keep old versions alive. AS OF is checked by
offset and by timestamp, from memory and from disk (snapshots + log), before and after a
restart.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from core import (
    ConstraintViolation,
    Database,
    HistoryUnavailable,
    Module,
    ReducerError,
    StoreConfig,
    StoreError,
    btree,
    index,
)
from core.errors import StoreClosed

HISTORY = 5

mod = Module("mvcc")


@mod.table(
    primary_key="id",
    indexes=[btree("by_score", "score"), index("by_room", "room")],
    unique=["tag"],
)
class Item:
    id: int
    room: str | None = None
    score: int | None = None
    tag: str | None = None


@mod.reducer
def apply(ctx: Any, ops: list, fail: bool = False) -> None:
    t = ctx.db.item
    for op in ops:
        if op[0] == "del":
            t.delete(op[1])
            continue
        _, id_, room, score, tag = op
        if op[0] == "ins":
            t.insert(id=id_, room=room, score=score, tag=tag)
        else:
            row = t.get(id_)
            if row is None:
                t.insert(id=id_, room=room, score=score, tag=tag)
            else:
                t.update(row, room=room, score=score, tag=tag)
    if fail:
        raise ReducerError("failing on purpose")


# --------------------------------------------------------------------------- the model

IDS = list(range(8))
ROOMS = ["a", "b", "c", None]
SCORES = [-1, 0, 1, 2, 3, 5, None]
TAGS = ["t0", "t1", "t2", None]
BOUNDS = [None, 0, 1, 3, 4]

Row = tuple[int, str | None, int | None, str | None]
State = dict[int, Row]


def model_apply(state: State, ops: list) -> State | None:
    """The state after ``ops``, or None if one of them violates a constraint."""
    new = dict(state)
    for op in ops:
        if op[0] == "del":
            new.pop(op[1], None)
            continue
        _, id_, room, score, tag = op
        if op[0] == "ins" and id_ in new:
            return None
        if tag is not None and any(r[3] == tag and r[0] != id_ for r in new.values()):
            return None
        new[id_] = (id_, room, score, tag)
    return new


def _order(row: Row) -> tuple:
    score = row[2]
    return ((0,) if score is None else (1, score), row[0])  # B-tree: NULL sorts first


def model_range(state: State, lo: Any, hi: Any, lo_inc: bool, hi_inc: bool, rev: bool) -> list:
    out = []
    for r in state.values():
        s = r[2]
        if lo is not None and (s is None or s < lo or (s == lo and not lo_inc)):
            continue
        if hi is not None and s is not None and (s > hi or (s == hi and not hi_inc)):
            continue
        out.append(r)
    out.sort(key=_order, reverse=rev)
    return out


def _rows(rows: Any) -> list[tuple]:
    return sorted((tuple(r) for r in rows), key=repr)


def check_view(
    table: Any, state: State, where: str, ranges: list[tuple] | None = None, full: bool = True
) -> None:
    """Compare every read of a snapshot table with the model state."""
    assert _rows(table.rows()) == _rows(state.values()), f"{where}: rows()"
    for i in IDS:
        got = table.get(i)
        assert (tuple(got) if got is not None else None) == state.get(i), f"{where}: get({i})"
    if not full:
        return
    assert table.count() == len(state), f"{where}: count()"
    for room in ROOMS:
        want = [r for r in state.values() if r[1] == room]
        assert _rows(table.find("by_room", room)) == _rows(want), f"{where}: by_room={room!r}"
    for tag in TAGS:
        want = [r for r in state.values() if r[3] == tag]
        assert _rows(table.find("tag_unique", tag)) == _rows(want), f"{where}: tag={tag!r}"
    for score in SCORES:
        want = [r for r in state.values() if r[2] == score]
        got = table.find("by_score", score)
        assert _rows(got) == _rows(want), f"{where}: by_score={score!r}"
    if ranges is None:
        ranges = [
            (lo, hi, li, hi_, rev)
            for lo in BOUNDS
            for hi in BOUNDS
            for li in (True, False)
            for hi_ in (True, False)
            for rev in (False, True)
        ]
    for lo, hi, li, hi_, rev in ranges:
        got = [
            tuple(r)
            for r in table.range("by_score", lo, hi, lo_inclusive=li, hi_inclusive=hi_, reverse=rev)
        ]
        want = model_range(state, lo, hi, li, hi_, rev)
        assert got == want, f"{where}: range({lo}, {hi}, {li}, {hi_}, rev={rev})"


_write_st = st.tuples(
    st.sampled_from(["put", "put", "ins"]),
    st.sampled_from(IDS),
    st.sampled_from(ROOMS),
    st.sampled_from(SCORES),
    st.sampled_from([*TAGS, None, None, None]),  # mostly NULL: fewer unique conflicts
)
ops_st = st.lists(
    st.one_of(_write_st, _write_st, _write_st, st.tuples(st.just("del"), st.sampled_from(IDS))),
    min_size=1,
    max_size=4,
).map(lambda ops: [list(o) for o in ops])

commit_st = st.tuples(ops_st, st.integers(0, 9).map(lambda n: n == 0))  # (ops, fail) 10% fail
range_st = st.tuples(
    st.sampled_from(BOUNDS),
    st.sampled_from(BOUNDS),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


def _wait_visible(db: Database, timeout: float = 30.0) -> None:
    """Wait until everything committed is readable (durable under the durable policy)."""
    deadline = time.monotonic() + timeout
    while db.visible_offset < db.offset:
        assert time.monotonic() < deadline, "commits never became durable"
        time.sleep(0.001)


class Model:
    """Committed states by offset and commit timestamps, fed by ``run``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.base = db.offset
        _wait_visible(db)
        with db.snapshot() as s:
            base_ts = s.timestamp
        self.states: dict[int, State] = {self.base: {}}
        self.offsets = [self.base]
        self.stamps = [base_ts]

    @property
    def current(self) -> State:
        return self.states[self.offsets[-1]]

    def run(self, ops: list, fail: bool, durable: bool = False) -> None:
        predicted = model_apply(self.current, ops)
        call = self.db.call_sync if durable else self.db.execute
        if predicted is None:
            with pytest.raises(ConstraintViolation):
                call("apply", {"ops": ops, "fail": fail})
        elif fail:
            with pytest.raises(ReducerError):
                call("apply", {"ops": ops, "fail": fail})
        else:
            res = call("apply", {"ops": ops, "fail": fail})
            assert res.offset == self.offsets[-1] + 1, "offsets must be dense"
            assert res.timestamp > self.stamps[-1], "timestamps must increase"
            self.states[res.offset] = predicted
            self.offsets.append(res.offset)
            self.stamps.append(res.timestamp)
        assert self.db.offset == self.offsets[-1]

    def offset_at(self, ts: int) -> int:
        """The last offset committed at or before ``ts`` (ts >= the base timestamp)."""
        i = bisect.bisect_right(self.stamps, ts)
        assert i > 0
        return self.offsets[i - 1]

    def probe_times(self) -> list[int]:
        """Timestamps at, just before and just after every commit, plus far future."""
        out = set()
        for ts in self.stamps:
            out.update((ts - 1, ts, ts + 1))
        out.add(self.stamps[-1] + 10**9)
        return sorted(t for t in out if t >= self.stamps[0])


# --------------------------------------------------------------------------- snapshots


class SnapshotMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db = Database.open([mod], StoreConfig(durability="none", history_commits=HISTORY))
        self.model = Model(self.db)
        self.open: list[tuple[Any, int]] = []

    def _guaranteed_floor(self) -> int:
        floor = self.db.offset - HISTORY
        if self.open:
            floor = min(floor, min(off for _, off in self.open))
        return floor

    @rule(commit=commit_st)
    def commit(self, commit: tuple[list, bool]) -> None:
        self.model.run(*commit)

    @rule(commits=st.lists(commit_st, min_size=3, max_size=8))
    def burst(self, commits: list[tuple[list, bool]]) -> None:
        for c in commits:
            self.model.run(*c)

    @rule()
    def open_snapshot(self) -> None:
        snap = self.db.snapshot()
        assert snap.offset == self.db.offset
        self.open.append((snap, snap.offset))

    @rule(data=st.data())
    def open_older_snapshot(self, data: st.DataObject) -> None:
        k = data.draw(st.integers(self.model.base, self.db.offset), label="offset")
        guaranteed = k >= self._guaranteed_floor()
        try:
            snap = self.db.as_of(offset=k) if data.draw(st.booleans()) else self.db.snapshot(k)
        except HistoryUnavailable:
            assert not guaranteed, f"offset {k} is inside the retained window but unavailable"
            event("older snapshot refused: outside the retained window")
            return
        if not guaranteed:
            event("older snapshot served from outside the guaranteed window")
        assert snap.offset == k
        check_view(snap.table("item"), self.model.states[k], f"older snapshot @{k}")
        self.open.append((snap, k))

    @rule(data=st.data())
    def as_of_timestamp(self, data: st.DataObject) -> None:
        ts = data.draw(st.sampled_from(self.model.probe_times()), label="timestamp")
        k = self.model.offset_at(ts)
        try:
            snap = self.db.as_of(timestamp=ts)
        except HistoryUnavailable:
            assert k < self._guaranteed_floor(), f"AS OF {ts} (offset {k}) is retained"
            return
        with snap:
            assert snap.offset == k, f"AS OF timestamp {ts}: offset {snap.offset}, expected {k}"
            check_view(snap.table("item"), self.model.states[k], f"as_of ts {ts} (@{k})")

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def close_snapshot(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.open) - 1))
        snap, _ = self.open.pop(i)
        snap.close()
        with pytest.raises(StoreClosed):
            snap.table("item")

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def read_snapshot_fully(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.open) - 1))
        ranges = data.draw(st.lists(range_st, min_size=1, max_size=12), label="ranges")
        snap, off = self.open[i]
        check_view(snap.table("item"), self.model.states[off], f"snapshot @{off}", ranges)

    @invariant()
    def open_snapshots_are_stable(self) -> None:
        for snap, off in self.open:
            if off < self.db.offset - HISTORY:
                event("a pin keeps a snapshot older than the history window alive")
            check_view(snap.table("item"), self.model.states[off], f"@{off}", full=False)

    @invariant()
    def latest_state_matches(self) -> None:
        with self.db.snapshot() as snap:
            check_view(snap.table("item"), self.model.current, "latest", full=False)

    def teardown(self) -> None:
        for snap, off in self.open:
            check_view(snap.table("item"), self.model.states[off], f"final @{off}")
            snap.close()
        self.db.close()


def test_snapshots_match_model() -> None:
    run_state_machine_as_test(
        SnapshotMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _require_slow(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow variant: run with -m slow")


@pytest.mark.slow
def test_snapshots_match_model_slow(request: pytest.FixtureRequest) -> None:
    _require_slow(request)
    run_state_machine_as_test(
        SnapshotMachine,
        settings=settings(
            max_examples=1500,
            stateful_step_count=60,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_pinned_snapshot_survives_gc_of_history() -> None:
    """A deterministic core of the property: one pin, many superseding commits."""
    db = Database.open([mod], StoreConfig(durability="none", history_commits=HISTORY))
    model = Model(db)
    model.run([["put", i, "a", i, f"t{i}"] for i in range(3)], False)
    model.run([["put", 3, None, None, None], ["put", 4, "b", 1, None]], False)
    pinned = db.snapshot()
    at = pinned.offset
    for n in range(40):
        model.run([["put", n % 5, ROOMS[n % 4], n % 7, None], ["del", (n + 2) % 5]], False)
        model.run([["ins", 0, None, None, None]], n % 3 == 0)  # fails on purpose or on pk
    assert db.history_floor <= at
    check_view(pinned.table("item"), model.states[at], "pinned")
    # Offsets between the pin and the window are still readable thanks to the pin.
    mid = at + 10
    with db.snapshot(mid) as s:
        check_view(s.table("item"), model.states[mid], "between pin and window")
    pinned.close()
    model.run([["del", 1]], False)  # the next commit collects what the pin protected
    assert db.history_floor > at
    with pytest.raises(HistoryUnavailable):
        db.snapshot(at)
    with pytest.raises(HistoryUnavailable):
        db.as_of(offset=at)
    with pytest.raises(HistoryUnavailable):
        db.as_of(timestamp=model.stamps[model.offsets.index(at)])
    with db.snapshot(db.offset - HISTORY) as s:
        check_view(s.table("item"), model.states[db.offset - HISTORY], "edge of the window")
    db.close()


def test_snapshot_argument_errors() -> None:
    db = Database.open([mod], StoreConfig(durability="none"))
    db.execute("apply", {"ops": [["put", 1, "a", 1, None]]})
    with pytest.raises(HistoryUnavailable, match="not committed"):
        db.snapshot(db.offset + 1)
    with pytest.raises(HistoryUnavailable):
        db.as_of(offset=db.offset + 1)
    with pytest.raises(ValueError, match="exactly one"):
        db.as_of()
    with pytest.raises(ValueError, match="exactly one"):
        db.as_of(offset=1, timestamp=1)
    snap = db.snapshot()
    snap.close()
    snap.close()  # idempotent
    with pytest.raises(StoreClosed):
        snap.table("item")
    db.close()


# --------------------------------------------------------------------------- async readers

bank = Module("bank")


@bank.table(primary_key="id", indexes=[btree("by_balance", "balance")])
class Account:
    id: int
    balance: int


@bank.reducer
def open_accounts(ctx: Any, n: int, amount: int) -> None:
    for i in range(n):
        ctx.db.account.insert(id=i, balance=amount)


@bank.reducer
def transfer(ctx: Any, src: int, dst: int, amount: int) -> None:
    t = ctx.db.account
    a = t.get(src)
    t.update(a, balance=a.balance - amount)
    b = t.get(dst)
    t.update(b, balance=b.balance + amount)
    if t.get(src).balance < 0:
        raise ReducerError("insufficient funds")  # after the writes: must roll back


@bank.reducer
def reopen(ctx: Any, id: int) -> None:
    """Delete an account and re-create it with the same balance (a delete + an insert)."""
    t = ctx.db.account
    row = t.get(id)
    t.delete(id)
    t.insert(id=id, balance=row.balance)
    t.update(t.get(id), balance=row.balance)


N_ACCOUNTS = 12
START = 100


@pytest.mark.parametrize("durability", ["none", "durable"])
async def test_snapshot_read_spanning_awaits_is_consistent(durability: str, tmp_path: Path) -> None:
    cfg = StoreConfig(
        durability=durability,  # type: ignore[arg-type]
        data_dir=tmp_path if durability != "none" else None,
        history_commits=2,
        segment_bytes=1 << 20,
    )
    db = Database.open([bank], cfg)
    await db.call("open_accounts", {"n": N_ACCOUNTS, "amount": START})
    await db.call("transfer", {"src": 0, "dst": 1, "amount": 40})
    snap = db.snapshot()
    expected = {r.id: r.balance for r in snap.table("account").rows()}
    assert sum(expected.values()) == N_ACCOUNTS * START
    expected_order = sorted(expected.items(), key=lambda kv: (kv[1], kv[0]))
    progress = {"commits": 0, "done": False}
    rnd = random.Random(7)

    async def writer() -> None:
        for i in range(400):
            src, dst = rnd.sample(range(N_ACCOUNTS), 2)
            try:
                if i % 11 == 0:
                    await db.call("reopen", {"id": src})
                else:
                    await db.call(
                        "transfer", {"src": src, "dst": dst, "amount": rnd.randint(1, 60)}
                    )
                progress["commits"] += 1
            except ReducerError:
                pass
            await asyncio.sleep(0)
        progress["done"] = True

    async def reader() -> int:
        passes = 0
        seen_commits: set[int] = set()
        while not progress["done"] or passes < 3:
            table = snap.table("account")
            got = {}
            for i in range(N_ACCOUNTS):
                got[i] = table.get(i).balance
                seen_commits.add(progress["commits"])
                await asyncio.sleep(0)
            assert got == expected
            ordered = []
            for lo in range(0, 400, 25):  # a range scan in chunks, awaiting between them
                chunk = table.range("by_balance", lo, lo + 25, hi_inclusive=False)
                ordered.extend((r.id, r.balance) for r in chunk)
                await asyncio.sleep(0)
            assert ordered == expected_order
            assert sorted((r.id, r.balance) for r in table.rows()) == sorted(expected.items())
            with db.snapshot() as now:  # every committed state conserves the total
                assert sum(r.balance for r in now.table("account").rows()) == N_ACCOUNTS * START
            passes += 1
        return len(seen_commits)

    _, distinct = await asyncio.gather(writer(), reader())
    assert progress["commits"] > 300
    assert distinct > 10, "the reader never overlapped the writer"
    assert db.offset > snap.offset + 300
    assert snap.table("account").get(0).balance == expected[0]
    snap.close()
    db.close()


# --------------------------------------------------------------------------- AS OF


def check_as_of_everywhere(db: Database, model: Model, where: str) -> dict[str, int]:
    """AS OF every offset and around every commit timestamp; returns how it was served."""
    floor = db.history_floor
    served = {"memory": 0, "disk": 0}
    for k in model.offsets:
        served["memory" if k >= floor else "disk"] += 1
        with db.as_of(offset=k) as snap:
            assert snap.offset == k
            check_view(snap.table("item"), model.states[k], f"{where}: AS OF offset {k}")
    for ts in model.probe_times():
        k = model.offset_at(ts)
        with db.as_of(timestamp=ts) as snap:
            assert snap.offset == k, f"{where}: AS OF timestamp {ts} gave {snap.offset}, not {k}"
            check_view(snap.table("item"), model.states[k], f"{where}: AS OF ts {ts} (@{k})")
    with pytest.raises(HistoryUnavailable):
        db.as_of(offset=db.offset + 1)
    return served


@settings(max_examples=25, deadline=None, database=None)
@given(commits=st.lists(commit_st, min_size=1, max_size=30))
def test_as_of_in_memory_window(commits: list[tuple[list, bool]]) -> None:
    db = Database.open([mod], StoreConfig(durability="none"))
    model = Model(db)
    for c in commits:
        model.run(*c)
    served = check_as_of_everywhere(db, model, "memory")
    assert served["disk"] == 0
    db.close()


@settings(max_examples=25, deadline=None, database=None)
@given(commits=st.lists(commit_st, min_size=1, max_size=30))
def test_as_of_outside_memory_window_without_log(commits: list[tuple[list, bool]]) -> None:
    db = Database.open([mod], StoreConfig(durability="none", history_commits=HISTORY))
    model = Model(db)
    for c in commits:
        model.run(*c)
    for k in model.offsets:
        try:
            snap = db.as_of(offset=k)
        except HistoryUnavailable:
            assert k < db.offset - HISTORY, f"offset {k} is inside the window"
            continue
        with snap:
            check_view(snap.table("item"), model.states[k], f"AS OF {k}")
    if db.offset - HISTORY > model.base:
        with pytest.raises(HistoryUnavailable):
            db.as_of(offset=model.base)
        with pytest.raises(HistoryUnavailable):
            db.as_of(timestamp=model.stamps[0])
    db.close()


@contextmanager
def durable_db(data_dir: Path, **kw: Any) -> Iterator[Database]:
    cfg = StoreConfig(data_dir=data_dir, history_commits=HISTORY, segment_bytes=1 << 16, **kw)
    db = Database.open([mod], cfg)
    try:
        yield db
    finally:
        db.close(snapshot=False)


def _run_with_snapshots(db: Database, model: Model, commits: list, snap_at: set[int]) -> None:
    for i, c in enumerate(commits):
        model.run(*c, durable=True)
        if i in snap_at:
            path = db.take_snapshot()
            assert path is None or path.exists()


def _as_of_from_disk_case(commits: list[tuple[list, bool]], snap_at: set[int]) -> None:
    with tempfile.TemporaryDirectory() as d, durable_db(Path(d)) as db:
        model = Model(db)
        _run_with_snapshots(db, model, commits, snap_at)
        served = check_as_of_everywhere(db, model, "durable")
        if len(model.offsets) > HISTORY + 2:
            assert served["disk"] > 0, "no AS OF read was served from disk"


_disk_cases = given(
    commits=st.lists(commit_st, min_size=8, max_size=30),
    snap_at=st.sets(st.integers(0, 29), max_size=3),
)


@settings(max_examples=10, deadline=None, database=None)
@_disk_cases
def test_as_of_from_disk(commits: list[tuple[list, bool]], snap_at: set[int]) -> None:
    _as_of_from_disk_case(commits, snap_at)


@pytest.mark.slow
def test_as_of_from_disk_slow(request: pytest.FixtureRequest) -> None:
    _require_slow(request)
    settings(max_examples=300, deadline=None, database=None)(_disk_cases(_as_of_from_disk_case))()


def _as_of_after_restart_case(
    commits: list[tuple[list, bool]],
    snap_at: set[int],
    more: list[tuple[list, bool]],
    final_snapshot: bool,
) -> None:
    with tempfile.TemporaryDirectory() as d:
        cfg = StoreConfig(data_dir=Path(d), history_commits=HISTORY, segment_bytes=1 << 16)
        db = Database.open([mod], cfg)
        model = Model(db)
        _run_with_snapshots(db, model, commits, snap_at)
        db.close(snapshot=final_snapshot)
        db = model.db = Database.open([mod], cfg)
        try:
            assert db.offset == model.offsets[-1]
            for c in more:
                model.run(*c, durable=True)
            check_as_of_everywhere(db, model, "after restart")
        finally:
            db.close()


_restart_cases = given(
    commits=st.lists(commit_st, min_size=8, max_size=25),
    snap_at=st.sets(st.integers(0, 24), min_size=1, max_size=2),
    more=st.lists(commit_st, max_size=4),
    final_snapshot=st.booleans(),
)


@settings(max_examples=8, deadline=None, database=None)
@_restart_cases
def test_as_of_after_restart(
    commits: list[tuple[list, bool]],
    snap_at: set[int],
    more: list[tuple[list, bool]],
    final_snapshot: bool,
) -> None:
    _as_of_after_restart_case(commits, snap_at, more, final_snapshot)


@pytest.mark.slow
def test_as_of_after_restart_slow(request: pytest.FixtureRequest) -> None:
    _require_slow(request)
    settings(max_examples=150, deadline=None, database=None)(
        _restart_cases(_as_of_after_restart_case)
    )()


def test_as_of_oldest_in_memory_offset_after_restart(tmp_path: Path) -> None:
    """After a restart the in-memory history starts at the snapshot (or the replay window).

    Every offset must still be readable: the oldest one the memory claims to hold
    (``history_floor``) included - there is even a snapshot file exactly at it.
    """
    cfg = StoreConfig(data_dir=tmp_path, history_commits=HISTORY, segment_bytes=1 << 16)
    db = Database.open([mod], cfg)
    model = Model(db)
    for i in range(10):
        model.run([["put", i % len(IDS), "a", i, None]], False, durable=True)
    db.take_snapshot()
    snap_offset = db.offset
    for i in range(3):
        model.run([["del", i]], False, durable=True)
    db.close(snapshot=False)
    db = model.db = Database.open([mod], cfg)
    try:
        assert db.history_floor <= snap_offset + 1
        unavailable = []
        for k in model.offsets:
            try:
                with db.as_of(offset=k) as snap:
                    check_view(snap.table("item"), model.states[k], f"AS OF {k}")
            except HistoryUnavailable as e:
                unavailable.append((k, str(e)))
        assert unavailable == [], (
            f"history_floor={db.history_floor}, snapshot at {snap_offset}: {unavailable}"
        )
    finally:
        db.close()


@pytest.mark.parametrize("final_snapshot", [True, False])
def test_snapshot_right_after_restart_while_a_commit_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, final_snapshot: bool
) -> None:
    """Under ``durable`` readers see ``visible_offset``, which lags a commit until its fsync.

    Right after a restart that lag makes ``snapshot()`` read at the recovered offset, and
    that must work like any other read (fsync is slowed down here to hold the window open).
    """
    cfg = StoreConfig(data_dir=tmp_path, history_commits=HISTORY, segment_bytes=1 << 16)
    db = Database.open([mod], cfg)
    model = Model(db)
    for i in range(8):
        model.run([["put", i % len(IDS), "a", i, None]], False, durable=True)
    if not final_snapshot:
        db.take_snapshot()
        model.run([["del", 0]], False, durable=True)
    db.close(snapshot=final_snapshot)
    db = model.db = Database.open([mod], cfg)
    try:
        recovered = db.offset
        real = os.fdatasync

        def slow_fdatasync(fd: int) -> None:
            time.sleep(0.3)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
        db.execute("apply", {"ops": [["put", 7, "z", 9, None]]})
        assert db.visible_offset == recovered, "the commit became durable too fast for this test"
        with db.snapshot() as snap:
            assert snap.offset == recovered
            check_view(snap.table("item"), model.states[recovered], "right after restart")
    finally:
        monkeypatch.undo()
        db.close()


def test_as_of_before_retained_history_raises(tmp_path: Path) -> None:
    """With old log segments pruned, AS OF older than the oldest snapshot is unavailable."""
    cfg = StoreConfig(
        data_dir=tmp_path, history_commits=HISTORY, segment_bytes=2048, keep_snapshots=1
    )
    db = Database.open([mod], cfg)
    model = Model(db)
    rnd = random.Random(3)
    snaps = []
    for n in range(60):
        ops = [["put", rnd.choice(IDS), rnd.choice(ROOMS), rnd.choice(SCORES), None]]
        model.run(ops, False, durable=True)
        if n in (20, 40):
            db.take_snapshot()
            snaps.append(db.offset)
    wal = sorted(p.name for p in (tmp_path / "wal").iterdir())
    assert int(wal[0].split(".")[0]) > 1, f"old segments were not pruned: {wal}"
    oldest = snaps[-1]  # keep_snapshots=1: only the newest snapshot is kept
    try:
        for k in model.offsets:
            if k < oldest:
                with pytest.raises(HistoryUnavailable):
                    db.as_of(offset=k)
                with pytest.raises(HistoryUnavailable):
                    db.as_of(timestamp=model.stamps[model.offsets.index(k)])
            else:
                with db.as_of(offset=k) as snap:
                    check_view(snap.table("item"), model.states[k], f"AS OF {k}")
    finally:
        db.close()


def test_as_of_needs_a_log_outside_memory() -> None:
    db = Database.open([mod], StoreConfig(durability="none", history_commits=0))
    for i in range(5):
        db.execute("apply", {"ops": [["put", i, None, i, None]]})
    with pytest.raises(HistoryUnavailable, match="keeps no log") as ei:
        db.as_of(offset=db.offset - 2)
    assert isinstance(ei.value, StoreError) and ei.value.code == "history_unavailable"
    with db.as_of(offset=db.offset) as snap:
        assert len(snap.table("item").rows()) == 5
    db.close()
