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

import logging
import math
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._dbsp_scaling import bench_fanout, bench_subscribe
from bench._dbsp_world import (
    FLAT_TARGET,
    FULL,
    INC_TARGET_US,
    JOIN_SQL,
    JOIN_SQL_SCAN,
    QUICK,
    SPEEDUP_AT,
    SPEEDUP_TARGET,
    Executor,
    Op,
    Sizes,
    TimedListener,
    Workload,
    find_executor,
    load_join_data,
    open_db,
    probe_executor,
    same_rows,
    sqlite_apply,
    sqlite_open,
    sqlite_plan,
    timed_execute,
    us,
)
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
    phase,
    settle,
    setup_logging,
)
from core import Database
from core.subscriptions import Delta, Subscription, SubscriptionManager

log = logging.getLogger("voicehub.bench")

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
