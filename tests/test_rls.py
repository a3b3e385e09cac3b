"""Row-level security attack suite (core level): nothing a policy hides may leak.

Attack cases on a fixed world (``rls_world``): every read path (scan, WHERE, inner/LEFT
joins, IN (subquery), aggregates, UNION, ORDER BY ... LIMIT/OFFSET, DISTINCT, AS OF by
offset and by timestamp, private tables, parameters named ``sender``), subscriptions (policy
joins moving rows out and back in, grants and revokes), and reducers called by a non-system
identity (every read method sees only visible rows; every refused write raises and rolls
the whole transaction back, even when the reducer catches the error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import test_sql_adhoc as gen
from rls_world import (
    CALLS,
    IDS,
    NAMES,
    NOTES,
    TEAMS,
    TRANSCRIPTS,
    WORLD_OPS,
    A,
    B,
    C,
    Client,
    D,
    Oracles,
    State,
    ask,
    check_all,
    dump,
    ids,
    mod,
    open_db,
    oracle,
    pk_of,
    same,
    sorted_rows,
    system,
    visible,
)

from core import SYSTEM_IDENTITY, Database
from core.errors import PolicyViolation, SqlError, StoreError
from core.sql.query import run_query
from core.subscriptions import Delta, SubscriptionManager
from core.transaction import ReducerContext

# =========================================================================== reads


def test_plain_scan_shows_only_visible_rows(world: Database, state: State) -> None:
    for x in IDS:
        for t in ("calls", "transcripts", "notes", "teams"):
            res = run_query(world, f"SELECT * FROM {t}", sender=x)
            got = {pk_of(t, dict(zip(res.columns, r))) for r in res.rows}
            assert got == set(visible(state, x)[t]), (NAMES[x], t)
    assert ids(world, "SELECT id FROM calls", A) == [1, 2, 4]
    assert ids(world, "SELECT id FROM calls", B) == [3, 4, 5, 6]
    assert ids(world, "SELECT id FROM calls", D) == []
    assert ids(world, "SELECT id FROM transcripts", A) == [1, 2, 4, 6, 8]
    assert ids(world, "SELECT id FROM notes", A) == [1, 3]
    assert ids(world, "SELECT id FROM calls", None) == [1, 2, 3, 4, 5, 6]
    assert len(ask(world, "SELECT * FROM teams", sender=D)) == len(TEAMS)


WHERE_PROBES = [
    "SELECT id FROM calls WHERE note = 'b-secret'",
    "SELECT id FROM calls WHERE note LIKE 'b%'",
    "SELECT id FROM calls WHERE id = 3",  # a primary-key point lookup
    "SELECT id FROM calls WHERE id IN (3, 5, 6)",
    "SELECT id FROM calls WHERE minutes > 30",  # a B-tree range
    "SELECT id FROM calls WHERE minutes BETWEEN 90 AND 100",
    "SELECT id FROM calls WHERE minutes IS NULL",
    f"SELECT id FROM calls WHERE owner = '{B}'",
    f"SELECT id FROM calls WHERE owner <> '{A}'",
    "SELECT id FROM calls WHERE team = 'red' OR minutes > 0 OR note = 'c-only'",
    "SELECT id FROM calls WHERE NOT (owner = owner)",
    "SELECT id FROM transcripts WHERE call_id = 3",  # a hash index lookup
    "SELECT id FROM transcripts WHERE call_id = 77 OR text LIKE '%secret%'",
    "SELECT id FROM notes WHERE call_id = 1",
    "SELECT id FROM notes WHERE shared = FALSE",
]


@pytest.mark.parametrize("sql", WHERE_PROBES)
def test_where_conditions_never_reach_hidden_rows(
    world: Database, oracles: Oracles, sql: str
) -> None:
    check_all(world, oracles, sql)


def test_where_on_hidden_rows_examples(world: Database) -> None:
    assert ids(world, "SELECT id FROM calls WHERE note = 'b-secret'", A) == []
    assert ids(world, "SELECT id FROM calls WHERE note = 'b-secret'", B) == [3]
    assert ids(world, "SELECT id FROM calls WHERE id = 3", A) == []
    assert ids(world, "SELECT id FROM calls WHERE minutes > 30", A) == []
    assert ids(world, "SELECT id FROM calls WHERE owner = $1", A, [B]) == [4]  # the grant
    assert ids(world, "SELECT id FROM transcripts WHERE call_id = 3", A) == []
    assert ids(world, "SELECT id FROM transcripts WHERE call_id = 77", A) == []
    assert ids(world, "SELECT id FROM notes WHERE call_id = 1", A) == []  # B's private one


def test_a_parameter_named_sender_does_not_impersonate(world: Database) -> None:
    q = "SELECT id FROM calls WHERE owner = :sender"
    assert ids(world, q, A, {"sender": B}) == [4]  # B's rows A may see: only the grant
    assert ids(world, q, D, {"sender": B}) == []
    assert ids(world, q, None, {"sender": B}) == [3, 4, 6]
    sub_q = (
        "SELECT id FROM transcripts WHERE call_id IN (SELECT id FROM calls WHERE owner = :sender)"
    )
    assert ids(world, sub_q, A, {"sender": B}) == [4]


def test_a_malformed_sender_sees_nothing(world: Database) -> None:
    probes = [
        "SELECT * FROM calls",
        "SELECT * FROM transcripts",
        "SELECT * FROM notes WHERE shared = FALSE",  # shared notes are for everyone
    ]
    for bad in ["' OR '1'='1", "", "x" * 64, A.upper(), A + " "]:
        for q in probes:
            try:
                rows = ask(world, q, sender=bad)
            except StoreError:  # refusing is fine too
                continue
            assert rows == [], (bad, q)


JOIN_PROBES = [
    "SELECT c.id, t.id FROM calls c JOIN transcripts t ON t.call_id = c.id",
    "SELECT c.id, t.id FROM calls c LEFT JOIN transcripts t ON t.call_id = c.id",
    "SELECT t.id, c.id, c.note FROM transcripts t LEFT JOIN calls c ON c.id = t.call_id",
    "SELECT c.id, n.id FROM calls c LEFT JOIN notes n ON n.call_id = c.id",
    "SELECT n.id, c.id, c.owner FROM notes n LEFT JOIN calls c ON c.id = n.call_id",
    "SELECT tm.name, c.id FROM teams tm LEFT JOIN calls c ON c.team = tm.name",
    "SELECT tm.name, c.id FROM teams tm LEFT JOIN calls c ON c.team = tm.name AND c.minutes > 30",
    "SELECT a.id, b.id FROM calls a JOIN calls b ON a.team = b.team",
    "SELECT c.id, n.id FROM calls c JOIN notes n ON n.author = c.owner",
    "SELECT c.id, t.id, n.id FROM calls c JOIN transcripts t ON t.call_id = c.id"
    " LEFT JOIN notes n ON n.call_id = c.id",
    "SELECT c.id, t.id FROM calls c, transcripts t WHERE t.call_id = c.id AND c.minutes > 1",
]


@pytest.mark.parametrize("sql", JOIN_PROBES)
def test_joins_see_only_visible_rows(world: Database, oracles: Oracles, sql: str) -> None:
    check_all(world, oracles, sql)


def test_left_join_does_not_reveal_a_hidden_match(world: Database) -> None:
    # call 1 (A's) has B's private note 2: for A it looks exactly like a call without notes
    q = "SELECT c.id, n.id FROM calls c LEFT JOIN notes n ON n.call_id = c.id WHERE c.id = 1"
    assert ask(world, q, sender=A) == [(1, None)]
    assert ask(world, q) == [(1, 2)]
    # A's note 1 is on B's call 3: the LEFT JOIN pads, as for a call that does not exist
    q = "SELECT n.id, c.id, c.note FROM notes n LEFT JOIN calls c ON c.id = n.call_id"
    assert sorted(ask(world, q, sender=A), key=str) == [(1, None, None), (3, 2, "a-two")]
    # team red has A's call 1 and B's call 3; team pink has none; yellow only B's
    q = (
        "SELECT tm.name, COUNT(c.id), MAX(c.minutes) FROM teams tm"
        " LEFT JOIN calls c ON c.team = tm.name GROUP BY tm.name"
    )
    got = {r[0]: r[1:] for r in ask(world, q, sender=A)}
    assert got["red"] == (1, 10) and got["yellow"] == (0, None) and got["pink"] == (0, None)


SUBQUERY_PROBES = [
    "SELECT name FROM teams WHERE name IN (SELECT team FROM calls)",
    "SELECT name FROM teams WHERE name IN (SELECT team FROM calls WHERE minutes > 30)",
    "SELECT id FROM transcripts WHERE call_id IN (SELECT id FROM calls)",
    "SELECT id FROM calls WHERE id IN (SELECT call_id FROM transcripts)",
    "SELECT id FROM calls WHERE id IN (SELECT call_id FROM notes)",
    "SELECT id FROM calls WHERE id IN (SELECT DISTINCT call_id FROM notes WHERE shared = FALSE)",
    "SELECT id FROM notes WHERE call_id IN (SELECT MAX(id) FROM calls GROUP BY team)",
    "SELECT id FROM calls WHERE id IN (SELECT call_id FROM transcripts)"
    " AND team IN (SELECT name FROM teams WHERE region = 'eu')",
    # a top-k and a HAVING inside the subquery: computed over visible rows only
    "SELECT id FROM calls WHERE id IN (SELECT id FROM calls ORDER BY minutes DESC LIMIT 1)",
    "SELECT name FROM teams WHERE name IN (SELECT team FROM calls GROUP BY team"
    " HAVING COUNT(*) > 1)",
]


@pytest.mark.parametrize("sql", SUBQUERY_PROBES)
def test_in_subquery_over_policed_tables(world: Database, oracles: Oracles, sql: str) -> None:
    check_all(world, oracles, sql)


def test_in_subquery_examples(world: Database) -> None:
    q = "SELECT name FROM teams WHERE name IN (SELECT team FROM calls)"
    assert ids(world, q, A) == ["blue", "green", "red"]  # not yellow (B's call 6)
    assert ids(world, q, D) == []
    q = "SELECT id FROM calls WHERE id IN (SELECT call_id FROM notes)"
    assert ids(world, q, A) == [2]  # note 2 on call 1 is B's private; note 1 is on hidden 3


AGGREGATES = [
    "SELECT COUNT(*) FROM calls",
    "SELECT COUNT(*), SUM(minutes), MIN(minutes), MAX(minutes), AVG(minutes) FROM calls",
    "SELECT COUNT(minutes), COUNT(DISTINCT owner), COUNT(DISTINCT team) FROM calls",
    "SELECT team, COUNT(*), SUM(minutes) FROM calls GROUP BY team",
    "SELECT owner, MAX(minutes) FROM calls GROUP BY owner",
    "SELECT team FROM calls GROUP BY team HAVING COUNT(*) > 1",
    "SELECT call_id, COUNT(*) FROM transcripts GROUP BY call_id",
    "SELECT COUNT(*) FROM transcripts WHERE call_id = 3",
    "SELECT shared, COUNT(*) FROM notes GROUP BY shared",
    "SELECT c.team, COUNT(t.id) FROM calls c LEFT JOIN transcripts t ON t.call_id = c.id"
    " GROUP BY c.team",
    "SELECT MIN(note), MAX(note) FROM calls",
]


@pytest.mark.parametrize("sql", AGGREGATES)
def test_aggregates_see_only_visible_rows(world: Database, oracles: Oracles, sql: str) -> None:
    check_all(world, oracles, sql)


def test_aggregate_examples(world: Database) -> None:
    q = "SELECT COUNT(*), SUM(minutes), MIN(minutes), MAX(minutes), AVG(minutes) FROM calls"
    assert ask(world, q, sender=A) == [(3, 35, 5, 20, 35 / 3)]
    assert ask(world, q, sender=D) == [(0, None, None, None, None)]
    assert ask(world, q) == [(6, 184, 5, 99, 184 / 5)]
    assert ask(world, "SELECT COUNT(*) FROM transcripts WHERE call_id = 3", sender=A) == [(0,)]
    assert (
        ask(world, "SELECT team, COUNT(*) FROM calls GROUP BY team HAVING COUNT(*) > 1", sender=A)
        == []
    )


SET_OPS = [
    "SELECT id FROM calls UNION SELECT call_id FROM transcripts",
    "SELECT id FROM calls UNION ALL SELECT call_id FROM transcripts",
    "SELECT owner FROM calls UNION SELECT author FROM notes",
    "SELECT team FROM calls UNION ALL SELECT name FROM teams UNION SELECT body FROM notes",
    "SELECT DISTINCT team FROM calls",
    "SELECT DISTINCT owner FROM calls",
    "SELECT DISTINCT call_id FROM transcripts",
    "SELECT DISTINCT author, shared FROM notes",
]


@pytest.mark.parametrize("sql", SET_OPS)
def test_union_and_distinct(world: Database, oracles: Oracles, sql: str) -> None:
    check_all(world, oracles, sql)


def test_union_and_distinct_examples(world: Database) -> None:
    q = "SELECT id FROM calls UNION SELECT call_id FROM transcripts"
    assert ids(world, q, A) == [1, 2, 4, 99]
    assert ids(world, "SELECT DISTINCT team FROM calls", A) == ["blue", "green", "red"]
    q = "SELECT id FROM calls UNION ALL SELECT call_id FROM transcripts"
    assert ids(world, q, A) == [1, 1, 1, 2, 2, 4, 4, 99]


TOPK = [
    "SELECT id, minutes FROM calls ORDER BY minutes DESC NULLS LAST LIMIT 1",
    "SELECT id, minutes FROM calls ORDER BY minutes DESC NULLS FIRST LIMIT 2",
    "SELECT id FROM calls ORDER BY minutes ASC LIMIT 2 OFFSET 1",
    "SELECT id FROM calls ORDER BY id OFFSET 1",
    "SELECT id FROM calls LIMIT 2",
    "SELECT note FROM calls ORDER BY note DESC LIMIT 3",
    "SELECT id, text FROM transcripts ORDER BY call_id DESC, id LIMIT 2",
    "SELECT team, MAX(minutes) AS m FROM calls GROUP BY team ORDER BY m DESC NULLS LAST LIMIT 1",
    "SELECT id FROM calls UNION SELECT call_id FROM transcripts ORDER BY 1 DESC LIMIT 2",
]


@pytest.mark.parametrize("sql", TOPK)
def test_order_by_limit_is_computed_over_visible_rows(
    world: Database, oracles: Oracles, sql: str
) -> None:
    check_all(world, oracles, sql, ordered=True)


def test_top_k_examples(world: Database) -> None:
    q = "SELECT id, minutes FROM calls ORDER BY minutes DESC NULLS LAST LIMIT 1"
    assert ask(world, q, sender=A) == [(2, 20)]  # not B's 99
    assert ask(world, q) == [(3, 99)]
    q = "SELECT id FROM calls ORDER BY minutes ASC LIMIT 2 OFFSET 1"
    assert ask(world, q, sender=A) == [(1,), (2,)]


def view_of(state: State, x: str | None) -> State:
    return state if x is None else visible(state, x)


def test_as_of_reads_apply_the_policies_of_that_point() -> None:
    db = open_db()
    try:
        system(db, WORLD_OPS)
        t0 = db.execute("apply", [[["ins", "calls", {**CALLS[0], "id": 50, "owner": B}]]])
        # A is granted B's call 50 at t1; at t2 B's call 3 and that grant are gone, and A is
        # granted B's call 6
        t1 = db.execute("apply", [[["ins", "grants", {"call_id": 50, "grantee": A}]]])
        ops = [
            ["del", "calls", [3]],
            ["del", "grants", [50, A]],
            ["ins", "grants", {"call_id": 6, "grantee": A}],
        ]
        t2 = db.execute("apply", [ops])
        shapes = [
            ("SELECT * FROM calls{} AS c", False),
            (
                "SELECT t.id FROM transcripts{} AS t WHERE t.call_id IN (SELECT id FROM calls)",
                False,
            ),
            ("SELECT COUNT(*), MAX(minutes) FROM calls{} AS c", False),
            ("SELECT id FROM calls{} AS c ORDER BY minutes DESC NULLS LAST LIMIT 1", True),
            ("SELECT c.id, n.id FROM calls{} AS c LEFT JOIN notes n ON n.call_id = c.id", False),
        ]
        for res in (t0, t1, t2):
            then = dump(db, res.offset)
            for x in (*IDS, None):
                o = oracle(view_of(then, x))
                try:
                    for shape, ordered in shapes:
                        want = ask(o, shape.format(""))
                        for point in (str(res.offset), f"TIMESTAMP '{gen.iso(res.timestamp)}'"):
                            q = shape.format(f" FOR SYSTEM_TIME AS OF {point}")
                            assert same(ask(db, q, sender=x), want, ordered), (NAMES[x], q)
                finally:
                    o.close()
        q = "SELECT id FROM calls FOR SYSTEM_TIME AS OF {}"
        assert ids(db, q.format(t0.offset), A) == [1, 2, 4]  # 3 existed: hidden
        assert ids(db, q.format(t1.offset), A) == [1, 2, 4, 50]  # granted then
        assert ids(db, q.format(t2.offset), A) == [1, 2, 4, 6]  # revoked: gone; 6 granted
        assert ids(db, q.format(t0.offset), C) == [5]
        assert ids(db, q.format(t0.offset), None) == [1, 2, 3, 4, 5, 6, 50]
        assert ids(db, "SELECT id FROM calls", A) == [1, 2, 4, 6]
        q = "SELECT COUNT(*), MAX(minutes) FROM calls FOR SYSTEM_TIME AS OF {}"
        assert ask(db, q.format(t0.offset), sender=A) == [(3, 20)]
        assert ask(db, q.format(t0.offset), sender=D) == [(0, None)]
    finally:
        db.close()


PRIVATE = [
    "SELECT * FROM {t}",
    "SELECT COUNT(*) FROM {t}",
    "SELECT c.id FROM calls c JOIN {t} g ON g.call_id = c.id",
    "SELECT id FROM calls WHERE id IN (SELECT call_id FROM {t})",
    "SELECT call_id FROM {t} UNION SELECT id FROM calls",
    "SELECT * FROM {t} FOR SYSTEM_TIME AS OF 1",
]


@pytest.mark.parametrize("shape", PRIVATE)
def test_a_private_table_does_not_exist_for_identities(world: Database, shape: str) -> None:
    for x in IDS:
        with pytest.raises(SqlError) as hidden:
            run_query(world, shape.format(t="grants"), sender=x)
        with pytest.raises(SqlError) as missing:
            run_query(world, shape.format(t="nosuchx"), sender=x)
        # indistinguishable from a table that does not exist
        assert str(hidden.value).replace("grants", "nosuchx") == str(missing.value)
        assert "no table named 'grants'" in str(hidden.value)
    run_query(world, shape.format(t="grants"))  # the system reads it
    mgr = SubscriptionManager(world)
    try:
        with pytest.raises(SqlError, match="no table named 'grants'"):
            mgr.subscribe("SELECT * FROM grants", None, sender=A)
        mgr.subscribe("SELECT * FROM grants")
    finally:
        mgr.close()


def test_two_read_policies_are_ored(world: Database) -> None:
    # notes: mine OR shared (both subquery-free); calls: own OR granted (one subquery)
    assert ids(world, "SELECT id FROM notes", A) == [1, 3]
    assert ids(world, "SELECT id FROM notes", B) == [2, 3]
    assert ids(world, "SELECT id FROM notes", D) == [3]
    assert ids(world, "SELECT id FROM calls", A) == [1, 2, 4]
    # a row admitted by both branches appears once
    system(world, [["ins", "grants", {"call_id": 1, "grantee": A}]])
    assert ids(world, "SELECT id FROM calls", A) == [1, 2, 4]
    assert ask(world, "SELECT COUNT(*) FROM calls", sender=A) == [(3,)]
    q = "SELECT id FROM transcripts WHERE call_id = 1"
    assert ids(world, q, A) == [1, 2]
    system(world, [["upd", "notes", {**NOTES[0], "shared": True}]])  # mine AND shared
    assert ask(world, "SELECT COUNT(*) FROM notes", sender=A) == [(2,)]
    assert ids(world, "SELECT id FROM notes", D) == [1, 3]


# =========================================================================== subscriptions


def test_policy_join_update_moves_rows_out_and_back_in(world: Database) -> None:
    mgr = SubscriptionManager(world)
    cl = Client(mgr)
    try:
        tr = cl.subscribe("SELECT id, call_id FROM transcripts WHERE call_id = $1", [1], A)
        calls = cl.subscribe("SELECT id, note FROM calls", None, A)
        agg = cl.subscribe("SELECT COUNT(*) FROM transcripts", None, A)
        assert cl.rows(tr) == [(1, 1), (2, 1)]
        assert cl.rows(agg) == [(5,)]
        # call 1 changes owner: its transcripts leave A's view (the policy's join)
        off = system(world, [["upd", "calls", {**CALLS[0], "owner": B}]])
        assert cl.deliveries[-1] == off
        assert sorted(cl.last[tr].deletes) == [(1, 1), (2, 1)] and cl.last[tr].inserts == []
        assert cl.last[calls].deletes == [(1, "a-one")]
        assert cl.rows(tr) == [] and cl.rows(agg) == [(3,)]
        # and back: inserts
        system(world, [["upd", "calls", CALLS[0]]])
        assert sorted(cl.last[tr].inserts) == [(1, 1), (2, 1)] and cl.last[tr].deletes == []
        assert cl.rows(tr) == [(1, 1), (2, 1)] and cl.rows(agg) == [(5,)]
        # a transcript moved to a hidden call is a delete; moved back an insert
        system(world, [["upd", "transcripts", {**TRANSCRIPTS[1], "call_id": 3}]])
        assert cl.last[tr].deletes == [(2, 1)]
        system(world, [["upd", "transcripts", TRANSCRIPTS[1]]])
        assert cl.last[tr].inserts == [(2, 1)]
        # B's commits on B's own hidden rows deliver nothing to A
        before = len(cl.deliveries)
        system(world, [["upd", "calls", {**CALLS[2], "note": "still secret", "minutes": 1000}]])
        system(world, [["ins", "transcripts", {**TRANSCRIPTS[2], "id": 30}]])
        assert len(cl.deliveries) == before
        for sub, (q, p) in {
            tr: ("SELECT id, call_id FROM transcripts WHERE call_id = $1", [1]),
            calls: ("SELECT id, note FROM calls", None),
        }.items():
            assert cl.rows(sub) == sorted_rows(ask(world, q, p, A))
    finally:
        mgr.close()


def test_grants_and_revokes_are_deltas(world: Database) -> None:
    mgr = SubscriptionManager(world)
    cl = Client(mgr)
    try:
        calls = cl.subscribe("SELECT id, note FROM calls", None, A)
        tr = cl.subscribe("SELECT id FROM transcripts WHERE call_id = $1", [3], A)
        top = cl.subscribe("SELECT id, minutes FROM calls ORDER BY minutes DESC LIMIT 1", None, A)
        stats = cl.subscribe("SELECT COUNT(*), MAX(minutes) FROM calls", None, A)
        other = cl.subscribe("SELECT id FROM calls", None, C)
        assert cl.rows(top) == [(2, 20)] and cl.rows(tr) == []
        off = system(world, [["ins", "grants", {"call_id": 3, "grantee": A}]])
        assert cl.deliveries[-1] == off
        assert cl.last[calls] == Delta([(3, "b-secret")], [])
        assert cl.last[tr] == Delta([(3,)], [])
        assert cl.last[top] == Delta([(3, 99)], [(2, 20)])
        assert cl.rows(stats) == [(4, 99)]
        assert other not in cl.last  # C's view did not change
        # a grant of a row A already owns changes nothing
        before = len(cl.deliveries)
        system(world, [["ins", "grants", {"call_id": 1, "grantee": A}]])
        assert len(cl.deliveries) == before
        system(world, [["del", "grants", [3, A]]])
        assert cl.last[calls] == Delta([], [(3, "b-secret")])
        assert cl.last[tr] == Delta([], [(3,)])
        assert cl.last[top] == Delta([(2, 20)], [(3, 99)])
        assert cl.rows(stats) == [(3, 20)]
        # a grant to somebody else reaches only them
        system(world, [["ins", "grants", {"call_id": 3, "grantee": C}]])
        assert set(cl.last) == {other} and cl.last[other] == Delta([(3,)], [])
        # revoking an owned row's redundant grant changes nothing either
        before = len(cl.deliveries)
        system(world, [["del", "grants", [1, A]]])
        assert len(cl.deliveries) == before
    finally:
        mgr.close()


def test_subscription_top_k_ignores_hidden_rows(world: Database) -> None:
    mgr = SubscriptionManager(world)
    cl = Client(mgr)
    try:
        q = "SELECT id, minutes FROM calls ORDER BY minutes DESC NULLS LAST LIMIT 2"
        top = cl.subscribe(q, None, A)
        assert cl.rows(top) == [(1, 10), (2, 20)]
        before = len(cl.deliveries)
        system(world, [["ins", "calls", {**CALLS[2], "id": 40, "minutes": 500}]])  # B's
        system(world, [["upd", "calls", {**CALLS[4], "minutes": 400}]])  # C's
        assert len(cl.deliveries) == before
        system(world, [["ins", "calls", {**CALLS[0], "id": 41, "minutes": 15}]])  # A's
        assert cl.last[top] == Delta([(41, 15)], [(1, 10)])
        assert cl.rows(top) == sorted_rows(ask(world, q, sender=A))
    finally:
        mgr.close()


# =========================================================================== reducers


def expected_probe(system_view: dict[str, Any], state: State, x: str) -> dict[str, Any]:
    """What ``probe`` must return for ``x``: the system's answer minus invisible rows."""
    vis = visible(state, x)
    seen = {t: {k[0] for k in vis[t]} for t in ("calls", "transcripts", "notes")}
    out: dict[str, Any] = {}
    for key, v in system_view.items():
        table = key.split(".")[0]
        if key.endswith(".count"):
            out[key] = len(seen[table])
        elif ".find_one." in key:
            lst = [i for i in system_view[key.replace("find_one", "find")] if i in seen[table]]
            out[key] = lst[0] if lst else None
        else:
            out[key] = [i for i in v if i in seen[table]]
    return out


def test_reducer_reads_see_only_visible_rows(world: Database, state: State) -> None:
    full = world.execute("probe").value
    assert full["calls.iter"] == [1, 2, 3, 4, 5, 6] and full["calls.count"] == 6
    for x in IDS:
        got = world.execute("probe", None, x).value
        assert got == expected_probe(full, state, x), NAMES[x]
    got = world.execute("probe", None, A).value
    assert got["calls.get"] == [1, 2, 4] and got["calls.find.B"] == [4]
    assert got["calls.find_one.B"] == 4 and got["calls.find_one.C"] is None
    assert sorted(got["transcripts.find"]) == [1, 2, 4, 6, 8] and got["notes.count"] == 2


def test_system_and_bypass_see_everything(world: Database) -> None:
    full = world.execute("probe").value
    assert world.execute("probe", None, SYSTEM_IDENTITY).value == full
    for x in IDS:
        assert world.execute("probe", None, x, bypass_rls=True).value == full
    for t in ("calls", "transcripts", "notes", "grants", "teams"):
        assert len(ask(world, f"SELECT * FROM {t}")) == len(dump(world)[t])


_A_OWN_NEW = {"id": 100, "owner": A, "team": "red", "note": "legit", "minutes": 1}
_B_CALL = CALLS[2]  # invisible to A
_GRANTED = CALLS[3]  # visible to A through a grant, not writable

ATTEMPTS: dict[str, Callable[[Any], Any]] = {
    "update_invisible_call": lambda db: db.calls.update({**_B_CALL, "note": "pwned"}),
    "update_granted_call": lambda db: db.calls.update(db.calls.get(4), note="pwned"),
    "give_own_call_away": lambda db: db.calls.update(db.calls.get(1), owner=B),
    "delete_granted_call": lambda db: db.calls.delete(4),
    "insert_call_for_b": lambda db: db.calls.insert({**_A_OWN_NEW, "id": 101, "owner": B}),
    "insert_transcript_into_hidden_call": lambda db: db.transcripts.insert(
        id=101, call_id=3, speaker="agent", text="injected"
    ),
    "insert_transcript_into_unknown_call": lambda db: db.transcripts.insert(
        id=101, call_id=555, speaker="agent", text="injected"
    ),
    "update_hidden_transcript": lambda db: db.transcripts.update({**TRANSCRIPTS[2], "text": "x"}),
    "move_transcript_to_hidden_call": lambda db: db.transcripts.update(
        db.transcripts.get(1), call_id=3
    ),
    "update_shared_note_of_b": lambda db: db.notes.update(db.notes.get(3), body="pwned"),
    "delete_shared_note_of_b": lambda db: db.notes.delete(3),
    "delete_shared_note_of_b_by_row": lambda db: db.notes.delete_row(db.notes.get(3)),
    "give_own_note_away": lambda db: db.notes.update(db.notes.get(1), author=C),
    "insert_note_for_c": lambda db: db.notes.insert(
        id=101, author=C, shared=True, call_id=1, body="forged"
    ),
    "update_invisible_note": lambda db: db.notes.update({**NOTES[3], "body": "pwned"}),
}


@mod.reducer
def tamper(ctx: ReducerContext, attempt: str, catch: bool) -> str:
    """Legitimate writes first, then one that the policies refuse."""
    ctx.db.calls.insert(_A_OWN_NEW)
    ctx.db.transcripts.insert(id=100, call_id=100, speaker="agent", text="legit")
    ctx.db.calls.update(ctx.db.calls.get(1), note="edited")
    ctx.db.transcripts.delete(2)
    ctx.db.teams.insert(name="legit", region="eu")
    ctx.db.grants.insert(call_id=2, grantee=C)  # reducer code may use private tables
    try:
        ATTEMPTS[attempt](ctx.db)
    except PolicyViolation:
        if not catch:
            raise
        return "caught"
    return "not refused"


@pytest.mark.parametrize("catch", [False, True], ids=["raise", "caught"])
@pytest.mark.parametrize("attempt", sorted(ATTEMPTS))
def test_refused_writes_roll_back_the_whole_transaction(
    world: Database, attempt: str, catch: bool
) -> None:
    before, offset = dump(world), world.offset
    mgr = SubscriptionManager(world)
    cl = Client(mgr)
    try:
        cl.subscribe("SELECT * FROM calls", None, None)
        cl.subscribe("SELECT * FROM notes", None, A)
        with pytest.raises(PolicyViolation, match=r"row-level security|no visible row"):
            world.execute("tamper", {"attempt": attempt, "catch": catch}, A)
        assert world.offset == offset
        assert dump(world) == before
        assert cl.deliveries == []
        # the same reducer by the owner of every row involved... bypass: it commits
        res = world.execute("tamper", {"attempt": attempt, "catch": catch}, A, bypass_rls=True)
        assert res.value == "not refused" and dump(world)["calls"][(100,)] == _A_OWN_NEW
    finally:
        mgr.close()


def test_legitimate_writes_of_an_identity_commit(world: Database) -> None:
    res = world.execute(
        "user_apply",
        [
            [
                ["ins", "calls", _A_OWN_NEW],
                ["ins", "transcripts", {"id": 100, "call_id": 100, "speaker": "a", "text": "t"}],
                ["ins", "transcripts", {"id": 101, "call_id": 4, "speaker": "a", "text": "t"}],
                ["upd", "calls", {**CALLS[0], "note": "edited"}],
                ["del", "transcripts", [8]],
                [
                    "ins",
                    "notes",
                    {"id": 100, "author": A, "shared": True, "call_id": 3, "body": ""},
                ],
            ]
        ],
        A,
    )
    assert res.value == [True]
    st_ = dump(world)
    assert st_["calls"][(1,)]["note"] == "edited" and (100,) in st_["transcripts"]
    assert (101,) in st_["transcripts"]  # call 4 is granted: transcripts may be written
    assert (8,) not in st_["transcripts"]


def test_deleting_an_invisible_row_is_a_no_op(world: Database) -> None:
    before = dump(world)
    res = world.execute(
        "user_apply",
        [[["del", "calls", [3]], ["del", "transcripts", [7]], ["del", "notes", [2]]]],
        A,
    )
    assert res.value == [False, False, False]
    assert dump(world) == before


@mod.reducer
def retarget(ctx: ReducerContext) -> None:
    """Update A's own call 1 given as a mapping, with the primary key changed to B's 3."""
    ctx.db.calls.update({**CALLS[0]}, id=3, note="hijacked by A")


def test_update_cannot_retarget_the_primary_key_to_a_hidden_row(world: Database) -> None:
    """Regression: ``update({own row}, id=<hidden key>)`` once overwrote B's hidden call 3.

    The secured handle checked the old row at the key of the mapping *before* ``**changes``
    were applied, while ``TableHandle.update`` writes the row at the key *after* them
    (fixed in core/rls.py: the check now uses the resulting key).
    """
    before = dump(world)
    with pytest.raises(PolicyViolation):
        world.execute("retarget", None, A)
    assert dump(world) == before, "B's hidden call 3 was overwritten by A"
    world.execute("retarget", None, A, bypass_rls=True)  # the same write, unrestricted
    assert dump(world)["calls"][(3,)]["note"] == "hijacked by A"


# =========================================================================== core bugs found here

# A join subscribed over existing rows through a shared arrangement once got a wrong first
# result: ``Join.init`` stepped its sides through ``Side.prepare``, which for a shared
# arrangement returns the *commit's* cached delta (a self-join counted rows 3 times; a join
# subscribed after another circuit read the arrangement in the last commit started empty).


def _join_world() -> Database:
    db = open_db()
    system(db, [["ins", "notes", {**n, "author": A, "body": str(n["id"])}] for n in NOTES[:2]])
    system(db, [["ins", "calls", {**c, "owner": A, "note": str(c["id"])}] for c in CALLS[:2]])
    return db


@pytest.mark.parametrize("sender", [None, A], ids=["system", "A"])
def test_a_self_join_subscribed_over_existing_rows(sender: str | None) -> None:
    db = _join_world()
    try:
        q = "SELECT a.id, b.id FROM notes AS a JOIN notes AS b ON b.body = a.body"
        _, rows = SubscriptionManager(db).subscribe(q, None, sender=sender)
        assert sorted(rows) == sorted(ask(db, q, sender=sender)) == [(1, 1), (2, 2)]
    finally:
        db.close()


@pytest.mark.parametrize("sender", [None, A], ids=["system", "A"])
def test_a_join_subscribed_after_a_commit_stepped_a_shared_arrangement(
    sender: str | None,
) -> None:
    db = _join_world()
    try:
        mgr = SubscriptionManager(db)
        x = "SELECT a.id, b.id FROM notes AS a JOIN calls AS b ON b.note = a.body"
        y = x + " WHERE b.minutes > 0"  # a different circuit, the same arrangement of notes
        _, rows = mgr.subscribe(x, None, sender=sender)
        assert sorted(rows) == [(1, 1), (2, 2)]
        system(db, [["ins", "notes", {**NOTES[2], "author": A, "body": "nothing"}]])
        _, rows = mgr.subscribe(y, None, sender=sender)
        assert sorted(rows) == sorted(ask(db, y, sender=sender)) == [(1, 1), (2, 2)]
    finally:
        db.close()
