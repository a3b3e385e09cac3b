"""Row-level security, differential properties (hypothesis) over the ``rls_world``.

For random data, random queries (the generator of ``test_sql_adhoc`` over the non-identity
columns, plus a focused list over identities and policy joins) run as each identity must
equal the same query run by the system over a second database holding only the rows that
identity may see (visibility computed in plain Python from the policy definitions), also
``AS OF`` earlier commits; subscriptions of every identity, folded from their deltas, must
equal a fresh query after every commit of a random sequence (system writes, grants,
revokes, and writes by the identities themselves, whose allowed/refused outcome is
predicted by a Python model of the write policies).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import test_sql_adhoc as gen
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from rls_world import (
    IDS,
    NAMES,
    OWNERS,
    A,
    B,
    C,
    Client,
    D,
    Row,
    State,
    ask,
    dump,
    may_read,
    may_write,
    open_db,
    oracle,
    pk_of,
    same,
    sorted_rows,
    system,
    visible,
)

from core import Database
from core.errors import ConstraintViolation, PolicyViolation, SqlError
from core.sql.query import run_query
from core.subscriptions import Subscription, SubscriptionManager

# =========================================================================== differential

VIEW = [  # what the query generator of test_sql_adhoc may use: every non-identity column
    gen.Table(
        "calls",
        (
            gen.Col("id", "int", False),
            gen.Col("team", "text", False),
            gen.Col("note", "text", False),
            gen.Col("minutes", "int", True),
        ),
        ("id",),
        (("by_minutes", ("minutes",), "btree"),),
    ),
    gen.Table(
        "transcripts",
        (
            gen.Col("id", "int", False),
            gen.Col("call_id", "int", False),
            gen.Col("speaker", "text", False),
            gen.Col("text", "text", False),
        ),
        ("id",),
        (("by_call", ("call_id",), "hash"),),
    ),
    gen.Table(
        "notes",
        (
            gen.Col("id", "int", False),
            gen.Col("shared", "bool", False),
            gen.Col("call_id", "int", False),
            gen.Col("body", "text", False),
        ),
        ("id",),
        (("by_call", ("call_id",), "hash"),),
    ),
    gen.Table(
        "teams", (gen.Col("name", "text", False), gen.Col("region", "text", False)), ("name",), ()
    ),
]

# Queries the generator cannot write: identity columns, identity parameters, policy-shaped
# joins. "{asof}" marks where an AS OF clause goes; $1 is an identity.
FOCUSED = [
    "SELECT id FROM calls{asof} WHERE owner = $1",
    "SELECT id, note FROM calls{asof} WHERE owner <> $1 AND minutes IS NOT NULL",
    "SELECT owner, COUNT(*), SUM(minutes), MAX(note) FROM calls{asof} GROUP BY owner",
    "SELECT DISTINCT owner FROM calls{asof}",
    "SELECT COUNT(DISTINCT owner), COUNT(*) FROM calls{asof}",
    "SELECT author FROM notes{asof} UNION SELECT owner FROM calls",
    "SELECT author FROM notes{asof} UNION ALL SELECT owner FROM calls WHERE owner = $1",
    "SELECT t.id, c.owner FROM transcripts{asof} AS t JOIN calls c ON c.id = t.call_id"
    " WHERE c.owner = $1",
    "SELECT t.id, c.owner, c.note FROM transcripts{asof} AS t LEFT JOIN calls c"
    " ON c.id = t.call_id",
    "SELECT c.id, n.id, n.author FROM calls{asof} AS c LEFT JOIN notes n ON n.call_id = c.id",
    "SELECT c.id, n.id FROM calls{asof} AS c JOIN notes n ON n.author = c.owner",
    "SELECT n.id, c.id FROM notes{asof} AS n LEFT JOIN calls c ON c.id = n.call_id"
    " AND c.owner = n.author",
    "SELECT * FROM calls{asof} WHERE id IN (SELECT call_id FROM notes WHERE author = $1)",
    "SELECT * FROM notes{asof} WHERE call_id IN (SELECT id FROM calls WHERE owner = $1)",
    "SELECT * FROM transcripts{asof} WHERE call_id IN (SELECT id FROM calls)",
    "SELECT owner, MAX(minutes) FROM calls{asof} GROUP BY owner HAVING COUNT(*) > 1",
    "SELECT id, owner FROM calls{asof} ORDER BY minutes DESC NULLS LAST, id LIMIT 1",
    "SELECT id FROM calls{asof} ORDER BY minutes DESC NULLS LAST, id LIMIT 2 OFFSET 1",
    "SELECT c.team, COUNT(t.id), COUNT(*) FROM calls{asof} AS c LEFT JOIN transcripts t"
    " ON t.call_id = c.id GROUP BY c.team",
    "SELECT tm.name, COUNT(c.id), MIN(c.owner) FROM teams{asof} AS tm LEFT JOIN calls c"
    " ON c.team = tm.name GROUP BY tm.name",
    "SELECT name FROM teams{asof} WHERE name IN (SELECT team FROM calls WHERE owner = $1)",
    "SELECT owner FROM calls{asof} WHERE owner LIKE 'b%' OR note LIKE '%a%'",
    "SELECT c.id, t.id, n.id FROM calls{asof} AS c JOIN transcripts t ON t.call_id = c.id"
    " JOIN notes n ON n.call_id = c.id",
    "SELECT c.owner, COUNT(*) FROM calls{asof} AS c JOIN transcripts t ON t.call_id = c.id"
    " GROUP BY c.owner ORDER BY 2 DESC, 1 LIMIT 2",
    "SELECT COUNT(*), MIN(call_id), MAX(call_id), AVG(call_id) FROM transcripts{asof}",
    "SELECT id FROM transcripts{asof} WHERE call_id = {cid}",
    "SELECT * FROM calls{asof} WHERE id = {cid} OR owner = $1",
]


@dataclass
class Q:
    """A query in both renderings: with an AS OF point (or not) and without."""

    make: Callable[[int | None], tuple[str, Any]]
    ordered: bool


def gen_query(q: gen.Sql) -> Q:
    def make(as_of: int | None) -> tuple[str, Any]:
        vh, params, _, _ = gen.render(q, as_of)
        return vh, params

    return Q(make, q.ordered)


def focused_query(text: str, ident: str, call_id: int) -> Q:
    params = [ident] if "$1" in text else None

    def make(as_of: int | None) -> tuple[str, Any]:
        tail = "" if as_of is None else f" FOR SYSTEM_TIME AS OF {as_of}"
        return text.format(asof=tail, cid=call_id), params

    return Q(make, "ORDER BY" in text)


def pools_of(state: State) -> dict[str, Any]:
    pool: dict[str, set[Any]] = {k: set() for k in gen.KINDS}
    rows: dict[str, list[tuple]] = {}
    for t in VIEW:
        rows[t.name] = sorted(
            (tuple(r[c.name] for c in t.cols) for r in state[t.name].values()), key=repr
        )
        for r in rows[t.name]:
            for c, v in zip(t.cols, r):
                if v is not None:
                    pool[c.kind].add(v)
    out: dict[str, Any] = {k: sorted(v) for k, v in pool.items()}
    out["__rows__"] = rows
    return out


@st.composite
def queries(draw: Any, state: State) -> Q:
    if draw(st.integers(0, 9)) < 3:
        text = draw(st.sampled_from(FOCUSED))
        return focused_query(text, draw(st.sampled_from(IDS)), draw(st.integers(0, 14)))
    return gen_query(draw(gen.queries(VIEW, pools_of(state))))


TEXT = gen.VALUES["text"]
TEAM_NAMES = ["red", "blue", "green", "", "a"]
ALL_TEAMS = [*TEAM_NAMES, "pink"]


def call_row(draw: Any, cid: int) -> Row:
    return {
        "id": cid,
        "owner": draw(st.sampled_from(OWNERS)),
        "team": draw(st.sampled_from(TEAM_NAMES)),
        "note": draw(TEXT),
        "minutes": draw(st.none() | st.integers(-2, 8)),
    }


def transcript_row(draw: Any, tid: int) -> Row:
    return {
        "id": tid,
        "call_id": draw(st.integers(0, 14)),
        "speaker": draw(st.sampled_from(["agent", "caller"])),
        "text": draw(TEXT),
    }


def note_row(draw: Any, nid: int) -> Row:
    return {
        "id": nid,
        "author": draw(st.sampled_from(OWNERS)),
        "shared": draw(st.booleans()),
        "call_id": draw(st.integers(0, 14)),
        "body": draw(TEXT),
    }


@st.composite
def initial_ops(draw: Any) -> list[list]:
    ops: list[list] = []
    for cid in draw(st.lists(st.integers(1, 12), min_size=3, max_size=10, unique=True)):
        ops.append(["ins", "calls", call_row(draw, cid)])
    for tid in draw(st.lists(st.integers(1, 20), min_size=3, max_size=12, unique=True)):
        ops.append(["ins", "transcripts", transcript_row(draw, tid)])
    for cid, g in draw(
        st.lists(
            st.tuples(st.integers(0, 14), st.sampled_from(IDS)), min_size=2, max_size=8, unique=True
        )
    ):
        ops.append(["ins", "grants", {"call_id": cid, "grantee": g}])
    for nid in draw(st.lists(st.integers(1, 8), min_size=2, max_size=6, unique=True)):
        ops.append(["ins", "notes", note_row(draw, nid)])
    for name in draw(st.lists(st.sampled_from(ALL_TEAMS), min_size=2, max_size=4, unique=True)):
        ops.append(["ins", "teams", {"name": name, "region": draw(st.sampled_from(["eu", "us"]))}])
    return ops


def apply_op(state: State, op: list) -> None:
    kind, table, arg = op
    if kind == "del":
        state[table].pop(tuple(arg), None)
    else:
        state[table][pk_of(table, arg)] = dict(arg)


def copy_state(state: State) -> State:
    return {t: dict(rows) for t, rows in state.items()}


ROW_MAKERS: dict[str, Callable[[Any, int], Row]] = {
    "calls": call_row,
    "transcripts": transcript_row,
    "notes": note_row,
}


def draw_op(draw: Any, state: State, tables: list[str]) -> list:
    """One insert (fresh key), update (some columns redrawn) or delete of an existing row."""
    table = draw(st.sampled_from(tables))
    rows = state[table]
    kind = draw(st.sampled_from(["ins", "upd", "upd", "del"])) if rows else "ins"
    if table == "grants":
        if kind == "ins":
            free = [(c, g) for c in range(15) for g in IDS if (c, g) not in rows]
            c, g = draw(st.sampled_from(free))
            return ["ins", "grants", {"call_id": c, "grantee": g}]
        return ["del", "grants", list(draw(st.sampled_from(sorted(rows))))]
    if table == "teams":
        if kind == "ins":
            free_names = [n for n in ALL_TEAMS if (n,) not in rows]
            if not free_names:
                kind = "upd"
            else:
                region = draw(st.sampled_from(["eu", "us"]))
                return [
                    "ins",
                    "teams",
                    {"name": draw(st.sampled_from(free_names)), "region": region},
                ]
        key = draw(st.sampled_from(sorted(rows)))
        if kind == "del":
            return ["del", "teams", list(key)]
        return ["upd", "teams", {"name": key[0], "region": draw(st.sampled_from(["eu", "us"]))}]
    if kind == "ins":
        free_ids = sorted(set(range(1, 25)) - {k[0] for k in rows})
        return ["ins", table, ROW_MAKERS[table](draw, draw(st.sampled_from(free_ids)))]
    key = draw(st.sampled_from(sorted(rows)))
    if kind == "del":
        return ["del", table, list(key)]
    fresh = ROW_MAKERS[table](draw, key[0])
    new = dict(rows[key])
    for c in fresh:
        if c != "id" and draw(st.booleans()):
            new[c] = fresh[c]
    return ["upd", table, new]


Outcome = tuple[str, State | None, list[bool]]  # ("ok" | "denied" | "conflict", ...)


def user_outcome(state: State, ops: list[list], x: str) -> Outcome:
    """The write policies in Python: what ``x``'s ops do (the state after them if "ok").

    Mirrors the documented order of checks: an insert first meets the primary key (a
    conflict even with an invisible row), then the write policy on the new row; an update
    needs a visible old row passing the write policy, and a new row passing it; a delete
    of an invisible row is a no-op, of a visible one needs the write policy.
    """
    s = copy_state(state)
    deleted: list[bool] = []
    for op in ops:
        kind, table, arg = op
        if kind == "ins":
            if pk_of(table, arg) in s[table]:
                return "conflict", None, []
            apply_op(s, op)
            if not may_write(s, table, arg, x):
                return "denied", None, []
        elif kind == "upd":
            old = s[table].get(pk_of(table, arg))
            if old is None or not may_read(s, table, old, x) or not may_write(s, table, old, x):
                return "denied", None, []
            apply_op(s, op)
            if not may_write(s, table, arg, x):
                return "denied", None, []
        else:
            old = s[table].get(tuple(arg))
            if old is None or not may_read(s, table, old, x):
                deleted.append(False)
                continue
            if not may_write(s, table, old, x):
                return "denied", None, []
            deleted.append(True)
            apply_op(s, op)
    return "ok", s, deleted


def _run_both(db: Database, oracle_db: Database, q: Q, as_of: int | None, x: str) -> None:
    vh_sql, vh_params = q.make(as_of)
    plain_sql, plain_params = q.make(None)
    note(f"{NAMES[x]}: {vh_sql}  params={vh_params!r}")
    try:
        want = ask(oracle_db, plain_sql, plain_params)
    except SqlError as e:  # the schema decides validity: the restricted run must agree
        with pytest.raises(SqlError) as got_err:
            run_query(db, vh_sql, vh_params, sender=x)
        assert str(got_err.value) == str(e)
        event("query rejected (by both)")
        return
    got = ask(db, vh_sql, vh_params, x)
    event("restricted result: " + ("rows" if got else "empty"))
    assert same(got, want, q.ordered), (
        f"{NAMES[x]} sees other rows than it may (as_of={as_of}, ordered={q.ordered})\n"
        f"{vh_sql}\nparams={vh_params!r}\n got  {got}\n want {want}"
    )


def run_query_differential(data: Any) -> None:
    db = open_db()
    cache: dict[tuple[int, str], Database] = {}
    try:
        offsets = [system(db, data.draw(initial_ops(), label="initial"))]
        states = [dump(db)]
        for _ in range(data.draw(st.integers(0, 3), label="commits")):
            s = copy_state(states[-1])
            ops = []
            for _ in range(data.draw(st.integers(1, 3))):
                ops.append(
                    draw_op(data.draw, s, ["calls", "calls", "transcripts", "grants", "notes"])
                )
                apply_op(s, ops[-1])
            offsets.append(system(db, ops))
            states.append(dump(db))
            assert states[-1] == s
        note(f"states: {states}")
        last = len(states) - 1
        for _ in range(data.draw(st.integers(1, 4), label="queries")):
            q = data.draw(queries(states[last]), label="query")
            at = data.draw(st.integers(0, last)) if data.draw(st.booleans()) else last
            as_of = offsets[at] if at != last or data.draw(st.booleans()) else None
            for x in IDS:
                if (at, x) not in cache:
                    cache[(at, x)] = oracle(visible(states[at], x))
                _run_both(db, cache[(at, x)], q, as_of, x)
    finally:
        for o in cache.values():
            o.close()
        db.close()


def run_subscription_differential(data: Any) -> None:
    """Subscriptions over existing rows, then random commits (system and identities).

    All subscriptions share one manager (and so its shared arrangements), as on a server:
    later subscriptions join arrangements that earlier circuits already stepped.
    """
    db = open_db()
    clients: list[tuple[Client, Subscription, str, Any, str]] = []
    mgr = SubscriptionManager(db)
    try:
        system(db, data.draw(initial_ops(), label="initial"))
        state = dump(db)
        for _ in range(data.draw(st.integers(1, 2), label="queries")):
            q = data.draw(queries(state), label="query")
            sql, params = q.make(None)
            note(f"subscribe: {sql}  params={params!r}")
            for x in IDS:
                cl = Client(mgr)
                sub = cl.subscribe(sql, params, x)
                clients.append((cl, sub, sql, params, x))

        def deliveries() -> list[int]:
            return [len(cl.deliveries) for cl, *_ in clients]

        def check(when: str) -> None:
            oracles = {x: oracle(visible(state, x)) for x in IDS}
            try:
                for cl, sub, sql, params, x in clients:
                    got = cl.rows(sub)
                    fresh = sorted_rows(ask(db, sql, params, x))
                    assert gen.same_rows(got, fresh, False), (
                        f"{when}: {NAMES[x]}'s subscription drifted\n{sql}\n"
                        f" folded {got}\n fresh  {fresh}"
                    )
                    want = sorted_rows(ask(oracles[x], sql, params))
                    assert gen.same_rows(got, want, False), (
                        f"{when}: {NAMES[x]} holds rows it may not see\n{sql}\n"
                        f" folded {got}\n oracle {want}"
                    )
            finally:
                for o in oracles.values():
                    o.close()

        check("initially")
        for i in range(data.draw(st.integers(1, 8), label="commits")):
            who = data.draw(st.sampled_from([None, None, *OWNERS, D]), label="writer")
            tables = ["calls", "calls", "transcripts", "notes", "teams"]
            if who is None:
                tables += ["grants", "grants"]
            s = copy_state(state)
            ops = []
            for _ in range(data.draw(st.integers(1, 3))):
                op = draw_op(data.draw, s, tables)
                ops.append(op)
                apply_op(s, op)
            note(f"commit {i} by {NAMES[who]}: {ops}")
            before = deliveries()
            if who is None:
                system(db, ops)
                expected: State | None = s
            else:
                status, expected, deleted = user_outcome(state, ops, who)
                note(f"expected: {status}")
                event(f"write by an identity: {status}")
                if status == "ok":
                    assert db.execute("user_apply", [ops], who).value == deleted
                else:
                    err = PolicyViolation if status == "denied" else ConstraintViolation
                    with pytest.raises(err):
                        db.execute("user_apply", [ops], who)
                    assert deliveries() == before, "a refused commit delivered deltas"
                    expected = state
            state = dump(db)
            if expected is not None:
                assert state == expected, f"commit {i} by {NAMES[who]}: unexpected outcome"
            assert all(n - b <= 1 for n, b in zip(deliveries(), before))
            check(f"after commit {i}")
    finally:
        mgr.close()
        db.close()


SETTINGS: dict[str, Any] = dict(gen.DIFF_SETTINGS)


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_queries_match_the_visible_rows_oracle(data: Any) -> None:
    run_query_differential(data)


@settings(max_examples=60, **SETTINGS)
@given(st.data())
def test_subscriptions_match_fresh_queries_and_the_oracle(data: Any) -> None:
    run_subscription_differential(data)


@pytest.mark.slow
@settings(max_examples=3000, **SETTINGS)
@given(st.data())
def test_queries_match_the_visible_rows_oracle_many(data: Any) -> None:
    run_query_differential(data)


@pytest.mark.slow
@settings(max_examples=1500, **SETTINGS)
@given(st.data())
def test_subscriptions_match_fresh_queries_and_the_oracle_many(data: Any) -> None:
    run_subscription_differential(data)


def test_oracle_model_agrees_with_the_fixed_world(state: State) -> None:
    """Sanity of the Python model the differential tests rely on."""
    assert sorted(k[0] for k in visible(state, A)["calls"]) == [1, 2, 4]
    assert sorted(k[0] for k in visible(state, A)["transcripts"]) == [1, 2, 4, 6, 8]
    assert visible(state, A)["grants"] == {}
    assert Counter(r["owner"] for r in state["calls"].values()) == Counter({B: 3, A: 2, C: 1})
