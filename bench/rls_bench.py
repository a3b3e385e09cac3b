"""Benchmark of subscription updates under row-level security (``core/rls.py``).

    .venv/bin/python bench/rls_bench.py [--quick] [--check] [-v] [--keep-gc] [--profile]

Setup, for N calls (10^4 and 10^5; ``--quick``: 10^4): every call has two transcript lines
and one grant to one of 1,000 identities that own the calls (the private grants table is
indexed by grantee, as a deployment would: without it every subscribe scans the whole
table); 100 subscribers, each with an identity of its own, are granted one call each and
subscribe to::

    SELECT * FROM transcripts WHERE call_id = $1        -- $1: the call granted to them

Three configurations hold identical data in three databases and receive the same commits:

* ``base``: the subscriptions run as the system (``sender=None``): no policy in the plan;
* ``rls``: each subscription runs as its subscriber, under the read policy
  ``call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)`` (a semi-join with the
  private grants table, per subscriber: the shape of the voice module's call-scoped
  policies, consent/tables.py);
* ``rls2``: the same under ``call_id IN (SELECT id FROM calls WHERE owner = :sender) OR
  call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)`` (two semi-joins and a
  distinct union: owner-or-grant).

The stream: each commit inserts one transcript line into the call of a random subscriber,
so every commit changes exactly one subscription's result (checked: one delta with one
insert per commit, in every configuration). Commits are timed one by one around
``db.execute`` (the commit plus the synchronous DBSP propagation to the subscription hooks),
rotating the configurations commit by commit so machine drift hits all of them alike; the
time inside the subscription listener alone is reported too. After a warm-up that fills the
MVCC history window, figures are p50/p99/mean per configuration and the ratios rls/base
(target: at most 2x). Informational: revoke/re-grant commits under RLS (the grants side of
the semi-join), subscribe times, and the same query run ad hoc (``run_query``). At the end
every subscription's rows must equal a fresh ``run_query`` as its subscriber, and the RLS
results must equal the baseline's.

``--profile`` (or a missed target) profiles a block of commits per configuration with
cProfile and logs where the time goes (stderr; the top entries also go into the report).
The store is memory-only (``StoreConfig()``). Unless ``--keep-gc`` is given, the cyclic
garbage collector is frozen and disabled while measuring. Progress goes to stderr; stdout
gets a table and, as its last line, one line of JSON with every figure and its target.
"""

from __future__ import annotations

import cProfile
import io
import logging
import pstats
import random
import sys
import time
from collections import Counter
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
    gc_paused,
    load_average,
    percentile,
    phase,
    settle,
    setup_logging,
)
from core import Changeset, Database, Identity, Module, ReducerContext, StoreConfig, column, index
from core.module import read_policy
from core.sql.query import run_query
from core.subscriptions import Delta, Subscription, SubscriptionManager

log = logging.getLogger("voicehub.bench")

SQL = "SELECT * FROM transcripts WHERE call_id = $1"
GRANT_POLICY = "call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)"
OWNER_OR_GRANT_POLICY = (
    "call_id IN (SELECT id FROM calls WHERE owner = :sender)"
    " OR call_id IN (SELECT call_id FROM grants WHERE grantee = :sender)"
)
OWNERS = 1_000
SUBSCRIBERS = 100
LINES_PER_CALL = 2
BATCH = 2_000
RATIO_TARGET = 2.0


def ident(kind: int, i: int) -> str:
    """A distinct identity: ``kind`` 1 for owners, 2 for subscribers."""
    return f"{kind:02x}{i:062x}"


def make_module(policy: str) -> Module:
    mod = Module("rls_bench")

    @mod.table(primary_key="id", indexes=[index("by_owner", "owner")])
    class Calls:
        id: int
        owner: Identity

    @mod.table(
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=[read_policy("granted", policy)],
    )
    class Transcripts:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        seq: int
        speaker: str
        text: str

    @mod.table(
        primary_key=("call_id", "grantee"), indexes=[index("by_grantee", "grantee")], public=False
    )
    class Grants:
        call_id: int
        grantee: Identity

    @mod.reducer
    def load(ctx: ReducerContext, start: int, n: int, seed: int) -> None:
        rng = random.Random(seed + start)
        for c in range(start, start + n):
            ctx.db.calls.insert(id=c, owner=ident(1, c % OWNERS))
            for s in range(LINES_PER_CALL):
                ctx.db.transcripts.insert(
                    call_id=c, seq=s, speaker="agent" if s % 2 else "caller", text=f"line {s}"
                )
            ctx.db.grants.insert(call_id=c, grantee=ident(1, rng.randrange(OWNERS)))

    @mod.reducer
    def grant(ctx: ReducerContext, call_id: int, grantee: Identity) -> None:
        ctx.db.grants.insert(call_id=call_id, grantee=grantee)

    @mod.reducer
    def revoke(ctx: ReducerContext, call_id: int, grantee: Identity) -> None:
        ctx.db.grants.delete(call_id, grantee)

    @mod.reducer
    def add_line(ctx: ReducerContext, call_id: int, seq: int, text: str) -> None:
        ctx.db.transcripts.insert(call_id=call_id, seq=seq, speaker="caller", text=text)

    return mod


GRANT_MODULE = make_module(GRANT_POLICY)
OWNER_OR_GRANT_MODULE = make_module(OWNER_OR_GRANT_POLICY)


@dataclass(frozen=True)
class Sizes:
    ns: tuple[int, ...]
    commits: int  # timed commits per configuration
    warmup: int  # after the history window is full
    churn: int  # revoke + re-grant pairs under RLS (informational)
    queries: int  # ad-hoc run_query calls per configuration (informational)
    profile_commits: int


FULL = Sizes(
    ns=(10_000, 100_000),
    commits=20_000,
    warmup=1_000,
    churn=500,
    queries=500,
    profile_commits=5_000,
)
QUICK = Sizes(
    ns=(10_000,), commits=5_000, warmup=500, churn=200, queries=200, profile_commits=2_000
)

# ---------------------------------------------------------------- one configuration


class Config:
    """One database, its subscription manager and its 100 subscriptions."""

    def __init__(self, name: str, module: Module, restricted: bool) -> None:
        self.name = name
        self.module = module
        self.restricted = restricted
        self.db = Database.open([module], StoreConfig())
        self.mgr = SubscriptionManager(self.db)
        self.listener_times: list[float] = []
        self.inner = self.mgr._on_commit
        self.db.remove_listener(self.inner)
        self.db.add_listener(self._timed_listener)
        self.deltas: list[dict[Subscription, Delta]] = []
        self.mgr.hooks.append(lambda off, up: self.deltas.append(up))
        self.subs: list[tuple[Subscription, str | None, int]] = []
        self.subscribe_s: list[float] = []
        self.times: list[float] = []
        self.churn_times: list[float] = []
        self.query_times: list[float] = []

    def _timed_listener(self, cs: Changeset) -> None:
        t = time.perf_counter()
        self.inner(cs)
        self.listener_times.append(time.perf_counter() - t)

    def load(self, n: int, seed: int) -> None:
        prog = Progress(f"{self.name}: calls loaded", n)
        step = BATCH // (LINES_PER_CALL + 2)
        for start in range(0, n, step):
            self.db.execute("load", {"start": start, "n": min(step, n - start), "seed": seed})
            prog.tick(start + step)

    def subscribe(self, watched: list[int]) -> None:
        pc = time.perf_counter
        for i, c in enumerate(watched):
            who = ident(2, i)
            self.db.execute("grant", {"call_id": c, "grantee": who})
            sender = who if self.restricted else None
            t = pc()
            sub, rows = self.mgr.subscribe(SQL, [c], sender=sender)
            self.subscribe_s.append(pc() - t)
            if len(rows) != LINES_PER_CALL:
                raise AssertionError(f"{self.name}: call {c}: {len(rows)} initial rows")
            self.subs.append((sub, sender, c))

    def close(self) -> None:
        self.db.remove_listener(self._timed_listener)
        self.db.close(snapshot=False)


@dataclass
class Result:
    n: int
    configs: dict[str, Config] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)  # '' when correct
    profiles: dict[str, str] = field(default_factory=dict)
    result_rows: float = 0.0  # mean rows per subscription when the grants churn


Op = tuple[str, dict[str, Any]]


def line_ops(k: int, watched: list[int], rng: random.Random, seq: list[int]) -> list[Op]:
    out: list[Op] = []
    for _ in range(k):
        seq[0] += 1
        c = watched[rng.randrange(len(watched))]
        out.append(("add_line", {"call_id": c, "seq": seq[0], "text": "hello there"}))
    return out


def run_rotating(configs: list[Config], ops: list[Op], record: bool) -> None:
    """Each op as one commit in every configuration, the first one rotating per op."""
    pc = time.perf_counter
    m = len(configs)
    prog = Progress("commits", len(ops)) if record else None
    for j, (name, args) in enumerate(ops):
        for i in range(m):
            cfg = configs[(i + j) % m]
            t = pc()
            cfg.db.execute(name, args)
            dt = pc() - t
            if record:
                cfg.times.append(dt)
        if prog is not None:
            prog.tick(j + 1)


def check_deltas(cfg: Config, ops: list[Op]) -> str:
    """One delivery per commit, holding one delta with exactly the inserted line."""
    got = cfg.deltas[-len(ops) :] if ops else []
    if len(got) != len(ops):
        return f"{len(got)} deliveries for {len(ops)} commits"
    for up, (_, args) in zip(got, ops, strict=True):
        if len(up) != 1:
            return f"{len(up)} deltas in one delivery"
        ((sub, d),) = up.items()
        if sub.params != [args["call_id"]] or len(d.inserts) != 1 or d.deletes:
            return f"unexpected delta {d!r} for {sub!r}"
    return ""


def check_rows(res: Result) -> None:
    """Subscriptions vs fresh queries as their subscribers; RLS results vs the baseline's."""
    base = res.configs["base"]
    for name, cfg in res.configs.items():
        bad = ""
        for (sub, sender, c), (bsub, _, bc) in zip(cfg.subs, base.subs, strict=True):
            rows = Counter(sub.rows())
            fresh = Counter(run_query(cfg.db, SQL, [c], sender=sender).rows)
            if rows != fresh:
                bad = f"call {c}: subscription {len(rows)} rows, fresh query {len(fresh)}"
                break
            if bc != c or rows != Counter(bsub.rows()):
                bad = f"call {c}: differs from the baseline"
                break
        if not bad and cfg.restricted:  # RLS is really on: an ungranted call is empty
            sender, c = cfg.subs[0][1], cfg.subs[1][2]
            if run_query(cfg.db, SQL, [c], sender=sender).rows:
                bad = f"subscriber 0 reads call {c}, which it was not granted"
        res.checks[name] = bad
        if bad:
            log.error("  %s: %s", name, bad)


def profile_block(cfg: Config, ops: list[Op], top: int = 18) -> str:
    """cProfile over ``ops`` committed into ``cfg`` alone; the top entries by own time."""
    prof = cProfile.Profile()
    execute = cfg.db.execute
    prof.enable()
    for name, args in ops:
        execute(name, args)
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def adhoc(cfg: Config, k: int) -> None:
    """The subscription's query run once, ad hoc, as its subscriber (lowering included)."""
    pc = time.perf_counter
    for j in range(k):
        _, sender, c = cfg.subs[j % len(cfg.subs)]
        t = pc()
        run_query(cfg.db, SQL, [c], sender=sender)
        cfg.query_times.append(pc() - t)


def churn(cfg: Config, k: int) -> None:
    """Revoke and re-grant subscribers' calls: deletes, then inserts, of whole results."""
    pc = time.perf_counter
    for j in range(k):
        _, sender, c = cfg.subs[j % len(cfg.subs)]
        assert sender is not None
        for reducer in ("revoke", "grant"):
            t = pc()
            cfg.db.execute(reducer, {"call_id": c, "grantee": sender})
            cfg.churn_times.append(pc() - t)
    cfg.deltas.clear()


def run_n(n: int, s: Sizes, keep_gc: bool, profile: bool) -> Result:
    settle()
    res = Result(n)
    specs: list[tuple[str, Module, bool]] = [
        ("base", GRANT_MODULE, False),
        ("rls", GRANT_MODULE, True),
        ("rls2", OWNER_OR_GRANT_MODULE, True),
    ]
    rng = random.Random(n)
    watched = rng.sample(range(n), SUBSCRIBERS)
    for name, module, restricted in specs:
        with phase(f"N={n:,} {name}: load {n:,} calls, {n * LINES_PER_CALL:,} lines, grants"):
            cfg = Config(name, module, restricted)
            cfg.load(n, seed=n)
        with phase(f"N={n:,} {name}: {SUBSCRIBERS} grants + subscriptions"):
            cfg.subscribe(watched)
        res.configs[name] = cfg
    configs = list(res.configs.values())
    seq = [LINES_PER_CALL]
    with gc_paused(not keep_gc):
        hist = configs[0].db.config.history_commits
        with phase(f"N={n:,}: warm-up, {hist + s.warmup:,} commits per configuration"):
            run_rotating(configs, line_ops(hist + s.warmup, watched, rng, seq), record=False)
        for cfg in configs:
            cfg.listener_times.clear()
            cfg.deltas.clear()
        ops = line_ops(s.commits, watched, rng, seq)
        with phase(f"N={n:,}: {s.commits:,} timed commits per configuration, rotating"):
            run_rotating(configs, ops, record=True)
        for cfg in configs:
            bad = check_deltas(cfg, ops)
            if bad:
                log.error("  %s: %s", cfg.name, bad)
            res.checks[f"{cfg.name}_deltas"] = bad
        with phase(f"N={n:,}: correctness (subscriptions vs fresh queries vs baseline)"):
            check_rows(res)
        with phase(f"N={n:,}: {s.queries} ad-hoc run_query per configuration"):
            for cfg in configs:
                adhoc(cfg, s.queries)
        subs = res.configs["rls"].subs
        res.result_rows = sum(len(sub.rows()) for sub, _, _ in subs) / len(subs)
        for name in ("rls", "rls2"):
            with phase(f"N={n:,} {name}: {s.churn} revoke + re-grant pairs"):
                churn(res.configs[name], s.churn)
        ratio = median_of(res.configs["rls"].times) / median_of(res.configs["base"].times)
        if profile or ratio > RATIO_TARGET:
            for cfg in configs:
                with phase(f"N={n:,} {cfg.name}: cProfile over {s.profile_commits:,} commits"):
                    text = profile_block(cfg, line_ops(s.profile_commits, watched, rng, seq))
                    res.profiles[cfg.name] = text
                    log.info("profile of %s (N=%s), by own time:\n%s", cfg.name, f"{n:,}", text)
    return res


def median_of(values: list[float]) -> float:
    return percentile(values, 50.0)


def us(values: list[float], p: float = 50.0) -> float:
    return percentile(values, p) * 1e6


def mean_us(values: list[float]) -> float:
    return sum(values) / max(1, len(values)) * 1e6


def top_entries(profile_text: str, k: int = 6) -> list[str]:
    """The first ``k`` rows of a pstats table: 'tottime function' strings."""
    rows = []
    started = False
    for line in profile_text.splitlines():
        if line.strip().startswith("ncalls"):
            started = True
            continue
        if started and line.strip():
            parts = line.split(None, 5)
            if len(parts) == 6:
                rows.append(f"{parts[1]}s {parts[5]}")
        if len(rows) >= k:
            break
    return rows


def report_n(rep: Report, res: Result) -> None:
    lab = f"n{count_label(res.n)}"
    sec = f"N={res.n:,} calls: one transcript insert per commit, {SUBSCRIBERS} subscribers"
    base = res.configs["base"]
    for name, cfg in res.configs.items():
        rep.add(sec, f"{lab}_{name}_commit_p50_us", us(cfg.times), "µs")
        rep.add(sec, f"{lab}_{name}_commit_p99_us", us(cfg.times, 99), "µs")
        rep.add(sec, f"{lab}_{name}_commit_mean_us", mean_us(cfg.times), "µs")
        rep.add(
            sec,
            f"{lab}_{name}_listener_p50_us",
            us(cfg.listener_times),
            "µs",
            note="inside the subscription listener (DBSP step + hooks)",
        )
    for name, what in (("rls", "grants semi-join"), ("rls2", "owner OR grant")):
        cfg = res.configs[name]
        target = f"<= {RATIO_TARGET:g}" if name == "rls" else None
        rep.add(
            sec,
            f"{lab}_{name}_ratio_p50",
            us(cfg.times) / us(base.times),
            "x",
            target,
            note=f"{what}: commit p50 / baseline p50",
        )
        rep.add(sec, f"{lab}_{name}_ratio_p99", us(cfg.times, 99) / us(base.times, 99), "x")
        rep.add(
            sec,
            f"{lab}_{name}_ratio_mean",
            mean_us(cfg.times) / mean_us(base.times),
            "x",
            target,
        )
        rep.add(
            sec,
            f"{lab}_{name}_listener_ratio_p50",
            us(cfg.listener_times) / us(base.listener_times),
            "x",
            note="propagation only (informational)",
        )
        rep.add(
            sec,
            f"{lab}_{name}_grant_churn_p50_us",
            us(cfg.churn_times),
            "µs",
            note=f"a revoke or re-grant: the whole result ({res.result_rows:.0f} rows on"
            " average) leaves or returns in one delta",
        )
        rep.add(sec, f"{lab}_{name}_grant_churn_p99_us", us(cfg.churn_times, 99), "µs")
    for name, cfg in res.configs.items():
        rep.add(sec, f"{lab}_{name}_subscribe_p50_us", us(cfg.subscribe_s), "µs")
    for name, cfg in res.configs.items():
        rep.add(
            sec,
            f"{lab}_{name}_run_query_p50_us",
            us(cfg.query_times),
            "µs",
            note="the same query ad hoc (lowering + policy lowering + execution)",
        )
    for key, bad in res.checks.items():
        rep.add(sec, f"{lab}_{key}_correct", int(bad == ""), "bool", "== 1", note=bad)
    for name, text in res.profiles.items():
        rep.meta[f"profile_{lab}_{name}_top"] = "; ".join(top_entries(text))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "rls bench")
    p.add_argument(
        "--keep-gc",
        action="store_true",
        help="leave the cyclic garbage collector running while measuring",
    )
    p.add_argument("--profile", action="store_true", help="cProfile a block per configuration")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    sizes = QUICK if args.quick else FULL
    rep = Report("rls", args.quick)
    env = environment(args.tmp_dir)
    for k in ("data_dir_base", "data_dir_fs"):
        env.pop(k, None)
    rep.meta.update(env)
    rep.meta["store"] = "memory-only (StoreConfig(): no log)"
    rep.meta["gc"] = "running" if args.keep_gc else "frozen + disabled while measuring"
    rep.meta["sizes"] = {
        "N": "/".join(count_label(n) for n in sizes.ns),
        "commits": sizes.commits,
        "subscribers": SUBSCRIBERS,
        "owners": OWNERS,
        "lines_per_call": LINES_PER_CALL,
    }
    rep.meta["query"] = SQL
    rep.meta["policy_rls"] = GRANT_POLICY
    rep.meta["policy_rls2"] = OWNER_OR_GRANT_POLICY
    rep.note(
        "base: subscriptions as the system (no policy in the plan); rls/rls2: as each"
        " subscriber, under the policy shown in the meta; identical data and commits in three"
        " databases, the configurations rotating commit by commit"
    )
    rep.note(
        "commit times are db.execute: the transaction, the commit and the synchronous DBSP"
        " propagation to the subscription hooks; *_listener_* is the propagation alone"
    )
    if not args.keep_gc:
        rep.note("the cyclic GC was frozen and disabled during every measurement (--keep-gc)")
    load0 = load_average()
    t0 = time.perf_counter()
    results: list[Result] = []
    try:
        for n in sizes.ns:
            res = run_n(n, sizes, args.keep_gc, args.profile)
            results.append(res)
            report_n(rep, res)
            for cfg in res.configs.values():
                cfg.close()
    finally:
        for res in results:
            for cfg in res.configs.values():
                if not cfg.db.closed:
                    cfg.close()
    rep.meta["bench_seconds"] = round(time.perf_counter() - t0, 1)
    rep.meta["load_average_1min"] = {"start": load0, "end": load_average()}
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
