"""The world of the DBSP benchmarks: schema, workloads, sizes, SQLite and the ad-hoc executor.

Shared by ``bench/dbsp_bench.py`` (the join + aggregate) and ``bench/_dbsp_scaling.py``
(subscriber scaling, subscribe time). Invariant: the same commits are applied to the
voicehub store and to the SQLite oracle, so their results can be compared row for row.
"""

from __future__ import annotations

import importlib
import logging
import math
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Progress,
    percentile,
)
from core import Changeset, Database, Module, ReducerContext, StoreConfig, column, index
from core.subscriptions import SubscriptionManager

log = logging.getLogger("voicehub.bench")

# ---------------------------------------------------------------- the schema under test

mod = Module("dbsp_bench")

TEAMS = 10
ACTIVE, ENDED = "active", "ended"
BATCH = 2000


@mod.table(name="teams", primary_key="id")
class Team:
    id: int
    name: str
    region: str


@mod.table(name="agents", primary_key="id", indexes=[index("by_team", "team_id")])
class Agent:
    id: int
    name: str
    team: str
    team_id: int


@mod.table(name="calls", primary_key="id", indexes=[index("by_agent", "agent_id")])
class Call:
    id: int
    agent_id: int
    status: str
    duration: float


@mod.table(name="transcript", primary_key="id", indexes=[index("by_call", "call_id")])
class Line:
    id: int = column(auto_inc=True)  # type: ignore[assignment]
    call_id: int
    seq: int
    speaker: str
    text: str


def team_values(t: int) -> tuple[int, str, str]:
    return t, f"team-{t:02d}", "eu" if t % 2 else "us"


def agent_values(j: int) -> tuple[int, str, str, int]:
    t = 1 + j % TEAMS
    return j, f"agent-{j:06d}", f"team-{t:02d}", t


def call_values(i: int, agents: int) -> tuple[int, int, str, float]:
    """Call ``i`` of the initial data: spread over agents, half of them active."""
    h = (i * 2654435761) & 0xFFFFFFFF
    status = ACTIVE if (h >> 7) & 1 else ENDED
    return i, 1 + h % agents, status, ((i * 48271) % 360_000) / 100.0


@mod.reducer
def load_dims(ctx: ReducerContext, agents: int) -> None:
    for t in range(1, TEAMS + 1):
        tid, name, region = team_values(t)
        ctx.db.teams.insert(id=tid, name=name, region=region)
    for j in range(1, agents + 1):
        aid, name, team, team_id = agent_values(j)
        ctx.db.agents.insert(id=aid, name=name, team=team, team_id=team_id)


@mod.reducer
def load_calls(ctx: ReducerContext, start: int, n: int, agents: int) -> None:
    insert = ctx.db.calls.insert
    for i in range(start, start + n):
        cid, agent_id, status, duration = call_values(i, agents)
        insert(id=cid, agent_id=agent_id, status=status, duration=duration)


@mod.reducer
def add_call(ctx: ReducerContext, id: int, agent_id: int, status: str, duration: float) -> None:
    ctx.db.calls.insert(id=id, agent_id=agent_id, status=status, duration=duration)


@mod.reducer
def set_status(ctx: ReducerContext, id: int, status: str) -> None:
    calls = ctx.db.calls
    calls.update(calls.get(id), status=status)


@mod.reducer
def del_call(ctx: ReducerContext, id: int) -> None:
    ctx.db.calls.delete(id)


@mod.reducer
def load_transcript(ctx: ReducerContext, start: int, n: int, per: int) -> None:
    insert = ctx.db.transcript.insert
    for c in range(start, start + n):
        for s in range(per):
            insert(call_id=c, seq=s, speaker="agent" if s % 2 else "caller", text=f"line {s}")


@mod.reducer
def add_line(ctx: ReducerContext, call_id: int, seq: int, text: str) -> None:
    ctx.db.transcript.insert(call_id=call_id, seq=seq, speaker="caller", text=text)


JOIN_SQL = (
    "SELECT a.team, COUNT(*), SUM(c.duration), MAX(c.duration)"
    " FROM calls c JOIN agents a ON c.agent_id = a.id"
    " WHERE c.status = 'active' GROUP BY a.team"
)
FANOUT_SQL = "SELECT * FROM transcript WHERE call_id = $1"
JOIN_SQL_SCAN = JOIN_SQL.replace("FROM calls c", "FROM calls c NOT INDEXED")
"""The same query with SQLite told to scan calls (its planner prefers the index on agent_id,
which is slower here): re-evaluation is measured both ways and the faster one counts."""
THREE_SQL = (
    "SELECT c.id, c.duration, a.name AS agent, t.name AS team"
    " FROM calls c JOIN agents a ON c.agent_id = a.id JOIN teams t ON a.team_id = t.id"
    " WHERE c.status = 'active' AND t.region = $1"
)
THREE_SQL_SQLITE = THREE_SQL.replace("$1", "?")

# ---------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    ns: tuple[int, ...]
    commits: int  # timed commits with the subscription; the baseline gets as many
    warmup: int
    reeval_samples: dict[int, int]  # per N, at most this many re-evaluations per engine
    reeval_budget_s: float  # ... and stop after this long (at least 3 samples)
    rounds: int  # subscribe/unsubscribe rounds per N, interleaved with baseline blocks
    fanout_subs: int
    fanout_few: int
    fanout_commits: int
    fanout_lines_per_call: int
    subscribe_rows: int
    subscribe_runs: int


FULL = Sizes(
    ns=(1_000, 10_000, 100_000, 1_000_000),
    commits=20_000,
    warmup=1_000,
    reeval_samples={1_000: 1_000, 10_000: 300, 100_000: 60, 1_000_000: 15},
    reeval_budget_s=15.0,
    rounds=3,
    fanout_subs=10_000,
    fanout_few=10,
    fanout_commits=20_000,
    fanout_lines_per_call=10,
    subscribe_rows=100_000,
    subscribe_runs=7,
)
QUICK = Sizes(
    ns=(1_000, 10_000, 100_000),
    commits=10_000,
    warmup=500,
    reeval_samples={1_000: 200, 10_000: 50, 100_000: 10},
    reeval_budget_s=2.0,
    rounds=2,
    fanout_subs=10_000,
    fanout_few=10,
    fanout_commits=10_000,
    fanout_lines_per_call=5,
    subscribe_rows=100_000,
    subscribe_runs=3,
)

INC_TARGET_US = 20.0
FLAT_TARGET = 2.0
SPEEDUP_TARGET = 1_000.0
SPEEDUP_AT = 100_000
FANOUT_TARGET = 2.0

# ---------------------------------------------------------------- helpers


def open_db() -> Database:
    return Database.open([mod], StoreConfig())


def load_join_data(db: Database, n: int, what: str) -> int:
    """``n`` calls over ``n / 100`` agents in 10 teams; returns the number of agents."""
    agents = max(1, n // 100)
    db.execute("load_dims", {"agents": agents})
    prog = Progress(what, n)
    for start in range(0, n, BATCH):
        db.execute("load_calls", {"start": start, "n": min(BATCH, n - start), "agents": agents})
        prog.tick(start + BATCH)
    return agents


def sqlite_open(n: int, agents: int) -> sqlite3.Connection:
    """The same data in SQLite (memory): agents by primary key, an index on calls(agent_id)."""
    con = sqlite3.connect(":memory:", isolation_level=None)
    con.executescript(
        "CREATE TABLE teams(id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL);"
        "CREATE TABLE agents(id INTEGER PRIMARY KEY, name TEXT NOT NULL, team TEXT NOT NULL,"
        " team_id INTEGER NOT NULL);"
        "CREATE TABLE calls(id INTEGER PRIMARY KEY, agent_id INTEGER NOT NULL,"
        " status TEXT NOT NULL, duration REAL NOT NULL);"
        "CREATE INDEX calls_agent ON calls(agent_id);"
        "CREATE INDEX agents_team ON agents(team_id);"
    )
    con.execute("BEGIN")
    con.executemany("INSERT INTO teams VALUES (?,?,?)", map(team_values, range(1, TEAMS + 1)))
    con.executemany("INSERT INTO agents VALUES (?,?,?,?)", map(agent_values, range(1, agents + 1)))
    con.executemany(
        "INSERT INTO calls VALUES (?,?,?,?)", (call_values(i, agents) for i in range(n))
    )
    con.execute("COMMIT")
    con.execute("ANALYZE")
    return con


def sqlite_plan(con: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> str:
    rows = con.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return "; ".join(str(r[-1]) for r in rows)


Op = tuple[str, dict[str, Any]]


def sqlite_apply(con: sqlite3.Connection, op: Op) -> None:
    name, a = op
    if name == "add_call":
        con.execute(
            "INSERT INTO calls VALUES (?,?,?,?)",
            (a["id"], a["agent_id"], a["status"], a["duration"]),
        )
    elif name == "set_status":
        con.execute("UPDATE calls SET status = ? WHERE id = ?", (a["status"], a["id"]))
    elif name == "del_call":
        con.execute("DELETE FROM calls WHERE id = ?", (a["id"],))
    else:
        raise ValueError(name)


class Workload:
    """Single-row commits on calls: a third inserts (active), a third status flips
    (active <-> ended), a third deletes of a random live call. Deterministic per seed."""

    def __init__(self, n: int, agents: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.agents = agents
        self.live: list[int] = list(range(n))
        self.pos: dict[int, int] = {i: i for i in range(n)}
        self.active: dict[int, bool] = {i: call_values(i, agents)[2] == ACTIVE for i in range(n)}
        self.next_id = n
        self.log: list[Op] = []  # every op handed out, in order (replayed into SQLite)

    def _remove(self, cid: int) -> None:
        i = self.pos.pop(cid)
        last = self.live.pop()
        if last != cid:
            self.live[i] = last
            self.pos[last] = i
        del self.active[cid]

    def next(self) -> Op:
        rng = self.rng
        x = rng.random()
        op: Op
        if x < 1 / 3 or len(self.live) < 2:
            cid = self.next_id
            self.next_id += 1
            self.pos[cid] = len(self.live)
            self.live.append(cid)
            self.active[cid] = True
            op = (
                "add_call",
                {
                    "id": cid,
                    "agent_id": 1 + rng.randrange(self.agents),
                    "status": ACTIVE,
                    "duration": rng.randrange(360_000) / 100.0,
                },
            )
        elif x < 2 / 3:
            cid = self.live[rng.randrange(len(self.live))]
            now = not self.active[cid]
            self.active[cid] = now
            op = ("set_status", {"id": cid, "status": ACTIVE if now else ENDED})
        else:
            cid = self.live[rng.randrange(len(self.live))]
            self._remove(cid)
            op = ("del_call", {"id": cid})
        self.log.append(op)
        return op

    def batch(self, k: int) -> list[Op]:
        return [self.next() for _ in range(k)]


def timed_execute(db: Database, ops: Iterable[Op], out: list[float]) -> None:
    """Run each op as one commit, appending its ``db.execute`` time (seconds) to ``out``."""
    execute = db.execute
    pc = time.perf_counter
    append = out.append
    for name, args in ops:
        t = pc()
        execute(name, args)
        append(pc() - t)


class TimedListener:
    """Replaces the manager's commit listener by a wrapper that times it."""

    def __init__(self, db: Database, mgr: SubscriptionManager) -> None:
        self.db = db
        self.inner = mgr._on_commit
        self.times: list[float] = []
        db.remove_listener(self.inner)
        db.add_listener(self)

    def __call__(self, cs: Changeset) -> None:
        t = time.perf_counter()
        self.inner(cs)
        self.times.append(time.perf_counter() - t)

    def restore(self) -> None:
        self.db.remove_listener(self)
        self.db.add_listener(self.inner)


def us(values: Sequence[float], p: float = 50.0) -> float:
    return percentile(values, p) * 1e6


# ---------------------------------------------------------------- the ad-hoc executor


RunQuery = Callable[[Database, str, Any], Any]


@dataclass
class Executor:
    fn: RunQuery | None
    where: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.fn is not None and not self.error

    def rows(self, db: Database, sql: str, params: Any = None) -> list[tuple]:
        assert self.fn is not None
        return result_rows(self.fn(db, sql, params))


def find_executor() -> Executor:
    """``run_query`` from core.sql.executor (or core.sql.query); a reason if unavailable."""
    reasons = []
    for name in ("core.sql.executor", "core.sql.query", "core.sql"):
        try:
            m = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                reasons.append(f"{name} does not exist")
                continue
            return Executor(None, name, f"importing {name} failed: {e!r}")
        except Exception as e:
            return Executor(None, name, f"importing {name} failed: {type(e).__name__}: {e}")
        fn = getattr(m, "run_query", None)
        if callable(fn):
            return Executor(fn, f"{name}.run_query")
        reasons.append(f"{name} has no run_query")
    return Executor(None, "", "; ".join(reasons))


def probe_executor(ex: Executor, db: Database) -> None:
    """Run the join query once; a failure marks the executor broken (with the reason)."""
    if ex.fn is None:
        return
    try:
        ex.rows(db, JOIN_SQL, None)
    except Exception as e:
        ex.error = f"{ex.where} failed on the benchmark query: {type(e).__name__}: {e}"
        log.warning("%s", ex.error)


def result_rows(res: Any) -> list[tuple]:
    """Rows out of whatever ``run_query`` returns: a list, or an object with ``.rows``."""
    rows: Any = res
    if hasattr(res, "rows"):
        rows = res.rows
        rows = rows() if callable(rows) else rows
    elif isinstance(res, tuple) and len(res) == 2 and isinstance(res[1], list):
        rows = res[1]
    elif isinstance(res, dict) and "rows" in res:
        rows = res["rows"]
    out = []
    for r in rows:
        out.append(tuple(r.values()) if isinstance(r, dict) else tuple(r))
    return out


# ---------------------------------------------------------------- result comparison


def _sort_key(row: tuple) -> tuple:
    return tuple(
        (0, 0.0, "")
        if v is None
        else (1, round(float(v), 6), "")
        if isinstance(v, int | float)
        else (2, 0.0, str(v))
        for v in row
    )


def same_rows(got: Sequence[tuple], want: Sequence[tuple]) -> str:
    """'' if equal as multisets (floats within a relative 1e-9); else the first difference."""
    if len(got) != len(want):
        return f"{len(got)} rows vs {len(want)} expected"
    for a, b in zip(sorted(got, key=_sort_key), sorted(want, key=_sort_key)):
        if len(a) != len(b):
            return f"row {a!r} vs {b!r}: widths differ"
        for x, y in zip(a, b):
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                    return f"row {a!r} vs {b!r}"
            elif x != y:
                return f"row {a!r} vs {b!r}"
    return ""
