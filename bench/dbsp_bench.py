"""Benchmarks of live subscriptions (``core/dbsp``, ``core/subscriptions.py``).

    .venv/bin/python bench/dbsp_bench.py [--quick] [--check] [-v] [--keep-gc]
        [--only join|fanout|subscribe]

1. Incremental maintenance of a 2-table join + filter + GROUP BY with COUNT, SUM and MAX::

       SELECT a.team, COUNT(*), SUM(c.duration), MAX(c.duration)
       FROM calls c JOIN agents a ON c.agent_id = a.id
       WHERE c.status = 'active' GROUP BY a.team

   over N calls (N/100 agents in 10 teams), N in 10^3..10^6 (``--quick``: ..10^5). Each
   commit changes one call: an insert (active), a status flip (active <-> ended) or a
   delete, a third each, so most commits change the result. The incremental latency is
   ``db.execute`` with the subscription active minus the same kind of commit without one:
   rounds of (baseline block, subscribe, block with it, unsubscribe) and a last baseline
   block, after a warm-up that fills the store's MVCC history window; the time spent in the
   subscription listener itself is reported as a cross-check. It is compared
   with re-evaluating the query after the same write, (a) by voicehub's ad-hoc executor
   (``run_query``) and (b) by SQLite in memory (index on calls(agent_id), agents by primary
   key). At the end of each N the subscription's integrated rows must equal a fresh
   ``run_query`` and SQLite result.
2. Subscriber scaling: 10,000 subscriptions ``SELECT * FROM transcript WHERE call_id = $1``
   with distinct parameters; the cost of a commit inserting one line for one subscribed
   call with 10 subscriptions vs with 10,000 (also: with 10,000 but always hitting the same
   10, which separates per-commit work from cache misses on cold circuits, and a commit to a
   call nobody watches), and the subscribe time per subscription.
3. Subscribe time (compile + initial result) of a 3-table join (calls ⋈ agents ⋈ teams
   with filters) over 10^5 calls.

The store is memory-only (``StoreConfig()``: no log, no fsync). Unless ``--keep-gc`` is
given, the cyclic garbage collector is frozen and disabled while measuring (see the notes
in the output). Progress goes to stderr; stdout gets a table and, as its last line, one
line of JSON with every figure and its target.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Progress,
    Report,
    base_parser,
    count_label,
    environment,
    finish,
    full_gc_pause_s,
    gc_paused,
    load_average,
    median,
    percentile,
    phase,
    settle,
    setup_logging,
)
from core import Changeset, Database, Module, ReducerContext, StoreConfig, column, index
from core.subscriptions import Delta, Subscription, SubscriptionManager

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


# ---------------------------------------------------------------- 1. the join + aggregate


@dataclass
class JoinResult:
    n: int
    base: list[float] = field(default_factory=list)
    base_blocks: list[list[float]] = field(default_factory=list)
    with_sub: list[float] = field(default_factory=list)
    listener: list[float] = field(default_factory=list)
    outside: list[float] = field(default_factory=list)  # execute - listener, per commit
    changed: int = 0
    subscribe_s: float = math.nan
    exec_reeval: list[float] = field(default_factory=list)
    sqlite_reeval: list[float] = field(default_factory=list)
    sqlite_scan_reeval: list[float] = field(default_factory=list)
    sqlite_write: list[float] = field(default_factory=list)
    check_exec: str | None = None  # None: not checked; '': equal; else the difference
    check_sqlite: str | None = None
    gc_full_ms: float = math.nan
    plan: str = ""
    plan_scan: str = ""
    sqlite_applied: int = 0

    @property
    def inc_median_us(self) -> float:
        return us(self.with_sub) - us(self.base)

    @property
    def inc_p99_us(self) -> float:
        return us(self.with_sub, 99) - us(self.base, 99)


def _reeval_loop(
    what: str,
    wl: Workload,
    db: Database,
    budget_s: float,
    max_samples: int,
    write: Callable[[Op], None],
    queries: list[tuple[Callable[[], Any], list[float]]],
) -> int:
    """Per commit: apply the write (untimed here), then time each re-evaluation once.

    Stops after ``max_samples`` commits, or once ``budget_s`` is spent (at least 3).
    """
    pc = time.perf_counter
    t_end = pc() + budget_s
    prog = Progress(what, max_samples)
    done = 0
    while done < max_samples:
        op = wl.next()
        db.execute(*op)
        write(op)
        for query, out in queries:
            t = pc()
            query()
            out.append(pc() - t)
        done += 1
        prog.tick(done)
        if done >= 3 and pc() > t_end:
            break
    return done


def _reeval(
    r: JoinResult, s: Sizes, ex: Executor, db: Database, con: sqlite3.Connection, wl: Workload
) -> None:
    """Re-evaluation after each write: by run_query, then by SQLite (both plans)."""
    n = r.n
    budget, cap = s.reeval_budget_s, s.reeval_samples.get(n, 10)
    if ex.ok:
        with phase(f"join N={n:,}: re-evaluation by {ex.where} (<= {cap} samples)"):
            _reeval_loop(
                "run_query re-evaluations",
                wl,
                db,
                budget,
                cap,
                lambda op: None,
                [(lambda: ex.rows(db, JOIN_SQL, None), r.exec_reeval)],
            )
    with phase(f"join N={n:,}: re-evaluation by SQLite (<= {cap} samples)"):
        con.execute("BEGIN")
        for op in wl.log[r.sqlite_applied :]:
            sqlite_apply(con, op)
        con.execute("COMMIT")
        r.sqlite_applied = len(wl.log)
        pc = time.perf_counter

        def write(op: Op) -> None:
            t = pc()
            sqlite_apply(con, op)
            r.sqlite_write.append(pc() - t)

        done = _reeval_loop(
            "SQLite re-evaluations",
            wl,
            db,
            budget,
            cap,
            write,
            [
                (lambda: con.execute(JOIN_SQL).fetchall(), r.sqlite_reeval),
                (lambda: con.execute(JOIN_SQL_SCAN).fetchall(), r.sqlite_scan_reeval),
            ],
        )
        r.sqlite_applied += done
        assert r.sqlite_applied == len(wl.log)


def _check(
    r: JoinResult, ex: Executor, db: Database, con: sqlite3.Connection, sub: Subscription
) -> None:
    with phase(f"join N={r.n:,}: correctness (subscription rows vs fresh results)"):
        got = sub.rows()
        r.check_sqlite = same_rows(got, con.execute(JOIN_SQL).fetchall()) or same_rows(
            got, con.execute(JOIN_SQL_SCAN).fetchall()
        )
        if ex.ok:
            try:
                r.check_exec = same_rows(got, ex.rows(db, JOIN_SQL, None))
            except Exception as e:
                r.check_exec = f"run_query failed: {type(e).__name__}: {e}"
        for what, diff in (("SQLite", r.check_sqlite), ("run_query", r.check_exec)):
            if diff:
                log.error("  N=%s: subscription differs from %s: %s", r.n, what, diff)


def run_join(n: int, s: Sizes, ex: Executor, keep_gc: bool) -> JoinResult:
    """Rounds of [baseline block, subscribe, block with it, listener block, unsubscribe],
    then a last baseline block: drift of the machine hits both sides alike. The last round
    also re-evaluates (run_query, SQLite) and checks the subscription's rows."""
    r = JoinResult(n)
    settle()
    db = open_db()
    with phase(f"join N={n:,}: load {n:,} calls, {max(1, n // 100):,} agents"):
        agents = load_join_data(db, n, f"N={n:,} calls loaded")
    with phase(f"join N={n:,}: the same data in SQLite"):
        con = sqlite_open(n, agents)
        r.plan = sqlite_plan(con, JOIN_SQL)
        r.plan_scan = sqlite_plan(con, JOIN_SQL_SCAN)
    probe_executor(ex, db)
    wl = Workload(n, agents, seed=n)
    rounds = s.rounds
    k_sub = s.commits // rounds
    k_base = s.commits // (rounds + 1)
    r.gc_full_ms = full_gc_pause_s() * 1e3
    mgr = SubscriptionManager(db)
    current: list[Subscription] = []
    changed = [0]

    def hook(offset: int, updates: dict[Subscription, Delta]) -> None:
        if current and current[0] in updates:
            changed[0] += 1

    mgr.hooks.append(hook)
    subscribe_s: list[float] = []
    with gc_paused(not keep_gc):
        # until the MVCC history window (history_commits) is full, commits get slower as
        # it fills: reach that steady state before timing anything
        with phase(f"join N={n:,}: warm-up, {db.config.history_commits + s.warmup:,} commits"):
            timed_execute(db, wl.batch(db.config.history_commits + s.warmup), [])
        for rnd in range(1, rounds + 1):
            tag = f"join N={n:,} round {rnd}/{rounds}"
            with phase(f"{tag}: {k_base:,} commits without a subscription"):
                block: list[float] = []
                timed_execute(db, wl.batch(k_base), block)
                r.base_blocks.append(block)
            with phase(f"{tag}: subscribe"):
                t0 = time.perf_counter()
                sub, _ = mgr.subscribe(JOIN_SQL)
                subscribe_s.append(time.perf_counter() - t0)
                current[:] = [sub]
            timed_execute(db, wl.batch(s.warmup), [])
            with phase(f"{tag}: {k_sub:,} commits with the subscription"):
                changed[0] = 0
                timed_execute(db, wl.batch(k_sub), r.with_sub)
                r.changed += changed[0]
            with phase(f"{tag}: {k_sub // 2:,} commits timing the subscription listener"):
                tl = TimedListener(db, mgr)
                ex_times: list[float] = []
                timed_execute(db, wl.batch(k_sub // 2), ex_times)
                tl.restore()
                r.listener.extend(tl.times)
                r.outside.extend(e - t for e, t in zip(ex_times, tl.times, strict=True))
            if rnd == rounds:
                _reeval(r, s, ex, db, con, wl)
                _check(r, ex, db, con, sub)
            current.clear()
            mgr.unsubscribe(sub)
        with phase(f"join N={n:,}: {k_base:,} commits without a subscription (last block)"):
            timed_execute(db, wl.batch(s.warmup), [])
            block = []
            timed_execute(db, wl.batch(k_base), block)
            r.base_blocks.append(block)
    mgr.close()
    r.subscribe_s = median(subscribe_s)
    r.base = [x for b in r.base_blocks for x in b]
    log.info(
        "  N=%s: execute median %.1f µs without (blocks: %s) / %.1f µs with the subscription;"
        " listener %.1f µs; SQLite %.0f / %.0f µs (planner / scan), run_query %s µs",
        f"{n:,}",
        us(r.base),
        ", ".join(f"{us(b):.1f}" for b in r.base_blocks),
        us(r.with_sub),
        us(r.listener),
        us(r.sqlite_reeval),
        us(r.sqlite_scan_reeval),
        f"{us(r.exec_reeval):.0f}" if r.exec_reeval else "n/a",
    )
    con.close()
    db.close(snapshot=False)
    return r


def bench_join(rep: Report, s: Sizes, ex: Executor, keep_gc: bool) -> None:
    sec = "1. join + filter + GROUP BY (COUNT, SUM, MAX): incremental vs re-evaluation"
    results: list[JoinResult] = []
    for n in s.ns:
        r = run_join(n, s, ex, keep_gc)
        results.append(r)
        lab = f"join_n{count_label(n)}"
        rep.add(sec, f"{lab}_incremental_median_us", r.inc_median_us, "µs", f"<= {INC_TARGET_US:g}")
        rep.add(sec, f"{lab}_incremental_p99_us", r.inc_p99_us, "µs", note="p99 with - p99 without")
        rep.add(sec, f"{lab}_listener_median_us", us(r.listener), "µs", note="cross-check")
        rep.add(sec, f"{lab}_listener_p99_us", us(r.listener, 99), "µs", note="cross-check")
        rep.add(sec, f"{lab}_commit_with_sub_median_us", us(r.with_sub), "µs")
        rep.add(
            sec,
            f"{lab}_commit_outside_listener_median_us",
            us(r.outside),
            "µs",
            note="execute - listener, per commit, with the subscription (vs the baseline)",
        )
        rep.add(sec, f"{lab}_commit_baseline_median_us", us(r.base), "µs")
        rep.add(sec, f"{lab}_commit_baseline_p99_us", us(r.base, 99), "µs")
        meds = [us(b) for b in r.base_blocks]
        rep.add(
            sec,
            f"{lab}_baseline_block_spread",
            max(meds) / min(meds),
            "x",
            note="max/min of the baseline blocks' medians (machine drift during the run)",
        )
        rep.add(
            sec,
            f"{lab}_changed_fraction",
            r.changed / max(1, len(r.with_sub)),
            "of commits",
            ">= 0.5",
            note="commits that changed the subscription's result",
        )
        rep.add(sec, f"{lab}_subscribe_ms", r.subscribe_s * 1e3, "ms", note="median of rounds")
        exec_med = us(r.exec_reeval) if r.exec_reeval else math.nan
        sql_med = us(r.sqlite_reeval)
        scan_med = us(r.sqlite_scan_reeval)
        exec_note = f"{len(r.exec_reeval)} samples" if r.exec_reeval else f"unavailable: {ex.error}"
        rep.add(sec, f"{lab}_run_query_reeval_median_us", exec_med, "µs", note=exec_note)
        rep.add(
            sec,
            f"{lab}_sqlite_reeval_median_us",
            sql_med,
            "µs",
            note=f"{len(r.sqlite_reeval)} samples",
        )
        rep.add(
            sec,
            f"{lab}_sqlite_scan_reeval_median_us",
            scan_med,
            "µs",
            note="calls c NOT INDEXED (forced scan of calls)",
        )
        rep.add(sec, f"{lab}_sqlite_write_median_us", us(r.sqlite_write), "µs")
        inc = r.inc_median_us
        rep.add(sec, f"{lab}_speedup_vs_run_query", exec_med / inc, "x")
        rep.add(sec, f"{lab}_speedup_vs_sqlite", min(sql_med, scan_med) / inc, "x")
        cands = {"run_query": exec_med, "SQLite planner": sql_med, "SQLite scan": scan_med}
        which, best = min(
            ((k, v) for k, v in cands.items() if not math.isnan(v)), key=lambda kv: kv[1]
        )
        rep.add(
            sec,
            f"{lab}_speedup_vs_best_reeval",
            best / inc,
            "x",
            f">= {SPEEDUP_TARGET:g}" if n == SPEEDUP_AT else None,
            note=f"best re-evaluation: {which}",
        )
        rep.add(
            sec,
            f"{lab}_correct_vs_sqlite",
            int(r.check_sqlite == ""),
            "bool",
            "== 1",
            note=r.check_sqlite or "",
        )
        if r.check_exec is None:
            rep.add(sec, f"{lab}_correct_vs_run_query", math.nan, "bool", note="not checked")
        else:
            rep.add(
                sec,
                f"{lab}_correct_vs_run_query",
                int(r.check_exec == ""),
                "bool",
                "== 1",
                note=r.check_exec,
            )
        rep.add(sec, f"{lab}_gc_full_collect_ms", r.gc_full_ms, "ms", note="with the data loaded")
        rep.meta[f"sqlite_plan_n{count_label(n)}"] = r.plan
        rep.meta[f"sqlite_scan_plan_n{count_label(n)}"] = r.plan_scan
    lo, hi = results[0], results[-1]
    rep.add(
        sec,
        "join_flatness_ratio",
        hi.inc_median_us / lo.inc_median_us,
        "x",
        f"<= {FLAT_TARGET:g}",
        note=f"incremental median at N={hi.n:,} / at N={lo.n:,}",
    )
    if hi.n < 1_000_000:
        rep.note(f"quick run: flatness is N={hi.n:,} over N={lo.n:,} (the target is for N=10^6)")
    if not ex.ok:
        rep.note(
            f"voicehub's ad-hoc executor was not measured ({ex.error}); re-evaluation speedups"
            " are against SQLite only"
        )


# ---------------------------------------------------------------- 2. subscriber scaling


def bench_fanout(rep: Report, s: Sizes, ex: Executor, keep_gc: bool) -> None:
    sec = "2. subscriber scaling: WHERE call_id = $1, distinct parameters"
    calls, per, few, k = s.fanout_subs, s.fanout_lines_per_call, s.fanout_few, s.fanout_commits
    settle()
    db = open_db()
    with phase(f"fanout: load {calls * per:,} transcript lines ({per} for each of {calls:,})"):
        step = max(1, BATCH // per)
        for c0 in range(0, calls, step):
            db.execute("load_transcript", {"start": c0, "n": min(step, calls - c0), "per": per})
    rng = random.Random(7)
    seq = [per]

    def ops(targets: int, offset: int = 0) -> list[Op]:
        out: list[Op] = []
        for _ in range(k):
            seq[0] += 1
            cid = offset + rng.randrange(targets)
            out.append(("add_line", {"call_id": cid, "seq": seq[0], "text": "hello there"}))
        return out

    mgr = SubscriptionManager(db)
    hits = [0]

    def hook(offset: int, updates: dict[Subscription, Delta]) -> None:
        hits[0] += len(updates)

    mgr.hooks.append(hook)
    base: list[float] = []
    t_few: list[float] = []
    t_many: list[float] = []
    t_hot: list[float] = []
    t_miss: list[float] = []
    sub_times: list[float] = []
    with gc_paused(not keep_gc):
        timed_execute(db, ops(calls), [])
        with phase(f"fanout: {k:,} commits with no subscription"):
            timed_execute(db, ops(calls), base)
        subs: list[Subscription] = []
        pc = time.perf_counter

        def subscribe_range(lo: int, hi: int) -> None:
            for c in range(lo, hi):
                t = pc()
                sub, rows = mgr.subscribe(FANOUT_SQL, [c])
                sub_times.append(pc() - t)
                want = len(db.stores["transcript"].lookup("by_call", c))
                if len(rows) != want:
                    raise AssertionError(f"call {c}: {len(rows)} initial rows, expected {want}")
                subs.append(sub)

        subscribe_range(0, few)
        timed_execute(db, ops(few), [])
        hits[0] = 0
        with phase(f"fanout: {k:,} commits to one of {few} subscribed calls ({few} subs)"):
            timed_execute(db, ops(few), t_few)
        hits_few = hits[0]
        with phase(f"fanout: subscribe {calls - few:,} more"):
            t0 = pc()
            subscribe_range(few, calls)
            many_s = pc() - t0
        timed_execute(db, ops(calls), [])
        hits[0] = 0
        with phase(f"fanout: {k:,} commits to one of {calls:,} subscribed calls ({calls:,} subs)"):
            timed_execute(db, ops(calls), t_many)
        hits_many = hits[0]
        with phase(f"fanout: {k:,} commits to one of the first {few} calls ({calls:,} subs)"):
            timed_execute(db, ops(few), t_hot)
        with phase(f"fanout: {k:,} commits to calls nobody watches ({calls:,} subs)"):
            timed_execute(db, ops(calls, offset=calls), t_miss)
        with phase("fanout: correctness of a sample of subscriptions"):
            bad = ""
            store = db.stores["transcript"]
            for sub in subs[:: max(1, len(subs) // 200)]:
                cid = sub.params[0]
                want = [tuple(r) for r in store.lookup("by_call", cid)]
                bad = same_rows(sub.rows(), want)
                if not bad and ex.ok and cid % 50 == 0:
                    bad = same_rows(sub.rows(), ex.rows(db, FANOUT_SQL, [cid]))
                if bad:
                    bad = f"call {cid}: {bad}"
                    log.error("  %s", bad)
                    break
        with phase(f"fanout: unsubscribe {calls - few:,}"):
            t0 = pc()
            for sub in subs[few:]:
                mgr.unsubscribe(sub)
            unsub_s = pc() - t0
        with phase(f"fanout: {k:,} commits to one of {few} subscribed calls, again"):
            timed_execute(db, ops(few), t_few)
    mgr.close()
    db.close(snapshot=False)

    b, f, m = us(base), us(t_few), us(t_many)
    rep.add(sec, "fanout_commit_no_sub_median_us", b, "µs")
    rep.add(sec, f"fanout_commit_{few}_subs_median_us", f, "µs")
    rep.add(sec, f"fanout_commit_{calls}_subs_median_us", m, "µs")
    rep.add(
        sec,
        f"fanout_commit_{calls}_subs_hot_median_us",
        us(t_hot),
        "µs",
        note=f"{calls:,} subs, commits only to the first {few} calls (their circuits cached)",
    )
    rep.add(sec, f"fanout_commit_{few}_subs_p99_us", us(t_few, 99), "µs")
    rep.add(sec, f"fanout_commit_{calls}_subs_p99_us", us(t_many, 99), "µs")
    rep.add(
        sec,
        "fanout_commit_cost_ratio",
        m / f,
        "x",
        f"<= {FANOUT_TARGET:g}",
        note=f"commit median with {calls:,} subs / with {few}",
    )
    rep.add(sec, f"fanout_incremental_{few}_subs_median_us", f - b, "µs", note="minus no-sub")
    rep.add(sec, f"fanout_incremental_{calls}_subs_median_us", m - b, "µs", note="minus no-sub")
    rep.add(sec, "fanout_incremental_ratio", (m - b) / (f - b), "x", note="informative")
    rep.add(
        sec,
        f"fanout_commit_unwatched_{calls}_subs_median_us",
        us(t_miss),
        "µs",
        note="commit to a call no subscription watches",
    )
    rep.add(
        sec,
        "fanout_deltas_per_commit",
        (hits_few + hits_many) / (2 * k),
        "deltas",
        "== 1",
        note="hook deliveries per commit to a watched call",
    )
    rep.add(sec, "fanout_subscribe_us_per_sub", many_s / (calls - few) * 1e6, "µs", note="mean")
    rep.add(sec, "fanout_subscribe_median_us", us(sub_times), "µs")
    rep.add(sec, "fanout_subscribe_p99_us", us(sub_times, 99), "µs")
    rep.add(sec, "fanout_unsubscribe_us_per_sub", unsub_s / (calls - few) * 1e6, "µs")
    rep.add(sec, "fanout_correct", int(not bad), "bool", "== 1", note=bad)


# ---------------------------------------------------------------- 3. subscribe time


def bench_subscribe(rep: Report, s: Sizes, keep_gc: bool) -> None:
    sec = "3. subscribe (compile + initial result): 3-table join"
    n = s.subscribe_rows
    settle()
    db = open_db()
    with phase(f"subscribe: load {n:,} calls"):
        agents = load_join_data(db, n, "calls loaded")
    con = sqlite_open(n, agents)
    want = con.execute(THREE_SQL_SQLITE, ["eu"]).fetchall()
    con.close()
    mgr = SubscriptionManager(db)
    compile_s: list[float] = []
    sub_s: list[float] = []
    rows: list[tuple] = []
    pc = time.perf_counter
    with gc_paused(not keep_gc), phase(f"subscribe: {s.subscribe_runs} runs"):
        for _ in range(s.subscribe_runs):
            t = pc()
            mgr.compile(THREE_SQL, ["eu"])
            compile_s.append(pc() - t)
        for i in range(s.subscribe_runs):
            t = pc()
            sub, rows = mgr.subscribe(THREE_SQL, ["eu"])
            sub_s.append(pc() - t)
            log.info("  run %d: %.1f ms, %s rows", i + 1, sub_s[-1] * 1e3, f"{len(rows):,}")
            mgr.unsubscribe(sub)
            del sub
    bad = same_rows(rows, want)
    if bad:
        log.error("  3-table subscription differs from SQLite: %s", bad)
    mgr.close()
    db.close(snapshot=False)
    rep.add(sec, "subscribe3_median_ms", median(sub_s) * 1e3, "ms", note=f"N={n:,} calls")
    rep.add(sec, "subscribe3_max_ms", max(sub_s) * 1e3, "ms")
    rep.add(sec, "subscribe3_compile_median_ms", median(compile_s) * 1e3, "ms")
    rep.add(sec, "subscribe3_rows", len(rows), "rows")
    rep.add(
        sec,
        "subscribe3_us_per_result_row",
        (median(sub_s) - median(compile_s)) * 1e6 / max(1, len(rows)),
        "µs",
        note="(subscribe - compile) / rows",
    )
    rep.add(sec, "subscribe3_correct_vs_sqlite", int(not bad), "bool", "== 1", note=bad)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "dbsp bench")
    p.add_argument("--only", choices=["join", "fanout", "subscribe"])
    p.add_argument(
        "--keep-gc",
        action="store_true",
        help="leave the cyclic garbage collector running while measuring",
    )
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    sizes = QUICK if args.quick else FULL
    rep = Report("dbsp", args.quick)
    env = environment(args.tmp_dir)
    for k in ("data_dir_base", "data_dir_fs"):
        env.pop(k, None)
    rep.meta.update(env)
    rep.meta["store"] = "memory-only (StoreConfig(): no log)"
    rep.meta["sqlite"] = sqlite3.sqlite_version
    ex = find_executor()
    rep.meta["executor"] = ex.where if ex.fn is not None else f"unavailable: {ex.error}"
    rep.meta["gc"] = "running" if args.keep_gc else "frozen + disabled while measuring"
    rep.meta["sizes"] = {
        "N": "/".join(count_label(n) for n in sizes.ns),
        "commits": sizes.commits,
        "rounds": sizes.rounds,
        "reeval_budget_s": sizes.reeval_budget_s,
        "fanout_subs": sizes.fanout_subs,
        "fanout_commits": sizes.fanout_commits,
        "subscribe_rows": sizes.subscribe_rows,
        "subscribe_runs": sizes.subscribe_runs,
    }
    if not args.keep_gc:
        rep.note(
            "the cyclic GC was frozen (gc.freeze) and disabled during every measurement, so"
            " that a full collection (with 10^5-10^6 rows resident: the join section's"
            " *_gc_full_collect_ms) cannot land in a timed commit; --keep-gc measures with it on"
        )
    rep.note(
        "incremental = median (p99) of db.execute with the subscription minus the same of"
        " the baseline (commits without any subscription, in blocks interleaved with the"
        " subscribed rounds); *_listener_* is the time inside the subscription listener"
    )
    log.info(
        "dbsp bench (%s run), executor: %s", "quick" if args.quick else "full", rep.meta["executor"]
    )
    load0 = load_average()
    t0 = time.perf_counter()
    if args.only in (None, "join"):
        bench_join(rep, sizes, ex, args.keep_gc)
    if args.only in (None, "fanout"):
        bench_fanout(rep, sizes, ex, args.keep_gc)
    if args.only in (None, "subscribe"):
        bench_subscribe(rep, sizes, args.keep_gc)
    rep.meta["bench_seconds"] = round(time.perf_counter() - t0, 1)
    load1 = load_average()
    rep.meta["load_average_1min"] = {"start": load0, "end": load1}
    cpus = rep.meta.get("cpus") or 1
    if max(load0 or 0.0, load1 or 0.0) > 0.5 * cpus:
        rep.note(
            f"the machine was busy (1-min load average {load0} at the start, {load1} at the"
            f" end, {cpus} CPUs): absolute times are inflated; with/without differences are"
            " interleaved in rounds so drift hits both sides"
        )
    log.info("dbsp bench finished in %.1f s", time.perf_counter() - t0)
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
