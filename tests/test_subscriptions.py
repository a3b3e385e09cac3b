"""Subscription manager behaviour: sharing, dispatch by parameter, ordering, release.

The differential correctness of every operator is checked against SQLite elsewhere; these
tests pin down the manager's own promises.
"""

from __future__ import annotations

from typing import Any

import pytest

from core import Database, Module, StoreConfig, column, index
from core.dbsp.circuit import Circuit
from core.errors import SqlError
from core.subscriptions import Delta, Subscription, SubscriptionManager


def make_db() -> Database:
    m = Module("subs")

    @m.table(primary_key="id", indexes=[index("by_call", "call_id")])
    class Segment:
        id: int = column(auto_inc=True)
        call_id: int
        text: str
        meta: dict | None = None

    @m.table(primary_key="id")
    class Call:
        id: int
        status: str

    @m.reducer
    def say(ctx: Any, call_id: int, text: str) -> int:
        return int(ctx.db.segment.insert(call_id=call_id, text=text).id)

    @m.reducer
    def say_meta(ctx: Any, call_id: int, text: str, meta: dict) -> int:
        return int(ctx.db.segment.insert(call_id=call_id, text=text, meta=meta).id)

    @m.reducer
    def edit(ctx: Any, id: int, text: str) -> None:
        ctx.db.segment.update(ctx.db.segment.get(id), text=text)

    @m.reducer
    def drop(ctx: Any, id: int) -> None:
        ctx.db.segment.delete(id)

    @m.reducer
    def open_call(ctx: Any, id: int, status: str) -> None:
        ctx.db.call.insert(id=id, status=status)

    @m.reducer
    def both(ctx: Any, call_id: int) -> None:
        ctx.db.segment.insert(call_id=call_id, text="x")
        ctx.db.call.update(ctx.db.call.get(call_id), status="talking")

    @m.reducer
    def fail(ctx: Any, call_id: int) -> None:
        ctx.db.segment.insert(call_id=call_id, text="never")
        raise RuntimeError("boom")

    return Database.open([m], StoreConfig())


Log = list[tuple[int, dict[Subscription, Delta]]]


def watch(mgr: SubscriptionManager) -> Log:
    log: Log = []
    mgr.hooks.append(lambda off, up: log.append((off, dict(up))))
    return log


def test_initial_rows_then_one_delta_per_commit_in_order() -> None:
    db = make_db()
    db.execute("say", [1, "a"])
    mgr = SubscriptionManager(db)
    log = watch(mgr)
    sub, rows = mgr.subscribe("SELECT id, text FROM segment WHERE call_id = $1", [1])
    assert rows == [(1, "a")]
    r1 = db.execute("say", [1, "b"])
    db.execute("say", [2, "other call"])
    r3 = db.execute("edit", [1, "A"])
    assert [off for off, _ in log] == [r1.offset, r3.offset]
    assert log[0][1][sub] == Delta([(2, "b")], [])
    assert log[1][1][sub] == Delta([(1, "A")], [(1, "a")])
    assert sorted(sub.rows()) == [(1, "A"), (2, "b")]


def test_failed_commit_produces_nothing() -> None:
    db = make_db()
    mgr = SubscriptionManager(db)
    log = watch(mgr)
    mgr.subscribe("SELECT * FROM segment WHERE call_id = 1")
    with pytest.raises(Exception, match="boom"):
        db.execute("fail", [1])
    assert log == []


def test_all_subscriptions_of_a_commit_arrive_together() -> None:
    db = make_db()
    db.execute("open_call", [7, "ringing"])
    mgr = SubscriptionManager(db)
    log = watch(mgr)
    a, _ = mgr.subscribe("SELECT text FROM segment WHERE call_id = 7")
    b, _ = mgr.subscribe("SELECT status FROM call WHERE id = 7")
    c, _ = mgr.subscribe("SELECT COUNT(*) FROM segment")
    db.execute("both", [7])
    assert len(log) == 1
    _, updates = log[0]
    assert updates[a] == Delta([("x",)], [])
    assert updates[b] == Delta([("talking",)], [("ringing",)])
    assert updates[c] == Delta([(1,)], [(0,)])


def test_identical_queries_share_one_circuit_and_unsubscribe_releases_it() -> None:
    db = make_db()
    mgr = SubscriptionManager(db)
    q = "SELECT s.text, c.status FROM segment s JOIN call c ON s.call_id = c.id"
    s1, _ = mgr.subscribe(q)
    s2, _ = mgr.subscribe(" ".join(q.split()))  # same query, other whitespace
    s3, _ = mgr.subscribe(q.replace("JOIN", "LEFT JOIN"))
    assert s1.instance is s2.instance
    assert s3.instance is not s1.instance
    assert len(mgr.instances) == 2
    mgr.unsubscribe(s1)
    assert len(mgr.instances) == 2
    mgr.unsubscribe(s2)
    mgr.unsubscribe(s3)
    assert mgr.instances == {}
    assert mgr.broadcast == {} and mgr.dispatch == {}
    assert mgr.registry.arrangements == {}


def test_shared_arrangement_is_reference_counted() -> None:
    db = make_db()
    for i in range(3):
        db.execute("say", [i, f"t{i}"])
    mgr = SubscriptionManager(db)
    # `text` has no store index, so each join side is a registry arrangement; the
    # unfiltered side `b` (segment keyed by text) is the same in both circuits: shared
    q1 = "SELECT a.id FROM segment a JOIN segment b ON a.text = b.text WHERE a.call_id = 1"
    q2 = "SELECT a.id FROM segment a JOIN segment b ON a.text = b.text WHERE a.call_id = 2"
    s1, r1 = mgr.subscribe(q1)
    s2, r2 = mgr.subscribe(q2)
    assert r1 == [(2,)] and r2 == [(3,)]
    arrs = list(mgr.registry.arrangements.values())
    shared = [a for a in arrs if a.refs == 2]
    assert len(shared) == 1 and len(arrs) == 3
    db.execute("say", [1, "t2"])  # row 4 of call 1 has the text of call 2's row 3
    # each `a` row joins every `b` row with its text, itself included
    assert sorted(s1.rows()) == [(2,), (4,), (4,)]
    assert sorted(s2.rows()) == [(3,), (3,)]
    mgr.unsubscribe(s1)
    assert shared[0].refs == 1 and len(mgr.registry.arrangements) == 2
    mgr.unsubscribe(s2)
    assert mgr.registry.arrangements == {}


def test_parameter_dispatch_runs_only_touched_circuits(monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_db()
    mgr = SubscriptionManager(db)
    subs = {
        i: mgr.subscribe("SELECT * FROM segment WHERE call_id = $1", [i])[0] for i in range(200)
    }
    broad, _ = mgr.subscribe("SELECT COUNT(*) FROM segment")
    calls: list[Circuit] = []
    real = Circuit.step

    def spy(self: Circuit, changes: Any) -> Any:
        calls.append(self)
        return real(self, changes)

    monkeypatch.setattr(Circuit, "step", spy)
    log = watch(mgr)
    db.execute("say", [17, "hello"])
    ran = {id(c) for c in calls}
    assert ran == {id(subs[17].instance.circuit), id(broad.instance.circuit)}
    assert set(log[0][1]) == {subs[17], broad}
    calls.clear()
    db.execute("say", [5000, "nobody listens"])
    assert {id(c) for c in calls} == {id(broad.instance.circuit)}


def test_json_values_survive_the_circuit() -> None:
    db = make_db()
    mgr = SubscriptionManager(db)
    sub, _ = mgr.subscribe("SELECT text, meta FROM segment WHERE call_id = 3")
    log = watch(mgr)
    db.execute("say_meta", [3, "hi", {"lang": "en", "n": [1, 2]}])
    assert log[0][1][sub] == Delta([("hi", {"lang": "en", "n": [1, 2]})], [])
    assert sub.rows() == [("hi", {"lang": "en", "n": [1, 2]})]


def test_subscriptions_refuse_as_of_and_writes() -> None:
    db = make_db()
    mgr = SubscriptionManager(db)
    with pytest.raises(SqlError, match="AS OF"):
        mgr.subscribe("SELECT * FROM segment FOR SYSTEM_TIME AS OF 1")
    with pytest.raises(SqlError, match="reducers"):
        mgr.subscribe("DELETE FROM segment")


def test_system_tables_are_invisible() -> None:
    db = make_db()
    mgr = SubscriptionManager(db)
    with pytest.raises(SqlError, match="no table"):
        mgr.subscribe("SELECT * FROM __schedule__")
