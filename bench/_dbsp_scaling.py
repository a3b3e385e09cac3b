"""DBSP benchmark sections 2 and 3: subscriber scaling and subscribe time.

Run through ``bench/dbsp_bench.py`` (``--only fanout|subscribe``); see its docstring for
what each section measures and its targets.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._dbsp_world import (
    BATCH,
    FANOUT_SQL,
    FANOUT_TARGET,
    THREE_SQL,
    THREE_SQL_SQLITE,
    Executor,
    Op,
    Sizes,
    load_join_data,
    open_db,
    same_rows,
    sqlite_open,
    timed_execute,
    us,
)
from bench.common import (
    Report,
    gc_paused,
    median,
    phase,
    settle,
)
from core.subscriptions import Delta, Subscription, SubscriptionManager

log = logging.getLogger("voicehub.bench")

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
