"""Subscription update latency with and without a row-level security policy (issue 5).

    .venv/bin/python bench/rls_bench.py [--quick] [--check] [-v]

One in-memory database holds N calls, a private ``grants`` table (each of 100 agents is
granted 100 calls) and ``transcripts``, whose read policy joins the grants table::

    call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)

100 agents each subscribe to ``SELECT * FROM transcripts WHERE call_id = $1`` for one of
their calls, twice: once as themselves (the policy is folded into the circuit: a
semi-join against their grants) and once as the system (no policy: the baseline). Only
one of the two sets is live at a time; blocks of commits, each inserting one transcript
line for a random subscribed call, alternate between the two, so drift hits both. The
figure is the time of ``db.execute`` (commit + DBSP propagation + delta hooks), median
and p99, and the ratio RLS / baseline (target <= 2). At the end every RLS subscription's
rows must equal a fresh ``run_query`` as that agent.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Report,
    base_parser,
    environment,
    finish,
    load_average,
    median,
    percentile,
    setup_logging,
)
from core import Database, StoreConfig
from core.module import Module, read_policy
from core.sql.query import run_query
from core.subscriptions import Subscription, SubscriptionManager
from core.types import Identity

log = logging.getLogger("voicehub.bench")

AGENTS = 100
GRANTS_PER_AGENT = 100


def build() -> Module:
    m = Module("rlsbench")

    @m.table(primary_key="id")
    class Calls:
        id: int
        team: str

    @m.table(primary_key=("call_id", "grantee"), public=False)
    class Grants:
        call_id: int
        grantee: Identity

    @m.table(
        primary_key="id",
        policies=[
            read_policy(
                "granted", "call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)"
            )
        ],
    )
    class Transcripts:
        id: int
        call_id: int
        text: str

    @m.reducer
    def load(ctx: Any, first: int, count: int, agents: list) -> None:
        for i in range(first, first + count):
            ctx.db.calls.insert(id=i, team="t")
        for a, calls in agents:
            for c in calls:
                ctx.db.grants.insert(call_id=c, grantee=a)

    @m.reducer
    def line(ctx: Any, id: int, call_id: int, text: str) -> None:
        ctx.db.transcripts.insert(id=id, call_id=call_id, text=text)

    return m


def main(argv: list[str] | None = None) -> int:
    p = base_parser("row-level security: subscription update latency")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    n_calls = 10_000 if args.quick else 100_000
    blocks, per_block = (10, 300) if args.quick else (20, 1000)
    rep = Report("rls", args.quick)
    env = environment(None)
    for k in ("data_dir_base", "data_dir_fs"):
        env.pop(k, None)
    rep.meta.update(env)
    rep.meta["sizes"] = {"calls": n_calls, "agents": AGENTS, "commits": blocks * per_block}
    rng = random.Random(7)
    db = Database.open([build()], StoreConfig())
    agents = [f"{i:064x}" for i in range(1, AGENTS + 1)]
    grants = {a: rng.sample(range(n_calls), GRANTS_PER_AGENT) for a in agents}
    t0 = time.perf_counter()
    step = 20_000
    for first in range(0, n_calls, step):
        db.execute("load", [first, min(step, n_calls - first), []])
    db.execute("load", [n_calls, 0, [[a, c] for a, c in grants.items()]])
    log.info(
        "loaded %d calls and %d grants in %.1f s",
        n_calls,
        AGENTS * GRANTS_PER_AGENT,
        time.perf_counter() - t0,
    )
    watched = {a: grants[a][0] for a in agents}
    mgr = SubscriptionManager(db)
    rows: dict[Subscription, list[tuple]] = {}

    def hook(offset: int, updates: dict) -> None:
        for sub, d in updates.items():
            r = rows[sub]
            for x in d.deletes:
                r.remove(x)
            r.extend(d.inserts)

    mgr.hooks.append(hook)
    q = "SELECT * FROM transcripts WHERE call_id = $1"

    def subscribe(rls: bool) -> list[Subscription]:
        out = []
        for a in agents:
            sub, initial = mgr.subscribe(q, [watched[a]], sender=a if rls else None)
            rows[sub] = list(initial)
            out.append(sub)
        return out

    next_id = iter(range(1, 10**9))
    times: dict[str, list[float]] = {"rls": [], "baseline": []}
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for b in range(blocks * 2):
            kind = "rls" if b % 2 == 0 else "baseline"
            subs = subscribe(kind == "rls")
            for i in range(per_block + 50):
                a = agents[rng.randrange(AGENTS)]
                t = time.perf_counter()
                db.execute("line", [next(next_id), watched[a], "hello"])
                dt = time.perf_counter() - t
                if i >= 50:  # warm-up after (re)subscribing
                    times[kind].append(dt)
            if kind == "rls" and b == blocks * 2 - 2:
                for a, sub in zip(agents, subs, strict=True):
                    want = run_query(db, q, [watched[a]], sender=a).rows
                    assert sorted(rows[sub]) == sorted(want), "RLS subscription diverged"
            for sub in subs:
                mgr.unsubscribe(sub)
                rows.pop(sub, None)
            log.info("block %d/%d (%s) done", b + 1, blocks * 2, kind)
    finally:
        gc.enable()
    for kind in ("baseline", "rls"):
        v = times[kind]
        rep.add(kind, f"{kind}_commit_p50_us", median(v) * 1e6, "µs")
        rep.add(kind, f"{kind}_commit_p99_us", percentile(v, 99) * 1e6, "µs")
        rep.add(kind, f"{kind}_commit_mean_us", sum(v) / len(v) * 1e6, "µs")
    ratio = median(times["rls"]) / median(times["baseline"])
    rep.add("ratio", "rls_over_baseline_p50", ratio, "x", target="<= 2")
    rep.add(
        "ratio",
        "rls_over_baseline_mean",
        (sum(times["rls"]) / len(times["rls"])) / (sum(times["baseline"]) / len(times["baseline"])),
        "x",
        target="<= 2",
    )
    rep.meta["load_average_1min"] = load_average()
    rep.note(
        "each commit inserts one transcript line for a random agent's watched call: it reaches"
        " exactly one subscription through the parameter index, and with RLS that circuit"
        " also checks the line's call against the agent's grants (a semi-join on state)"
    )
    return finish(rep, args.check)


if __name__ == "__main__":
    raise SystemExit(main())
