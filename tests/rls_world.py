"""The world of the row-level security attack suites (``test_rls``, ``test_rls_differential``):
the module with its policies, the visibility oracle computed in plain Python from the
policy definitions, fixtures, and a subscription client folding deltas.

Schema: ``calls`` (two read policies: own rows OR granted through the private ``grants``
table; writes only on own rows), ``transcripts`` (one policy joining back to ``calls`` and
``grants``), ``notes`` (two subquery-free read policies, OR-ed), private ``grants`` and a
public ``teams`` table without policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import test_sql_adhoc as gen
from test_dbsp_differential import Fold

from core import Database, Identity, Module, StoreConfig, btree, index
from core.module import read_policy, write_policy
from core.sql.query import run_query
from core.subscriptions import Delta, Subscription, SubscriptionManager
from core.transaction import ReducerContext

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64  # D owns nothing: a stranger
IDS = (A, B, C, D)
OWNERS = (A, B, C)
NAMES = {A: "A", B: "B", C: "C", D: "D", None: "system"}

# =========================================================================== the module

mod = Module("rls")

CALL_POLICIES = [
    read_policy("own", "owner = :sender"),
    read_policy("granted", "id IN (SELECT call_id FROM grants WHERE grantee = :sender)"),
    write_policy("own_writes", "owner = :sender"),
]
TRANSCRIPT_POLICY = (
    "call_id IN (SELECT id FROM calls WHERE owner = :sender)"
    " OR call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)"
)


@mod.table(
    primary_key="id",
    indexes=[index("by_owner", "owner"), btree("by_minutes", "minutes")],
    policies=CALL_POLICIES,
)
class Calls:
    id: int
    owner: Identity
    team: str
    note: str
    minutes: int | None


@mod.table(
    primary_key="id",
    indexes=[index("by_call", "call_id")],
    policies=[read_policy("via_call", TRANSCRIPT_POLICY)],  # no write policy: reads apply
)
class Transcripts:
    id: int
    call_id: int
    speaker: str
    text: str


@mod.table(primary_key=("call_id", "grantee"), public=False)
class Grants:
    call_id: int
    grantee: Identity


@mod.table(
    primary_key="id",
    indexes=[index("by_call", "call_id")],
    policies=[
        read_policy("mine", "author = :sender"),
        read_policy("shared", "shared = TRUE"),
        write_policy("author_writes", "author = :sender"),
    ],
)
class Notes:
    id: int
    author: Identity
    shared: bool
    call_id: int
    body: str


@mod.table(primary_key="name")
class Teams:
    name: str
    region: str


TABLES = ("calls", "transcripts", "grants", "notes", "teams")
PK = {"calls": ("id",), "transcripts": ("id",), "grants": ("call_id", "grantee")}
PK |= {"notes": ("id",), "teams": ("name",)}


def _apply_ops(ctx: ReducerContext, ops: list) -> list[bool]:
    """["ins"|"upd", table, {column: value}] or ["del", table, [pk...]]; delete results."""
    deleted = []
    for op, table, arg in ops:
        h = ctx.db[table]
        if op == "ins":
            h.insert(**arg)
        elif op == "upd":
            h.update(arg)
        elif op == "del":
            deleted.append(bool(h.delete(*arg)))
        else:  # pragma: no cover - test bug
            raise AssertionError(op)
    return deleted


@mod.reducer
def apply(ctx: ReducerContext, ops: list) -> None:
    """The system's writer (deletes must find their row)."""
    assert all(_apply_ops(ctx, ops))


@mod.reducer
def user_apply(ctx: ReducerContext, ops: list) -> list:
    """The same writes, made by whoever calls (secured handles for non-system callers)."""
    return _apply_ops(ctx, ops)


@mod.reducer
def probe(ctx: ReducerContext) -> dict:
    """The ids every read method of the handles returns (ordered as returned)."""
    calls, tr, notes = ctx.db.calls, ctx.db.transcripts, ctx.db.notes
    out: dict[str, Any] = {
        "calls.iter": sorted(r.id for r in calls),
        "calls.scan": sorted(r.id for r in calls.scan()),
        "calls.count": calls.count(),
        "calls.get": [i for i in range(120) if calls.get(i) is not None],
        "calls.range": [r.id for r in calls.range("by_minutes")],
        "calls.range_bounded": [r.id for r in calls.range("by_minutes", 0, 60, reverse=True)],
        "calls.range_open": [r.id for r in calls.range("by_minutes", 5, None, lo_inclusive=False)],
        "transcripts.iter": sorted(r.id for r in tr),
        "transcripts.count": tr.count(),
        "transcripts.get": [i for i in range(120) if tr.get(i) is not None],
        "transcripts.find": [r.id for c in range(120) for r in tr.find("by_call", c)],
        "notes.iter": sorted(r.id for r in notes),
        "notes.count": notes.count(),
        "notes.find": [r.id for c in range(120) for r in notes.find("by_call", c)],
    }
    for who, ident in zip("ABCD", IDS):
        out[f"calls.find.{who}"] = [r.id for r in calls.find("by_owner", ident)]
        one = calls.find_one("by_owner", ident)
        out[f"calls.find_one.{who}"] = None if one is None else one.id
    return out


# ---- the fixed world of the attack cases

CALLS = [
    {"id": 1, "owner": A, "team": "red", "note": "a-one", "minutes": 10},
    {"id": 2, "owner": A, "team": "blue", "note": "a-two", "minutes": 20},
    {"id": 3, "owner": B, "team": "red", "note": "b-secret", "minutes": 99},
    {"id": 4, "owner": B, "team": "green", "note": "b-granted", "minutes": 5},
    {"id": 5, "owner": C, "team": "green", "note": "c-only", "minutes": 50},
    {"id": 6, "owner": B, "team": "yellow", "note": "b-null", "minutes": None},
]
GRANTS = [
    {"call_id": 4, "grantee": A},  # A may read B's call 4 (not write it)
    {"call_id": 5, "grantee": B},
    {"call_id": 99, "grantee": A},  # no such call: only its orphan transcripts
]
TRANSCRIPTS = [
    {"id": 1, "call_id": 1, "speaker": "agent", "text": "hello a"},
    {"id": 2, "call_id": 1, "speaker": "caller", "text": "hi"},
    {"id": 3, "call_id": 3, "speaker": "caller", "text": "b secret words"},
    {"id": 4, "call_id": 4, "speaker": "agent", "text": "granted words"},
    {"id": 5, "call_id": 5, "speaker": "agent", "text": "c words"},
    {"id": 6, "call_id": 99, "speaker": "agent", "text": "orphan granted"},
    {"id": 7, "call_id": 77, "speaker": "agent", "text": "orphan hidden"},
    {"id": 8, "call_id": 2, "speaker": "caller", "text": "a two"},
]
NOTES = [
    {"id": 1, "author": A, "shared": False, "call_id": 3, "body": "a private on b call"},
    {"id": 2, "author": B, "shared": False, "call_id": 1, "body": "b private on a call"},
    {"id": 3, "author": B, "shared": True, "call_id": 2, "body": "b public"},
    {"id": 4, "author": C, "shared": False, "call_id": 5, "body": "c private"},
]
TEAMS = [
    {"name": n, "region": r}
    for n, r in [("red", "eu"), ("blue", "us"), ("green", "eu"), ("yellow", "us"), ("pink", "us")]
]
WORLD_OPS: list[list] = [
    *(["ins", "calls", r] for r in CALLS),
    *(["ins", "grants", r] for r in GRANTS),
    *(["ins", "transcripts", r] for r in TRANSCRIPTS),
    *(["ins", "notes", r] for r in NOTES),
    *(["ins", "teams", r] for r in TEAMS),
]

# ---- an oracle: the same tables without policies, holding what one identity may see

oracle_mod = gen.make_module(
    [msgspec.structs.replace(t, policies=(), public=True) for t in mod.tables], "rls_oracle"
)

Row = dict[str, Any]
State = dict[str, dict[tuple, Row]]


def open_db() -> Database:
    return Database.open([mod], StoreConfig())


def system(db: Database, ops: list[list]) -> int:
    return db.execute("apply", [ops]).offset


def pk_of(table: str, row: Row) -> tuple:
    return tuple(row[c] for c in PK[table])


def dump(db: Database, as_of: int | None = None) -> State:
    """Every table's rows as the system sees them (at ``as_of``, else now)."""
    tail = "" if as_of is None else f" FOR SYSTEM_TIME AS OF {as_of}"
    out: State = {}
    for t in TABLES:
        res = run_query(db, f"SELECT * FROM {t}{tail}")
        rows = [dict(zip(res.columns, r)) for r in res.rows]
        out[t] = {pk_of(t, r): r for r in rows}
    return out


def granted(state: State, x: str) -> set[int]:
    return {g["call_id"] for g in state["grants"].values() if g["grantee"] == x}


def owned(state: State, x: str) -> set[int]:
    return {c["id"] for c in state["calls"].values() if c["owner"] == x}


def may_read(state: State, table: str, row: Row, x: str) -> bool:
    """The read policies, in Python."""
    if table == "calls":
        return row["owner"] == x or row["id"] in granted(state, x)
    if table == "transcripts":
        return row["call_id"] in owned(state, x) | granted(state, x)
    if table == "notes":
        return row["author"] == x or row["shared"] is True
    return table == "teams"  # grants: private


def may_write(state: State, table: str, row: Row, x: str) -> bool:
    """The write policies (the read policies where a table has none), in Python."""
    if table == "calls":
        return row["owner"] == x
    if table == "notes":
        return row["author"] == x
    if table == "transcripts":
        return may_read(state, table, row, x)
    return True  # teams, grants: no policy


def visible(state: State, x: str) -> State:
    return {
        t: {k: r for k, r in rows.items() if may_read(state, t, r, x)} for t, rows in state.items()
    }


def oracle(state: State) -> Database:
    db = Database.open([oracle_mod], StoreConfig())
    ops = [["ins", t, r] for t in TABLES for r in state[t].values()]
    if ops:
        db.execute("apply", [ops])
    return db


def norm_rows(rows: list[tuple]) -> list[tuple]:
    return [tuple(gen._norm(v) for v in r) for r in rows]


def ask(db: Database, sql: str, params: Any = None, sender: str | None = None) -> list[tuple]:
    return norm_rows(run_query(db, sql, params, sender=sender).rows)


def ids(db: Database, sql: str, sender: str | None, params: Any = None) -> list[Any]:
    return sorted(r[0] for r in ask(db, sql, params, sender))


@pytest.fixture
def world() -> Iterator[Database]:
    db = open_db()
    system(db, WORLD_OPS)
    yield db
    db.close()


@pytest.fixture
def state(world: Database) -> State:
    return dump(world)


class Oracles:
    """One oracle database per identity for a fixed state."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.dbs: dict[str | None, Database] = {}

    def __call__(self, x: str | None) -> Database:
        db = self.dbs.get(x)
        if db is None:
            db = self.dbs[x] = oracle(self.state if x is None else visible(self.state, x))
        return db

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()
        self.dbs.clear()


@pytest.fixture
def oracles(state: State) -> Iterator[Oracles]:
    o = Oracles(state)
    yield o
    o.close()


def same(got: list[tuple], want: list[tuple], ordered: bool) -> bool:
    return gen.same_rows(norm_rows(got), norm_rows(want), ordered)


def check_all(
    db: Database, oracles: Oracles, sql: str, params: Any = None, ordered: bool = False
) -> dict[str | None, list[tuple]]:
    """Run ``sql`` as every identity; each result must equal the oracle's. Returns them."""
    out: dict[str | None, list[tuple]] = {}
    for x in (*IDS, None):
        got = ask(db, sql, params, x)
        want = ask(oracles(x), sql, params)
        assert same(got, want, ordered), f"{NAMES[x]}: {sql}\n got  {got}\n want {want}"
        out[x] = got
    return out


class Client:
    """One identity's subscriptions, folded from the deltas the manager's hooks deliver."""

    def __init__(self, mgr: SubscriptionManager) -> None:
        self.mgr = mgr
        self.folds: dict[Subscription, Fold] = {}
        self.last: dict[Subscription, Delta] = {}
        self.deliveries: list[int] = []
        mgr.hooks.append(self._hook)

    def _hook(self, offset: int, updates: dict[Subscription, Delta]) -> None:
        self.deliveries.append(offset)
        self.last = {}
        for sub, d in updates.items():
            fold = self.folds.get(sub)
            if fold is not None:
                fold.apply(d)
                self.last[sub] = d

    def subscribe(self, sql: str, params: Any, sender: str | None) -> Subscription:
        sub, rows = self.mgr.subscribe(sql, params, sender=sender)
        self.folds[sub] = Fold(rows)
        return sub

    def rows(self, sub: Subscription) -> list[tuple]:
        return sorted(self.folds[sub].as_list(), key=gen._sortable)


def sorted_rows(rows: list[tuple]) -> list[tuple]:
    return sorted(norm_rows(rows), key=gen._sortable)
