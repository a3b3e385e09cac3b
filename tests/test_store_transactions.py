"""Transactions of the embedded store: atomic rollback, constraints, types, arguments, schema.

Every test here drives the store only through its public API (modules, reducers,
``Database.execute``/``call_sync``, snapshots and commit listeners). "Rollback leaves no
trace" is checked two ways: through an MVCC snapshot *and* through the writer's own view
inside a transaction (a probe reducer that reads everything and then rolls itself back),
since both are served by the live rows and indexes that a rollback must restore.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from core import (
    ArgumentError,
    Changeset,
    ColumnType,
    ConstraintViolation,
    Database,
    Identity,
    Module,
    NoSuchReducer,
    NoSuchTable,
    ReducerError,
    ReducerFailed,
    SchemaError,
    StoreConfig,
    StoreError,
    Timestamp,
    TypeMismatch,
    btree,
    column,
    index,
)
from core.schema import ColumnDef, IndexDef, TableDef

# --------------------------------------------------------------------------- the module

mod = Module("txtest")


@mod.table(
    primary_key="id",
    indexes=[
        btree("by_score", "score"),
        index("by_room", "room"),
        btree("by_badge", "badge", unique=True),
    ],
    unique=["email"],
)
class Person:
    id: int = column(auto_inc=True)
    email: str
    room: str | None = None
    score: float = 0.0
    nick: str | None = column(None, unique=True)
    badge: int | None = None


@mod.table(primary_key=("room", "seat"), indexes=[index("by_holder", "holder")])
class Seat:
    room: str
    seat: int
    holder: str | None = None


@mod.table(primary_key="id")
class Typed:
    id: int
    i: int | None = None
    f: float | None = None
    t: str | None = None
    b: bool | None = None
    by: bytes | None = None
    ts: Timestamp | None = None
    ident: Identity | None = None
    j: dict | None = None


@mod.reducer
def add(
    ctx: Any,
    email: str,
    score: float = 0.0,
    room: str | None = None,
    nick: str | None = None,
    badge: int | None = None,
) -> int:
    return ctx.db.person.insert(email=email, score=score, room=room, nick=nick, badge=badge).id


@mod.reducer
def insert_raw(ctx: Any, table: str, values: dict) -> None:
    ctx.db[table].insert(**values)


@mod.reducer
def update_person(ctx: Any, id: int, changes: dict) -> None:
    t = ctx.db.person
    t.update(t.get(id), **changes)


@mod.reducer
def delete_person(ctx: Any, id: int) -> bool:
    return ctx.db.person.delete(id)


@mod.reducer
def put_typed(ctx: Any, values: dict) -> None:
    ctx.db.typed.insert(**values)


# Reducers whose arguments are typed by the store (not JSON), to hand it real Python
# values (bytes, datetimes, tuples...) that JSON arguments could not carry.
PY_VALUES: dict[str, Any] = {}


@mod.reducer
def put_py(ctx: Any) -> Any:
    ctx.db.typed.insert(**PY_VALUES)
    return None


# A program of steps run inside one transaction: each step is [op, ...]. "fail" raises
# ReducerError, "crash" raises ZeroDivisionError; constraint errors come from the table.
@mod.reducer
def program(ctx: Any, steps: list) -> list:
    out: list[Any] = []
    p = ctx.db.person
    s = ctx.db.seat
    for step in steps:
        op = step[0]
        if op == "ins":
            out.append(p.insert(**step[1]).id)
        elif op == "upd":
            p.update(p.get(step[1]), **step[2])
        elif op == "del":
            out.append(p.delete(step[1]))
        elif op == "seat":
            s.insert(room=step[1], seat=step[2], holder=step[3])
        elif op == "unseat":
            s.delete(step[1], step[2])
        elif op == "fail":
            raise ReducerError("rejected on purpose")
        elif op == "crash":
            out.append(1 // 0)
        else:  # pragma: no cover - test bug
            raise AssertionError(op)
    return out


PROBE: dict[str, Any] = {}


class _ProbeDone(Exception):
    pass


@mod.reducer
def probe(ctx: Any) -> None:
    """Read everything through the writer's view, stash it in PROBE, then roll back."""
    PROBE.clear()
    PROBE.update(_writer_fingerprint(ctx))
    raise _ProbeDone()


ROOMS = [None, "a", "b", "c", "zz"]
SCORE_BOUNDS = [None, -1.0, 0.0, 1.0, 2.5, 3.0, 10.0]


def _sorted_rows(rows: Any) -> list[tuple]:
    return sorted((tuple(r) for r in rows), key=repr)


def _fingerprint(*, rows: list[tuple], get: Any, find: Any, rng: Any) -> dict:
    """Everything observable about the person and seat tables through one reader."""
    out: dict[str, Any] = {"rows": _sorted_rows(rows)}
    ids = sorted({r[0] for r in rows} | set(range(0, 15)))
    out["get"] = {i: get(i) for i in ids}
    out["by_room"] = {r: _sorted_rows(find("by_room", r)) for r in ROOMS}
    emails = {r[1] for r in rows} | {f"p{i}@x" for i in range(15)}
    out["email"] = {e: _sorted_rows(find("email_unique", e)) for e in sorted(emails)}
    out["nick"] = {n: _sorted_rows(find("nick_unique", n)) for n in [None, "n1", "n2", "n3", "new"]}
    out["badge"] = {b: _sorted_rows(find("by_badge", b)) for b in [None, 1, 2, 3, 7]}
    out["score_eq"] = {s: _sorted_rows(find("by_score", s)) for s in [0.0, 1.0, 2.5, 3.0]}
    ranges = {}
    for lo in SCORE_BOUNDS:
        for hi in SCORE_BOUNDS:
            for lo_inc in (True, False):
                for hi_inc in (True, False):
                    for rev in (False, True):
                        key = (lo, hi, lo_inc, hi_inc, rev)
                        ranges[key] = [
                            tuple(r) for r in rng("by_score", lo, hi, lo_inc, hi_inc, rev)
                        ]
    out["ranges"] = ranges
    out["badge_range"] = [tuple(r) for r in rng("by_badge", None, None, True, True, False)]
    return out


def _writer_fingerprint(ctx: Any) -> dict:
    p = ctx.db.person
    s = ctx.db.seat
    fp = _fingerprint(
        rows=list(p.scan()),
        get=p.get,
        find=p.find,
        rng=lambda ix, lo, hi, li, hi_, rev: p.range(
            ix, lo, hi, lo_inclusive=li, hi_inclusive=hi_, reverse=rev
        ),
    )
    fp["count"] = p.count()
    fp["seats"] = _sorted_rows(s.scan())
    fp["holders"] = {h: _sorted_rows(s.find("by_holder", h)) for h in [None, "ann", "bob"]}
    fp["seat_get"] = {(r, n): s.get(r, n) for r in ("r1", "r2") for n in (1, 2, 3)}
    return fp


def _snapshot_fingerprint(db: Database) -> dict:
    with db.snapshot() as snap:
        p = snap.table("person")
        s = snap.table("seat")
        fp = _fingerprint(
            rows=p.rows(),
            get=p.get,
            find=p.find,
            rng=lambda ix, lo, hi, li, hi_, rev: p.range(
                ix, lo, hi, lo_inclusive=li, hi_inclusive=hi_, reverse=rev
            ),
        )
        fp["count"] = p.count()
        fp["seats"] = _sorted_rows(s.rows())
        fp["holders"] = {h: _sorted_rows(s.find("by_holder", h)) for h in [None, "ann", "bob"]}
        fp["seat_get"] = {(r, n): s.get(r, n) for r in ("r1", "r2") for n in (1, 2, 3)}
        return fp


def _state(db: Database) -> tuple[int, int, dict, dict]:
    """(offset, visible offset, snapshot view, writer view) - the full observable state."""
    offset = db.offset
    with pytest.raises(ReducerFailed):
        db.execute("probe")
    assert db.offset == offset, "the probe itself must roll back"
    return db.offset, db.visible_offset, _snapshot_fingerprint(db), dict(PROBE)


@pytest.fixture
def db() -> Any:
    d = Database.open([mod], StoreConfig(durability="none"))
    yield d
    d.close()


def _seed(db: Database) -> list[int]:
    ids = [
        db.execute("add", {"email": "p1@x", "score": 1.0, "room": "a", "nick": "n1", "badge": 1}),
        db.execute("add", {"email": "p2@x", "score": 2.5, "room": "b", "badge": 2}),
        db.execute("add", {"email": "p3@x", "score": 2.5, "room": "a", "nick": "n3"}),
        db.execute("add", {"email": "p4@x", "score": 3.0}),
    ]
    db.execute("program", {"steps": [["seat", "r1", 1, "ann"], ["seat", "r1", 2, "bob"]]})
    return [r.value for r in ids]


# --------------------------------------------------------------------------- rollback

FAILING_PROGRAMS = {
    "reducer_error_after_writes": [
        ["ins", {"email": "p9@x", "score": 1.0, "room": "c", "nick": "new", "badge": 7}],
        ["upd", 1, {"score": 10.0, "room": "zz", "email": "changed@x", "nick": None}],
        ["del", 2],
        ["ins", {"email": "p2@x", "score": 0.0, "room": "b", "badge": 2}],  # reuse freed keys
        ["seat", "r2", 1, "ann"],
        ["unseat", "r1", 1],
        ["fail"],
    ],
    "arbitrary_exception_after_writes": [
        ["ins", {"email": "p9@x", "score": -1.0}],
        ["ins", {"email": "p10@x", "score": 3.0, "room": "a"}],
        ["upd", 3, {"room": None, "score": 0.0}],
        ["del", 4],
        ["crash"],
    ],
    "duplicate_unique_in_the_middle": [
        ["ins", {"email": "p9@x", "score": 1.0, "room": "a"}],
        ["upd", 2, {"score": 1.0}],
        ["del", 3],
        ["ins", {"email": "p1@x"}],  # unique email violation
        ["ins", {"email": "never@x"}],
    ],
    "duplicate_btree_unique_in_the_middle": [
        ["upd", 1, {"badge": 7}],
        ["ins", {"email": "p9@x", "badge": 2}],  # by_badge violation
    ],
    "duplicate_pk_in_the_middle": [
        ["ins", {"email": "p9@x"}],
        ["seat", "r2", 3, None],
        ["ins", {"id": 2, "email": "p10@x"}],
    ],
    "unique_violation_on_update": [
        ["ins", {"email": "p9@x", "nick": "n2"}],
        ["upd", 1, {"nick": "n3"}],  # n3 is taken by person 3
    ],
    "type_error_in_the_middle": [
        ["ins", {"email": "p9@x"}],
        ["upd", 1, {"score": "high"}],
    ],
    "composite_pk_duplicate_in_the_middle": [
        ["seat", "r2", 1, "ann"],
        ["unseat", "r1", 2],
        ["seat", "r1", 1, "bob"],
    ],
    "insert_delete_reinsert_then_fail": [
        ["del", 1],
        ["ins", {"id": 1, "email": "p1@x", "score": 7.0, "room": "c"}],
        ["upd", 1, {"score": 8.0}],
        ["del", 1],
        ["ins", {"id": 1, "email": "other@x"}],
        ["fail"],
    ],
}

EXPECTED_ERROR = {
    "reducer_error_after_writes": ReducerError,
    "arbitrary_exception_after_writes": ReducerFailed,
    "duplicate_unique_in_the_middle": ConstraintViolation,
    "duplicate_btree_unique_in_the_middle": ConstraintViolation,
    "duplicate_pk_in_the_middle": ConstraintViolation,
    "unique_violation_on_update": ConstraintViolation,
    "type_error_in_the_middle": TypeMismatch,
    "composite_pk_duplicate_in_the_middle": ConstraintViolation,
    "insert_delete_reinsert_then_fail": ReducerError,
}


@pytest.mark.parametrize("name", sorted(FAILING_PROGRAMS))
def test_failed_transaction_leaves_no_trace(db: Database, name: str) -> None:
    _seed(db)
    before = _state(db)
    with pytest.raises(EXPECTED_ERROR[name]):
        db.execute("program", {"steps": FAILING_PROGRAMS[name]})
    after = _state(db)
    assert after[0] == before[0], "offset moved"
    assert after[1] == before[1], "visible offset moved"
    assert after[2] == before[2], "snapshot view differs after rollback"
    assert after[3] == before[3], "writer view (live rows/indexes) differs after rollback"
    # The next commit gets the next dense offset and the id it would have gotten.
    res = db.execute("add", {"email": "next@x"})
    assert res.offset == before[0] + 1
    assert res.value == 5


def test_rollback_restores_auto_increment_sequence(db: Database) -> None:
    ids = [db.execute("add", {"email": f"p{i}@x"}).value for i in range(3)]
    assert ids == [1, 2, 3]
    with pytest.raises(ReducerError):
        db.execute(
            "program", {"steps": [["ins", {"email": f"q{i}@x"}] for i in range(5)] + [["fail"]]}
        )
    # An explicit id above the sequence bumps it - and the bump must roll back too.
    with pytest.raises(ReducerError):
        db.execute("program", {"steps": [["ins", {"id": 100, "email": "big@x"}], ["fail"]]})
    with pytest.raises(ConstraintViolation):
        db.execute("add", {"email": "p0@x"})  # fails inside insert, after taking an id
    assert db.execute("add", {"email": "after@x"}).value == 4
    # Committed explicit ids do advance it; the next automatic id follows them.
    db.execute("program", {"steps": [["ins", {"id": 100, "email": "big@x"}]]})
    assert db.execute("add", {"email": "after2@x"}).value == 101
    # An explicit id below the sequence does not move it back.
    db.execute("program", {"steps": [["ins", {"id": 50, "email": "mid@x"}]]})
    assert db.execute("add", {"email": "after3@x"}).value == 102


def test_rollback_of_sequence_survives_restart(tmp_path: Path) -> None:
    cfg = StoreConfig(data_dir=tmp_path, segment_bytes=1 << 20)
    d = Database.open([mod], cfg)
    try:
        assert d.call_sync("add", {"email": "a@x"}).value == 1
        with pytest.raises(ReducerError):
            d.call_sync("program", {"steps": [["ins", {"email": "b@x"}], ["fail"]]})
        # An insert-then-delete commits and does consume its id.
        d.call_sync("program", {"steps": [["ins", {"email": "c@x"}], ["del", 2]]})
    finally:
        d.close(snapshot=False)
    d = Database.open([mod], cfg)
    try:
        assert d.call_sync("add", {"email": "d@x"}).value == 3
        with d.snapshot() as s:
            assert sorted(r.email for r in s.table("person").rows()) == ["a@x", "d@x"]
    finally:
        d.close()


def test_multi_table_transaction_commits_and_rolls_back_together(db: Database) -> None:
    seen: list[Changeset] = []
    db.add_listener(seen.append)
    res = db.execute(
        "program",
        {"steps": [["ins", {"email": "m@x", "room": "a"}], ["seat", "r1", 1, "m"]]},
    )
    assert set(res.changeset.tables) == {"person", "seat"}
    assert [tuple(r) for r in res.changeset.tables["seat"].inserts] == [("r1", 1, "m")]
    before = _state(db)
    with pytest.raises(ConstraintViolation):
        db.execute(
            "program",
            {"steps": [["seat", "r2", 1, "x"], ["ins", {"email": "n@x"}], ["seat", "r1", 1, "y"]]},
        )
    assert _state(db) == before
    assert len(seen) == 1


# --------------------------------------------------------------------------- constraints


def test_duplicate_primary_key_single_and_composite(db: Database) -> None:
    db.execute("program", {"steps": [["ins", {"id": 7, "email": "a@x"}]]})
    with pytest.raises(ConstraintViolation, match=r"primary key person\(id\) = 7 already exists"):
        db.execute("program", {"steps": [["ins", {"id": 7, "email": "b@x"}]]})
    db.execute("program", {"steps": [["seat", "r1", 1, None]]})
    db.execute("program", {"steps": [["seat", "r1", 2, None], ["seat", "r2", 1, None]]})
    with pytest.raises(ConstraintViolation, match=r"seat\(room, seat\) = \('r1', 1\)"):
        db.execute("program", {"steps": [["seat", "r1", 1, "x"]]})
    with db.snapshot() as s:
        t = s.table("seat")
        assert t.get("r1", 1) == ("r1", 1, None)
        assert t.get("r1", 3) is None
        assert len(t.rows()) == 3
    # Deleting frees the key for re-use in the same transaction.
    db.execute("program", {"steps": [["unseat", "r1", 1], ["seat", "r1", 1, "ann"]]})
    with db.snapshot() as s:
        assert s.table("seat").get("r1", 1) == ("r1", 1, "ann")


def test_unique_index_and_nulls(db: Database) -> None:
    db.execute("add", {"email": "a@x", "nick": "n1", "badge": 1})
    with pytest.raises(ConstraintViolation, match=r"person\.email_unique \(email\).*'a@x'"):
        db.execute("add", {"email": "a@x"})
    with pytest.raises(ConstraintViolation, match=r"nick_unique"):
        db.execute("add", {"email": "b@x", "nick": "n1"})
    with pytest.raises(ConstraintViolation, match=r"by_badge"):
        db.execute("add", {"email": "b@x", "badge": 1})
    # NULLs never conflict, in hash and in B-tree unique indexes.
    for i in range(4):
        db.execute("add", {"email": f"null{i}@x", "nick": None, "badge": None})
    with db.snapshot() as s:
        t = s.table("person")
        assert len(t.find("nick_unique", None)) == 4
        assert len(t.find("by_badge", None)) == 4
        assert [r.badge for r in t.range("by_badge", None, None)] == [None] * 4 + [1]
    # Updating a row to its own unique value is not a conflict; to another's is.
    db.execute("update_person", {"id": 1, "changes": {"email": "a@x", "score": 2.0}})
    db.execute("add", {"email": "c@x", "nick": "n2"})
    with pytest.raises(ConstraintViolation, match="nick_unique"):
        db.execute("update_person", {"id": 6, "changes": {"nick": "n1"}})
    # Swapping unique values inside one transaction works.
    db.execute(
        "program",
        {
            "steps": [
                ["upd", 1, {"nick": "tmp"}],
                ["upd", 6, {"nick": "n1"}],
                ["upd", 1, {"nick": "n2"}],
            ]
        },
    )
    with db.snapshot() as s:
        t = s.table("person")
        assert t.find("nick_unique", "n1")[0].id == 6
        assert t.find("nick_unique", "n2")[0].id == 1
        assert t.find("nick_unique", "tmp") == []


def test_composite_unique_with_null_part() -> None:
    m = Module("cu")

    @m.table(primary_key="id", unique=[("a", "b")])
    class Pair:
        id: int = column(auto_inc=True)
        a: str
        b: int | None = None

    @m.reducer
    def put(ctx: Any, a: str, b: int | None) -> None:
        ctx.db.pair.insert(a=a, b=b)

    d = Database.open([m], StoreConfig(durability="none"))
    d.execute("put", {"a": "x", "b": 1})
    d.execute("put", {"a": "x", "b": 2})
    d.execute("put", {"a": "x", "b": None})
    d.execute("put", {"a": "x", "b": None})
    with pytest.raises(ConstraintViolation, match=r"a_b_unique"):
        d.execute("put", {"a": "x", "b": 1})
    with d.snapshot() as s:
        assert len(s.table("pair").rows()) == 4
        assert len(s.table("pair").find("a_b_unique", "x", None)) == 2


def test_not_null(db: Database) -> None:
    with pytest.raises(ConstraintViolation, match=r"person\.email: a value is required"):
        db.execute("insert_raw", {"table": "person", "values": {"score": 1.0}})
    with pytest.raises(TypeMismatch, match=r"person\.email: null is not allowed"):
        db.execute("insert_raw", {"table": "person", "values": {"email": None}})
    db.execute("add", {"email": "a@x"})
    with pytest.raises(TypeMismatch, match=r"person\.score: null is not allowed"):
        db.execute("update_person", {"id": 1, "changes": {"score": None}})
    # Nullable columns take None, and defaults fill missing values.
    db.execute("insert_raw", {"table": "person", "values": {"email": "b@x", "room": None}})
    with db.snapshot() as s:
        r = s.table("person").get(2)
        assert (r.room, r.score, r.nick, r.badge) == (None, 0.0, None, None)


def test_not_null_column_with_none_default_never_stores_null() -> None:
    """A NOT NULL column declared with ``= None`` must not let NULL into the table.

    Either the declaration is refused, or an insert that relies on the default fails.
    """
    m = Module("nn")
    try:

        @m.table(primary_key="id")
        class Thing:
            id: int
            name: str = column(None)

    except SchemaError:
        return

    @m.reducer
    def put(ctx: Any, id: int) -> None:
        ctx.db.thing.insert(id=id)

    d = Database.open([m], StoreConfig(durability="none"))
    try:
        d.execute("put", {"id": 1})
    except ConstraintViolation:
        return
    with d.snapshot() as s:
        row = s.table("thing").get(1)
    pytest.fail(f"NOT NULL column thing.name stored NULL through its default: {row!r}")


UTC = dt.UTC
HEX = "ab" * 32

GOOD_VALUES: list[tuple[str, Any, Any]] = [
    ("i", 0, 0),
    ("i", 2**63 - 1, 2**63 - 1),
    ("i", -(2**63), -(2**63)),
    ("f", 1.5, 1.5),
    ("f", 3, 3.0),  # ints are accepted by float64 and stored as floats
    ("f", float("inf"), float("inf")),
    ("t", "", ""),
    ("t", "héllo ☎", "héllo ☎"),
    ("b", True, True),
    ("b", False, False),
    ("by", b"\x00\xff", b"\x00\xff"),
    ("by", bytearray(b"ab"), b"ab"),
    ("by", memoryview(b"cd"), b"cd"),
    ("ts", 0, 0),
    ("ts", 1_700_000_000_123_456, 1_700_000_000_123_456),
    ("ts", dt.datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=UTC), 1_704_164_645_000_678),
    (
        "ts",
        dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        -1,
    ),
    (
        "ts",
        dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        1_704_164_645_000_000,
    ),
    ("ident", HEX, HEX),
    ("ident", bytes(range(32)), bytes(range(32)).hex()),
    ("j", {"a": [1, 2.5, "x", None, True, {"b": []}]}, {"a": [1, 2.5, "x", None, True, {"b": []}]}),
    ("j", {"t": (1, 2)}, {"t": [1, 2]}),
]

BAD_VALUES: list[tuple[str, Any, str]] = [
    ("i", 2**63, "out of int64 range"),
    ("i", -(2**63) - 1, "out of int64 range"),
    ("i", True, "expected int64, got bool"),
    ("i", 1.0, "expected int64, got float"),
    ("i", "1", "expected int64, got str"),
    ("f", "1.5", "expected float64, got str"),
    ("f", True, "expected float64, got bool"),
    ("f", 2**1100, "float64"),  # too large for a float: a type error, not a crash
    ("t", b"x", "expected text, got bytes"),
    ("t", 5, "expected text, got int"),
    ("b", 1, "expected bool, got int"),
    ("b", "true", "expected bool, got str"),
    ("by", "ab", "expected bytes, got str"),
    ("by", [1, 2], "expected bytes, got list"),
    ("ts", dt.datetime(2024, 1, 1), "naive datetime"),
    ("ts", 1.5, "expected timestamp, got float"),
    ("ts", True, "expected timestamp, got bool"),
    ("ts", 2**63, "timestamp"),
    ("ts", dt.date(2024, 1, 1), "expected timestamp, got date"),
    ("ident", "AB" * 32, "64 lowercase hex"),
    ("ident", "ab" * 31, "64 lowercase hex"),
    ("ident", "zz" * 32, "64 lowercase hex"),
    ("ident", bytes(31), "expected identity, got bytes"),
    ("ident", 5, "expected identity, got int"),
    ("j", {1: "x"}, "keys must be strings"),
    ("j", {"a": {2.5: "x"}}, "keys must be strings"),
    ("j", {"a": {1, 2}}, "expected json"),
    ("j", {"a": b"x"}, "expected json"),
    ("j", 1 + 2j, "expected json, got complex"),
]


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return {"x": v}


def _ids(cases: list[tuple[str, Any, Any]]) -> list[str]:
    return [f"{c}-{type(v).__name__}-{i}" for i, (c, v, _) in enumerate(cases)]


@pytest.mark.parametrize(("col", "value", "stored"), GOOD_VALUES, ids=_ids(GOOD_VALUES))
def test_column_types_accept_and_normalize(db: Database, col: str, value: Any, stored: Any) -> None:
    PY_VALUES.clear()
    PY_VALUES.update({"id": 1, col: value})
    db.execute("put_py")
    with db.snapshot() as s:
        got = getattr(s.table("typed").get(1), col)
    assert got == stored
    assert type(got) is type(stored)


@pytest.mark.parametrize(("col", "value", "message"), BAD_VALUES, ids=_ids(BAD_VALUES))
def test_column_types_reject(db: Database, col: str, value: Any, message: str) -> None:
    PY_VALUES.clear()
    PY_VALUES.update({"id": 1, col: value})
    offset = db.offset
    with pytest.raises(TypeMismatch) as ei:
        db.execute("put_py")
    assert f"typed.{col}" in str(ei.value), "the error must name the column"
    assert message in str(ei.value)
    assert ei.value.code == "type_error"
    assert db.offset == offset
    with db.snapshot() as s:
        assert s.table("typed").rows() == []


def test_json_depth_limit(db: Database) -> None:
    PY_VALUES.clear()
    PY_VALUES.update({"id": 1, "j": _nested(60)})
    db.execute("put_py")
    PY_VALUES.update({"id": 2, "j": _nested(80)})
    with pytest.raises(TypeMismatch, match="deeper than 64"):
        db.execute("put_py")


def test_nan_in_btree_index_is_rejected_or_fully_supported(db: Database) -> None:
    """NaN compares false with everything: either float64 refuses it, or indexes cope."""
    for i in range(12):
        db.execute("add", {"email": f"p{i}@x", "score": float(i)})
    offset = db.offset
    try:
        db.execute("insert_raw", {"table": "person", "values": {"email": "n@x", "score": math.nan}})
    except TypeMismatch as e:
        assert "person.score" in str(e)
        assert db.offset == offset
        with pytest.raises(ArgumentError, match="argument 'score'"):
            db.execute("add", {"email": "nan@x", "score": math.nan})
        return
    nan_id = db.execute("add", {"email": "nan@x", "score": math.nan}).value
    db.execute("delete_person", {"id": nan_id})  # must not break the B-tree
    db.execute("delete_person", {"id": nan_id - 1})
    db.execute("add", {"email": "again@x", "score": 5.0})
    with db.snapshot() as s:
        t = s.table("person")
        rows = t.rows()
        assert len(t.range("by_score", None, None)) == len(rows) == 13
        assert t.get(nan_id) is None


def test_unknown_column_and_unknown_table(db: Database) -> None:
    with pytest.raises(ConstraintViolation, match=r"table 'person' has no column\(s\) \['bogus'\]"):
        db.execute("insert_raw", {"table": "person", "values": {"email": "a@x", "bogus": 1}})
    db.execute("add", {"email": "a@x"})
    with pytest.raises(ConstraintViolation, match=r"no column\(s\) \['zap'\]"):
        db.execute("update_person", {"id": 1, "changes": {"zap": 2}})
    with pytest.raises(NoSuchTable, match="'nope'"):
        db.execute("insert_raw", {"table": "nope", "values": {}})
    with db.snapshot() as s:
        assert [r.email for r in s.table("person").rows()] == ["a@x"]
        with pytest.raises(NoSuchTable):
            s.table("nope")


def test_unknown_index_and_range_on_hash_index(db: Database) -> None:
    db.execute("add", {"email": "a@x", "room": "a"})
    with db.snapshot() as s:
        t = s.table("person")
        with pytest.raises(ConstraintViolation, match="no index 'nope'"):
            t.find("nope", 1)
        with pytest.raises(ConstraintViolation, match="hash index"):
            t.range("by_room", "a", "b")


def test_update_of_missing_row(db: Database) -> None:
    m = Module("upd")

    @m.table(primary_key="id")
    class Box:
        id: int
        v: int = 0

    @m.reducer
    def stale(ctx: Any) -> None:
        t = ctx.db.box
        row = t.insert(id=1)
        t.delete(1)
        t.update(row, v=2)

    @m.reducer
    def by_dict(ctx: Any) -> None:
        ctx.db.box.update({"id": 99, "v": 1})

    d = Database.open([m], StoreConfig(durability="none"))
    with pytest.raises(ConstraintViolation, match=r"update of box: no row with primary key 1"):
        d.execute("stale")
    with pytest.raises(ConstraintViolation, match=r"no row with primary key 99"):
        d.execute("by_dict")
    with d.snapshot() as s:
        assert s.table("box").rows() == []


def test_update_changing_primary_key_is_refused(db: Database) -> None:
    _seed(db)
    before = _state(db)
    with pytest.raises(ConstraintViolation, match="primary key cannot change"):
        db.execute("update_person", {"id": 1, "changes": {"id": 50}})
    with pytest.raises(ConstraintViolation, match="primary key cannot change"):
        db.execute("update_person", {"id": 1, "changes": {"id": 2}})
    assert _state(db) == before


def test_handles_refuse_to_work_outside_a_transaction(db: Database) -> None:
    with pytest.raises(StoreError, match="outside a reducer transaction"):
        db.view.person.insert(email="x@x")
    with pytest.raises(StoreError, match="outside a reducer transaction"):
        db.view.person.get(1)


def test_reducer_cannot_call_reducers_through_the_database() -> None:
    m = Module("nest")
    holder: dict[str, Database] = {}

    @m.table(primary_key="id")
    class Log:
        id: int

    @m.reducer
    def inner(ctx: Any) -> None:
        ctx.db.log.insert(id=2)

    @m.reducer
    def outer(ctx: Any) -> None:
        ctx.db.log.insert(id=1)
        holder["db"].execute("inner")

    d = Database.open([m], StoreConfig(durability="none"))
    holder["db"] = d
    off = d.offset
    with pytest.raises(StoreError, match="cannot call other reducers"):
        d.execute("outer")
    assert d.offset == off
    with d.snapshot() as s:
        assert s.table("log").rows() == []


def test_non_json_return_value_rolls_back() -> None:
    m = Module("ret")

    @m.table(primary_key="id")
    class Box:
        id: int

    @m.reducer
    def bad(ctx: Any) -> Any:
        ctx.db.box.insert(id=1)
        return {1, 2}

    d = Database.open([m], StoreConfig(durability="none"))
    with pytest.raises(TypeMismatch, match="return value of 'bad'"):
        d.execute("bad")
    with d.snapshot() as s:
        assert s.table("box").rows() == []


def test_reducer_failure_messages(db: Database) -> None:
    with pytest.raises(ReducerError, match="rejected on purpose") as e1:
        db.execute("program", {"steps": [["fail"]]})
    assert e1.value.code == "reducer_error"
    with pytest.raises(ReducerFailed, match="reducer 'program' failed: ZeroDivisionError") as e2:
        db.execute("program", {"steps": [["crash"]]})
    assert isinstance(e2.value.__cause__, ZeroDivisionError)
    assert e2.value.code == "reducer_failed"


# --------------------------------------------------------------------------- arguments


def test_reducer_arguments_validation(db: Database) -> None:
    off = db.offset
    with pytest.raises(ArgumentError, match=r"reducer 'add': missing argument 'email'") as ei:
        db.execute("add", {"score": 1.0})
    assert ei.value.code == "invalid_arguments"
    with pytest.raises(ArgumentError, match=r"reducer 'add': missing argument 'email'"):
        db.execute("add", [])
    with pytest.raises(ArgumentError, match=r"reducer 'add': unknown argument\(s\) \['colour'\]"):
        db.execute("add", {"email": "a@x", "colour": "red"})
    with pytest.raises(ArgumentError, match=r"reducer 'add': argument 'score': expected float64"):
        db.execute("add", {"email": "a@x", "score": "high"})
    with pytest.raises(ArgumentError, match=r"argument 'email': expected text, got int"):
        db.execute("add", {"email": 5})
    with pytest.raises(ArgumentError, match=r"argument 'email': null is not allowed"):
        db.execute("add", {"email": None})
    with pytest.raises(ArgumentError, match=r"argument 'badge': expected int64, got bool"):
        db.execute("add", {"email": "a@x", "badge": True})
    with pytest.raises(ArgumentError, match=r"argument 'badge': invalid int64"):
        db.execute("add", {"email": "a@x", "badge": 2**64})
    with pytest.raises(ArgumentError, match=r"reducer 'add' takes 5 argument\(s\), got 6"):
        db.execute("add", ["a@x", 1.0, None, None, None, "extra"])
    with pytest.raises(ArgumentError, match="must be an object or an array"):
        db.execute("add", "a@x")
    with pytest.raises(NoSuchReducer, match="'nope'"):
        db.execute("nope", {})
    with pytest.raises(NoSuchReducer):
        db.execute("probe_nonexistent")
    assert db.offset == off, "rejected calls must not commit"
    # Positional and keyword calls, with defaults and int->float normalization.
    r1 = db.execute("add", ["p@x", 2, "a"])
    r2 = db.execute("add", {"email": "q@x", "badge": 3})
    with db.snapshot() as s:
        t = s.table("person")
        assert t.get(r1.value)[1:] == ("p@x", "a", 2.0, None, None)
        assert type(t.get(r1.value).score) is float
        assert t.get(r2.value)[1:] == ("q@x", None, 0.0, None, 3)
    assert r1.changeset.args == ["p@x", 2.0, "a", None, None]


# --------------------------------------------------------------------------- schema


def _table(cls: type, **kw: Any) -> TableDef:
    m = Module("decl")
    m.table(cls, **kw)
    return m.tables[0]


def test_schema_no_primary_key() -> None:
    class NoPk:
        a: int
        b: str

    with pytest.raises(SchemaError, match="declare primary_key="):
        _table(NoPk)

    class TwoAuto:
        a: int = column(auto_inc=True)
        b: int = column(auto_inc=True)

    with pytest.raises(SchemaError, match="declare primary_key="):
        _table(TwoAuto)
    with pytest.raises(SchemaError, match="needs a primary key"):
        TableDef("t", (ColumnDef("a", ColumnType.INT64),), ()).validate()
    with pytest.raises(SchemaError, match="no column 'zz'"):
        _table(NoPk, primary_key="zz")

    class OneAuto:
        a: int = column(auto_inc=True)
        b: str

    assert _table(OneAuto).primary_key == ("a",)


def test_schema_nullable_or_json_primary_key() -> None:
    class NullPk:
        id: int | None
        v: int

    with pytest.raises(SchemaError, match="primary key columns cannot be nullable"):
        _table(NullPk, primary_key="id")
    with pytest.raises(SchemaError, match="primary key columns cannot be nullable"):
        _table(NullPk, primary_key=("v", "id"))

    class JsonPk:
        id: dict
        v: int

    with pytest.raises(SchemaError, match="json columns cannot be keys"):
        _table(JsonPk, primary_key="id")
    with pytest.raises(SchemaError, match="repeated primary key column"):
        _table(JsonPk, primary_key=("v", "v"))


def test_schema_auto_inc_needs_int64() -> None:
    class TextAuto:
        id: str = column(auto_inc=True)

    with pytest.raises(SchemaError, match="auto_inc needs an int64 column, not text"):
        _table(TextAuto, primary_key="id")

    class FloatAuto:
        id: int
        f: float = column(auto_inc=True)

    with pytest.raises(SchemaError, match="not float64"):
        _table(FloatAuto, primary_key="id")


def test_schema_duplicate_column_and_index() -> None:
    cols = (ColumnDef("a", ColumnType.INT64), ColumnDef("a", ColumnType.TEXT))
    with pytest.raises(SchemaError, match="duplicate column 'a'"):
        TableDef("t", cols, ("a",)).validate()
    with pytest.raises(SchemaError, match="duplicate column 'a'"):
        Module("m").add_table(TableDef("t", cols, ("a",)))

    class Two:
        id: int
        v: int

    with pytest.raises(SchemaError, match="duplicate index 'ix'"):
        _table(Two, primary_key="id", indexes=[index("ix", "v"), btree("ix", "id")])
    with pytest.raises(SchemaError, match="no column 'nope'"):
        _table(Two, primary_key="id", indexes=[index("ix", "nope")])
    with pytest.raises(SchemaError, match="no column 'nope'"):
        _table(Two, primary_key="id", unique=["nope"])
    with pytest.raises(SchemaError, match="has no columns"):
        TableDef("t", (), ("a",)).validate()
    with pytest.raises(SchemaError, match="has no columns"):
        _table(Two, primary_key="id", indexes=[IndexDef("e", ())])
    with pytest.raises(SchemaError, match="unknown kind"):
        _table(Two, primary_key="id", indexes=[IndexDef("e", ("v",), kind="trie")])  # type: ignore[arg-type]

    class Js:
        id: int
        j: dict

    with pytest.raises(SchemaError, match="json column 'j'"):
        _table(Js, primary_key="id", indexes=[index("by_j", "j")])


@pytest.mark.parametrize("bad", ["Bad", "1abc", "_x", "a-b", "a b", "é", "a" * 64, "x.y"])
def test_schema_bad_names(bad: str) -> None:
    class Ok:
        id: int

    with pytest.raises(SchemaError, match="invalid table name"):
        _table(Ok, primary_key="id", name=bad)
    with pytest.raises(SchemaError, match="invalid index name"):
        _table(Ok, primary_key="id", indexes=[index(bad, "id")])
    with pytest.raises(SchemaError, match="invalid module name"):
        Module(bad)
    with pytest.raises(SchemaError, match="invalid reducer name"):
        Module("m").reducer(lambda ctx: None, name=bad)
    cols = (ColumnDef("id", ColumnType.INT64), ColumnDef(bad, ColumnType.INT64))
    with pytest.raises(SchemaError, match="invalid column name"):
        TableDef("t", cols, ("id",)).validate()


def test_schema_bad_column_name_in_class() -> None:
    class Upper:
        id: int
        Name: str

    with pytest.raises(SchemaError, match="invalid column name 'Name'"):
        _table(Upper, primary_key="id")


@pytest.mark.parametrize("kw", ["class", "def", "import", "from", "return", "lambda", "none"])
def test_schema_python_keyword_column(kw: str) -> None:
    cls = type("Kw", (), {"__annotations__": {"id": int, kw: int}})
    if kw == "none":  # not a keyword (None is): a fine column name
        assert [c.name for c in _table(cls, primary_key="id").columns] == ["id", "none"]
        return
    with pytest.raises(SchemaError, match=f"invalid column name '{kw}': it is a Python keyword"):
        _table(cls, primary_key="id")


def test_schema_unsupported_annotations_and_reducers() -> None:
    class Weird:
        id: int
        s: set

    with pytest.raises(SchemaError, match=r"Weird\.s: unsupported annotation"):
        _table(Weird, primary_key="id")

    class Mixed:
        id: int
        u: int | str

    with pytest.raises(SchemaError, match=r"Mixed\.u: unsupported union"):
        _table(Mixed, primary_key="id")

    m = Module("r")
    with pytest.raises(SchemaError, match="first parameter must be ctx"):
        m.reducer(lambda: None, name="noctx")

    def unannotated(ctx, x):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(SchemaError, match="parameter 'x' needs a type annotation"):
        m.reducer(unannotated)

    def star(ctx: Any, *xs: int) -> None:
        return None

    with pytest.raises(SchemaError, match=r"\*args/\*\*kwargs"):
        m.reducer(star)

    def ok(ctx: Any) -> None:
        return None

    m.reducer(ok)
    with pytest.raises(SchemaError, match="declared twice"):
        m.reducer(ok)
    with pytest.raises(SchemaError, match="exactly one of"):
        m.scheduled()
    with pytest.raises(SchemaError, match="exactly one of"):
        m.scheduled(every_s=1, every_us=1)
    with pytest.raises(SchemaError, match="positive"):
        m.scheduled(every_us=0)

    def with_args(ctx: Any, x: int) -> None:
        return None

    with pytest.raises(SchemaError, match="takes only ctx"):
        m.scheduled(every_s=1)(with_args)

    class T:
        id: int

    m.table(T, primary_key="id")
    with pytest.raises(SchemaError, match="table 't' declared twice"):
        m.table(T, primary_key="id")


def test_two_modules_cannot_share_names() -> None:
    a, b = Module("a"), Module("b")

    class Same:
        id: int

    a.table(Same, primary_key="id")
    b.table(Same, primary_key="id")
    with pytest.raises(SchemaError, match="table 'same' is declared twice"):
        Database.open([a, b], StoreConfig(durability="none"))
    c, d = Module("c"), Module("d")
    c.reducer(lambda ctx: None, name="dup")
    d.reducer(lambda ctx: None, name="dup")
    with pytest.raises(SchemaError, match="reducer 'dup' is declared by two modules"):
        Database.open([c, d], StoreConfig(durability="none"))


# --------------------------------------------------------------------------- changesets


def test_net_no_op_update_emits_no_change(db: Database) -> None:
    seen: list[Changeset] = []
    db.add_listener(seen.append)
    db.execute("add", {"email": "a@x", "score": 1.0, "room": "a"})
    res = db.execute("update_person", {"id": 1, "changes": {}})
    assert "person" not in res.changeset.tables
    assert not res.changeset
    res = db.execute("update_person", {"id": 1, "changes": {"score": 1, "room": "a"}})
    assert "person" not in res.changeset.tables  # 1 == 1.0 after normalization
    # Changed and changed back (through index keys) inside one transaction.
    res = db.execute(
        "program",
        {
            "steps": [
                ["upd", 1, {"score": 9.0, "room": "b"}],
                ["upd", 1, {"score": 1.0, "room": "a"}],
            ]
        },
    )
    assert "person" not in res.changeset.tables
    with db.snapshot() as s:
        t = s.table("person")
        assert [r.id for r in t.find("by_room", "a")] == [1]
        assert t.find("by_room", "b") == []
        assert [r.id for r in t.range("by_score", 1.0, 1.0)] == [1]
        assert t.range("by_score", 5.0, None) == []
    assert [cs.offset for cs in seen] == list(range(seen[0].offset, seen[0].offset + 4))


def test_insert_then_delete_in_one_transaction_emits_nothing(db: Database) -> None:
    db.execute("add", {"email": "a@x"})
    res = db.execute(
        "program",
        {
            "steps": [
                ["ins", {"email": "tmp@x", "room": "a"}],
                ["upd", 2, {"room": "b"}],
                ["del", 2],
                ["seat", "r1", 1, "x"],
                ["unseat", "r1", 1],
            ]
        },
    )
    assert res.changeset.tables == {}
    with db.snapshot() as s:
        assert [r.email for r in s.table("person").rows()] == ["a@x"]
        assert s.table("seat").rows() == []
        assert s.table("person").find("by_room", "b") == []


def test_delete_then_reinsert_identical_row_emits_nothing(db: Database) -> None:
    rid = db.execute("add", {"email": "a@x", "score": 2.0, "room": "a"}).value
    with db.snapshot() as s:
        row = s.table("person").get(rid)
    res = db.execute("program", {"steps": [["del", rid], ["ins", dict(row._asdict())]]})
    assert res.changeset.tables == {}
    # ... and a delete then re-insert of a *different* row is one delete + one insert.
    res = db.execute("program", {"steps": [["del", rid], ["ins", {**row._asdict(), "score": 3.0}]]})
    ch = res.changeset.tables["person"]
    assert [tuple(r) for r in ch.deletes] == [tuple(row)]
    assert [tuple(r) for r in ch.inserts] == [tuple(row._replace(score=3.0))]


def test_json_update_changing_only_the_value_type_is_a_change() -> None:
    """JSON ``1`` and ``true`` (or ``0`` and ``false``) are different values.

    Python says ``1 == True``, so a change detector based on ``==`` would drop the update.
    """
    m = Module("jsn")

    @m.table(primary_key="id")
    class Doc:
        id: int
        body: dict | None = None

    @m.reducer
    def put(ctx: Any, id: int, body: dict) -> None:
        t = ctx.db.doc
        row = t.get(id)
        if row is None:
            t.insert(id=id, body=body)
        else:
            t.update(row, body=body)

    d = Database.open([m], StoreConfig(durability="none"))
    d.execute("put", {"id": 1, "body": {"v": 1, "w": [0]}})
    res = d.execute("put", {"id": 1, "body": {"v": True, "w": [False]}})
    with d.snapshot() as s:
        body = s.table("doc").get(1).body
    assert type(body["v"]) is bool and type(body["w"][0]) is bool, f"update was lost: {body!r}"
    assert [tuple(r) for r in res.changeset.tables["doc"].inserts] == [
        (1, {"v": True, "w": [False]})
    ]


def test_commit_listeners_get_one_changeset_per_commit_in_order(db: Database) -> None:
    seen: list[Changeset] = []
    db.add_listener(seen.append)
    results = []
    results.append(db.execute("add", {"email": "a@x", "room": "a"}))
    results.append(db.execute("add", {"email": "b@x", "room": "b", "score": 2.0}))
    with pytest.raises(ReducerError):
        db.execute("program", {"steps": [["ins", {"email": "c@x"}], ["fail"]]})
    with pytest.raises(ArgumentError):
        db.execute("add", {})
    results.append(db.execute("update_person", {"id": 1, "changes": {"score": 5.0}}))
    results.append(db.execute("delete_person", {"id": 2}))
    results.append(db.execute("delete_person", {"id": 2}))  # nothing to delete: empty commit
    results.append(
        db.execute(
            "program",
            {
                "steps": [
                    ["ins", {"email": "d@x"}],
                    ["seat", "r1", 1, "d"],
                    ["upd", 1, {"room": "c"}],
                ]
            },
        )
    )

    def failing_listener(cs: Changeset) -> None:
        raise RuntimeError("listeners must not break commits")

    db.add_listener(failing_listener)
    results.append(db.execute("add", {"email": "e@x"}))
    db.remove_listener(failing_listener)

    assert [cs.offset for cs in seen] == [r.offset for r in results]
    assert [r.offset for r in results] == list(range(results[0].offset, results[0].offset + 7))
    assert all(cs is r.changeset for cs, r in zip(seen, results))
    assert all(a.timestamp < b.timestamp for a, b in itertools.pairwise(seen))

    def tables(cs: Changeset) -> dict:
        return {
            t: (sorted(map(tuple, c.inserts)), sorted(map(tuple, c.deletes)))
            for t, c in cs.tables.items()
        }

    a0 = (1, "a@x", "a", 0.0, None, None)
    b0 = (2, "b@x", "b", 2.0, None, None)
    a1 = (1, "a@x", "a", 5.0, None, None)
    assert tables(seen[0]) == {"person": ([a0], [])}
    assert tables(seen[1]) == {"person": ([b0], [])}
    assert tables(seen[2]) == {"person": ([a1], [a0])}
    assert tables(seen[3]) == {"person": ([], [b0])}
    assert tables(seen[4]) == {}
    assert seen[4].reducer == "delete_person" and seen[4].args == [2]
    # id 3 was taken by the rolled-back insert and is handed out again
    d0 = (3, "d@x", None, 0.0, None, None)
    assert tables(seen[5]) == {
        "person": (sorted([d0, (1, "a@x", "c", 5.0, None, None)]), [a1]),
        "seat": ([("r1", 1, "d")], []),
    }
    assert seen[6].tables["person"].inserts[0].email == "e@x"
    assert seen[0].tables["person"].inserts[0]._fields[:2] == ("id", "email")
    assert seen[0].reducer == "add" and seen[0].args[0] == "a@x"


def test_listener_offsets_are_dense_across_many_commits(db: Database) -> None:
    seen: list[int] = []
    db.add_listener(lambda cs: seen.append(cs.offset))
    start = db.offset
    db.execute("add", {"email": "dup@x"})
    for i in range(60):
        if i % 3 == 0:
            with pytest.raises(ConstraintViolation):
                db.execute("add", {"email": "dup@x"})
        elif i % 3 == 1:
            with pytest.raises(ReducerError):
                db.execute("program", {"steps": [["ins", {"email": f"f{i}@x"}], ["fail"]]})
        else:
            db.execute("add", {"email": f"u{i}@x"})
    assert seen == list(range(start + 1, db.offset + 1))
    assert db.offset == start + 21
    with db.snapshot() as s:
        assert sorted(r.id for r in s.table("person").rows()) == list(range(1, 22))
