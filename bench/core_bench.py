"""Benchmarks of the embedded store (``core/``): commit rate, listeners, recovery, memory.

    .venv/bin/python bench/core_bench.py [--quick] [--tmp-dir DIR] [--check] [-v]
        [--only throughput|listeners|recovery|memory]

1. Commit throughput of 1-row inserts under each durability policy (``durable``,
   ``interval``, ``none``): one sequential caller (``await db.call`` in a loop, plus a plain
   ``execute`` loop under ``none``) and 16 concurrent asyncio callers; under ``durable`` also
   the commit latency (call -> durable ack) and the number of fsyncs (group commit).
2. The cost of 100 commit listeners (``none`` policy): added µs per commit, and the ratio.
3. Recovery of a snapshot of 10^6 rows plus a tail of 10^5 single-row commits in the log
   (``--quick``: 10^5 rows + 10^4 commits), split into snapshot load and log replay.
4. Memory per row of a 6-column table with a primary key and a secondary hash index,
   measured in a fresh child process (RSS delta and tracemalloc).

Every measurement uses a fresh temporary data directory (``--tmp-dir`` chooses where: put it
on the disk you want to measure; fsync on tmpfs is free). Progress goes to stderr; stdout
gets a table and, as its last line, one line of JSON with every figure and its target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core.recovery as recovery
from bench.common import (
    GcTimer,
    Progress,
    Report,
    base_parser,
    environment,
    finish,
    fresh_dir,
    median,
    percentile,
    phase,
    rss_bytes,
    settle,
    setup_logging,
)
from core import (
    Changeset,
    Database,
    Module,
    ReducerContext,
    StoreConfig,
    column,
    index,
)
from core.config import Durability

log = logging.getLogger("voicehub.bench")

# ---------------------------------------------------------------- the schema under test

mod = Module("bench")


@mod.table(primary_key="id", indexes=[index("by_k", "k")])
class Item:
    id: int = column(auto_inc=True)  # type: ignore[assignment]
    k: int
    name: str
    score: float
    flag: bool
    blob: bytes


@mod.reducer
def add(ctx: ReducerContext, k: int, name: str) -> None:
    """The 1-row commit measured for throughput."""
    ctx.db.item.insert(k=k, name=name, score=1.5, flag=True, blob=b"x")


@mod.reducer
def add_batch(ctx: ReducerContext, start: int, n: int) -> None:
    """``n`` rows with distinct values (about 45 bytes of user data each), 4 rows per ``k``."""
    insert = ctx.db.item.insert
    for i in range(start, start + n):
        insert(
            k=i // 4,
            name=f"item-{i:010d}",
            score=i * 0.25,
            flag=i % 2 == 0,
            blob=i.to_bytes(8, "little", signed=True) * 2,
        )


TABLE = "item"
BATCH = 1000

# ---------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    repeats: int
    durable_seq: int
    durable_conc: int
    interval: int
    none: int
    listeners: int
    recovery_rows: int
    recovery_tail: int
    memory_rows: int
    callers: int = 16
    warmup: int = 500


FULL = Sizes(
    repeats=3,
    durable_seq=20_000,
    durable_conc=160_000,
    interval=150_000,
    none=200_000,
    listeners=60_000,
    recovery_rows=1_000_000,
    recovery_tail=100_000,
    memory_rows=1_000_000,
)
QUICK = Sizes(
    repeats=1,
    durable_seq=5_000,
    durable_conc=64_000,
    interval=60_000,
    none=100_000,
    listeners=40_000,
    recovery_rows=100_000,
    recovery_tail=10_000,
    memory_rows=200_000,
)
FULL_RECOVERY_TARGET_S = 5.0


def open_db(data_dir: Path | None, durability: Durability) -> Database:
    return Database.open(
        [mod], StoreConfig(data_dir=data_dir, durability=durability, snapshot_every=0)
    )


def fsyncs(db: Database) -> int:
    return db._wal.fsyncs if db._wal is not None else 0


# ---------------------------------------------------------------- 1. commit throughput


@dataclass
class Run:
    commits: int
    seconds: float
    fsyncs: int
    latencies_us: list[float] = field(default_factory=list)
    gc_s: float = 0.0
    gc_max_pause_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.commits / self.seconds


async def _sequential(db: Database, n: int, lat: list[float]) -> float:
    call = db.call
    pc = time.perf_counter
    t0 = pc()
    for i in range(n):
        t = pc()
        await call("add", {"k": i, "name": "n"})
        lat.append(pc() - t)
    return pc() - t0


async def _concurrent(db: Database, n: int, callers: int, lat: list[float]) -> float:
    per = n // callers
    call = db.call
    pc = time.perf_counter

    async def caller(c: int) -> None:
        base = c * per
        for i in range(base, base + per):
            t = pc()
            await call("add", {"k": i, "name": "n"})
            lat.append(pc() - t)

    t0 = pc()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    return pc() - t0


def _execute_loop(db: Database, n: int) -> float:
    execute = db.execute
    t0 = time.perf_counter()
    for i in range(n):
        execute("add", {"k": i, "name": "n"})
    return time.perf_counter() - t0


def one_run(tmp: Path | None, policy: Durability, mode: str, n: int, sizes: Sizes) -> Run:
    """A fresh store; warm up; then ``n`` 1-row commits by ``mode`` (seq, conc, execute)."""
    settle()
    with fresh_dir(tmp, f"{policy}-{mode}") as d:
        db = open_db(d, policy)
        try:
            lat: list[float] = []

            async def go() -> tuple[float, int]:
                await _sequential(db, sizes.warmup, [])
                before = fsyncs(db)
                if mode == "seq":
                    secs = await _sequential(db, n, lat)
                elif mode == "conc":
                    secs = await _concurrent(db, n, sizes.callers, lat)
                else:
                    secs = _execute_loop(db, n)
                return secs, fsyncs(db) - before

            with GcTimer() as gct:
                secs, nsync = asyncio.run(go())
            done = n if mode != "conc" else (n // sizes.callers) * sizes.callers
            return Run(done, secs, nsync, [x * 1e6 for x in lat], gct.seconds, gct.max_pause)
        finally:
            db.close(snapshot=False)


def measure(
    tmp: Path | None, policy: Durability, mode: str, n: int, sizes: Sizes, label: str
) -> Run:
    runs = []
    for r in range(sizes.repeats):
        run = one_run(tmp, policy, mode, n, sizes)
        log.info(
            "  %s run %d/%d: %s commits in %.2f s = %s commits/s, %s fsyncs,"
            " GC %.0f ms (longest pause %.0f ms)",
            label,
            r + 1,
            sizes.repeats,
            f"{run.commits:,}",
            run.seconds,
            f"{run.rate:,.0f}",
            f"{run.fsyncs:,}",
            run.gc_s * 1e3,
            run.gc_max_pause_s * 1e3,
        )
        runs.append(run)
    runs.sort(key=lambda x: x.rate)
    return runs[len(runs) // 2]  # the median run: its rate, latencies and fsyncs together


def bench_throughput(rep: Report, tmp: Path | None, s: Sizes) -> None:
    sec = "1. commit throughput (1-row inserts)"
    c = s.callers
    with phase(f"durable: sequential await db.call x {s.durable_seq:,}"):
        r = measure(tmp, "durable", "seq", s.durable_seq, s, "durable seq")
    rep.add(sec, "durable_seq_commits_per_s", r.rate, "commits/s")
    rep.add(sec, "durable_seq_p50_latency_us", percentile(r.latencies_us, 50), "µs")
    rep.add(sec, "durable_seq_p99_latency_us", percentile(r.latencies_us, 99), "µs")
    rep.add(sec, "durable_seq_commits_per_fsync", r.commits / max(1, r.fsyncs), "commits")

    with phase(f"durable: {c} concurrent callers x {s.durable_conc // c:,}"):
        r = measure(tmp, "durable", "conc", s.durable_conc, s, f"durable {c}")
    rep.add(sec, f"durable_{c}_commits_per_s", r.rate, "commits/s", ">= 30000")
    rep.add(sec, f"durable_{c}_p50_latency_us", percentile(r.latencies_us, 50), "µs")
    rep.add(sec, f"durable_{c}_p99_latency_us", percentile(r.latencies_us, 99), "µs")
    rep.add(sec, f"durable_{c}_commits", r.commits, "commits")
    rep.add(sec, f"durable_{c}_fsyncs", r.fsyncs, "fsyncs")
    rep.add(sec, f"durable_{c}_commits_per_fsync", r.commits / max(1, r.fsyncs), "commits")

    with phase(f"interval: sequential await db.call x {s.interval:,}"):
        r = measure(tmp, "interval", "seq", s.interval, s, "interval seq")
    rep.add(sec, "interval_seq_commits_per_s", r.rate, "commits/s")
    rep.add(sec, "interval_seq_fsyncs", r.fsyncs, "fsyncs")
    with phase(f"interval: {c} concurrent callers x {s.interval // c:,}"):
        r = measure(tmp, "interval", "conc", s.interval, s, f"interval {c}")
    rep.add(sec, f"interval_{c}_commits_per_s", r.rate, "commits/s")

    with phase(f"none: sequential await db.call x {s.none:,}"):
        r = measure(tmp, "none", "seq", s.none, s, "none seq")
    rep.add(sec, "none_seq_commits_per_s", r.rate, "commits/s", ">= 60000")
    with phase(f"none: sequential execute x {s.none:,}"):
        r = measure(tmp, "none", "execute", s.none, s, "none execute")
    rep.add(sec, "none_execute_commits_per_s", r.rate, "commits/s", ">= 60000")
    with phase(f"none: {c} concurrent callers x {s.none // c:,}"):
        r = measure(tmp, "none", "conc", s.none, s, f"none {c}")
    rep.add(sec, f"none_{c}_commits_per_s", r.rate, "commits/s", ">= 60000")


# ---------------------------------------------------------------- 2. commit listeners


def _make_listener(seen: list[int]) -> Callable[[Changeset], None]:
    def listener(cs: Changeset) -> None:
        if TABLE not in cs.tables:
            seen[0] += 1

    return listener


def _listener_run(tmp: Path | None, n: int, listeners: int) -> float:
    settle()
    with fresh_dir(tmp, f"listeners-{listeners}") as d:
        db = open_db(d, "none")
        try:
            seen = [0]
            for _ in range(listeners):
                db.add_listener(_make_listener(seen))
            _execute_loop(db, 500)
            secs = _execute_loop(db, n)
            if seen[0]:
                raise AssertionError("a listener saw a changeset without the table")
            return n / secs
        finally:
            db.close(snapshot=False)


def bench_listeners(rep: Report, tmp: Path | None, s: Sizes) -> None:
    sec = "2. commit listeners (none policy, execute loop)"
    n = s.listeners
    base: list[float] = []
    with100: list[float] = []
    with phase(f"listeners: 0 vs 100 no-op listeners, {n:,} commits each, {s.repeats} rounds"):
        for r in range(s.repeats):  # interleaved, so drift hits both sides alike
            base.append(_listener_run(tmp, n, 0))
            with100.append(_listener_run(tmp, n, 100))
            log.info(
                "  round %d/%d: %s commits/s with 0, %s with 100 listeners",
                r + 1,
                s.repeats,
                f"{base[-1]:,.0f}",
                f"{with100[-1]:,.0f}",
            )
    r0, r100 = median(base), median(with100)
    added = (1.0 / r100 - 1.0 / r0) * 1e6
    rep.add(sec, "listeners_0_commits_per_s", r0, "commits/s")
    rep.add(sec, "listeners_100_commits_per_s", r100, "commits/s")
    rep.add(sec, "listeners_100_added_us_per_commit", added, "µs")
    rep.add(sec, "listeners_100_added_ns_per_listener", added * 1000 / 100, "ns")
    rep.add(sec, "listeners_100_throughput_ratio", r100 / r0, "x of 0 listeners")


# ---------------------------------------------------------------- 3. recovery


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.exists() else 0


@contextlib.contextmanager
def _timed_snapshot_load() -> Iterator[list[float]]:
    """Time recovery's snapshot step (read, verify, decode, index build) inside the open.

    Wraps ``core.recovery._choose_snapshot`` for the duration (instrumentation only); if
    that private name ever goes away the split is reported as unavailable.
    """
    spent: list[float] = []
    orig = getattr(recovery, "_choose_snapshot", None)
    if orig is None:
        yield spent
        return

    def timed(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)

    setattr(recovery, "_choose_snapshot", timed)  # noqa: B010
    try:
        yield spent
    finally:
        setattr(recovery, "_choose_snapshot", orig)  # noqa: B010


def _build_recovery_dir(d: Path, rows: int, tail: int) -> dict[str, Any]:
    """Snapshot of ``rows`` rows, then ``tail`` single-row commits in the log; closed."""
    db = open_db(d, "interval")
    try:
        with phase(f"recovery build: {rows:,} rows in commits of {BATCH:,} (interval)"):
            prog = Progress("rows inserted", rows)
            for start in range(0, rows, BATCH):
                db.execute("add_batch", {"start": start, "n": min(BATCH, rows - start)})
                prog.tick(start + BATCH)
        with phase("recovery build: take_snapshot()"):
            t0 = time.perf_counter()
            snap = db.take_snapshot()
            snap_write_s = time.perf_counter() - t0
        assert snap is not None
        with phase(f"recovery build: {tail:,} single-row commits (interval)"):
            prog = Progress("tail commits", tail)
            for i in range(tail):
                db.execute("add", {"k": -i, "name": "tail"})
                if i % 4096 == 0:
                    prog.tick(i)
        return {
            "snapshot": snap,
            "snapshot_write_s": snap_write_s,
            "wal_written": db._wal.bytes_written if db._wal is not None else 0,
            "rows": len(db.stores[TABLE]),
            "offset": db.offset,
        }
    finally:
        db.close(snapshot=False)


def bench_recovery(rep: Report, tmp: Path | None, s: Sizes, quick: bool) -> None:
    sec = "3. recovery (snapshot + log tail)"
    rows, tail = s.recovery_rows, s.recovery_tail
    scale = rows / FULL.recovery_rows
    target = f"<= {FULL_RECOVERY_TARGET_S * scale:g}"
    note = ""
    if quick:
        note = f"quick: {rows:,} rows + {tail:,} commits (1/{1 / scale:g} scale, target scaled)"
        rep.note(
            f"recovery was measured at 1/{1 / scale:g} scale ({rows:,} snapshot rows +"
            f" {tail:,} log commits); the {FULL_RECOVERY_TARGET_S:g} s target is for"
            f" {FULL.recovery_rows:,} + {FULL.recovery_tail:,} and is scaled linearly here"
        )
    settle()
    with fresh_dir(tmp, "recovery") as d:
        built = _build_recovery_dir(d, rows, tail)
        wal_files = _dir_bytes(d / "wal")
        snap_size = built["snapshot"].stat().st_size
        settle()
        with (
            phase("recovery: Database.open (snapshot load + log replay)"),
            _timed_snapshot_load() as snap_times,
            GcTimer() as gct,
        ):
            t0 = time.perf_counter()
            db = open_db(d, "durable")
            open_s = time.perf_counter() - t0
        try:
            st = db.recovered
            assert st is not None
            if len(db.stores[TABLE]) != built["rows"] or db.offset != built["offset"]:
                raise AssertionError(
                    f"recovered {len(db.stores[TABLE])} rows at offset {db.offset},"
                    f" expected {built['rows']} at {built['offset']}"
                )
            recovered_s, replayed, loaded = st.seconds, st.replayed, st.rows_loaded
        finally:
            db.close(snapshot=False)
        del db, st
        settle()

    snap_s = sum(snap_times) if snap_times else math.nan
    replay_s = recovered_s - snap_s
    rep.add(sec, "recovery_open_s", open_s, "s", target, note)
    rep.add(sec, "recovery_recover_s", recovered_s, "s", note="db.recovered.seconds")
    rep.add(sec, "recovery_snapshot_load_s", snap_s, "s", note="read + verify + decode + index")
    rep.add(sec, "recovery_log_replay_s", replay_s, "s", note="recover_s - snapshot_load_s")
    rep.add(sec, "recovery_gc_s", gct.seconds, "s", note="cyclic GC time inside the open")
    rep.add(sec, "recovery_gc_full_collections", gct.collections[2], "collections")
    rep.add(sec, "recovery_rows_loaded", loaded, "rows")
    rep.add(sec, "recovery_commits_replayed", replayed, "commits")
    rep.add(sec, "recovery_replay_commits_per_s", replayed / replay_s, "commits/s")
    rep.add(sec, "snapshot_file_mb", snap_size / 1e6, "MB")
    rep.add(sec, "snapshot_bytes_per_row", snap_size / max(1, loaded), "B")
    rep.add(sec, "snapshot_write_s", built["snapshot_write_s"], "s")
    rep.add(sec, "wal_written_mb", built["wal_written"] / 1e6, "MB")
    rep.add(sec, "wal_files_mb", wal_files / 1e6, "MB", note="segments are preallocated")


# ---------------------------------------------------------------- 4. memory per row


def memory_child(how: str, rows: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: bytes held per row after inserting ``rows`` rows."""
    db = open_db(None, "none")
    db.execute("add_batch", {"start": -BATCH, "n": BATCH})  # warm every code path up
    gc.collect()
    if how == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    t0 = time.perf_counter()
    for start in range(0, rows, BATCH):
        db.execute("add_batch", {"start": start, "n": min(BATCH, rows - start)})
    secs = time.perf_counter() - t0
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if how == "tracemalloc" else rss_bytes()
    if how == "tracemalloc":
        tracemalloc.stop()
    out: dict[str, Any] = {"bytes_per_row": (after - before) / rows, "insert_s": secs}
    if how == "rss":
        out["breakdown"] = _breakdown(db, rows + BATCH)
        pauses = []
        for _ in range(3):
            t0 = time.perf_counter()
            gc.collect()
            pauses.append(time.perf_counter() - t0)
        out["gc_full_pause_s"] = sorted(pauses)[1]
        out["gc_tracked_objects"] = len(gc.get_objects())
    db.close(snapshot=False)
    return out


def _breakdown(db: Database, n: int) -> dict[str, float]:
    """Where a row's bytes go, from ``sys.getsizeof`` (per row, averaged)."""
    store = db.stores[TABLE]
    heads = store.heads
    sample = list(heads.values())[:: max(1, len(heads) // 2000)]
    row_b = ver_b = val_b = 0.0
    for v in sample:
        ver_b += sys.getsizeof(v)
        row_b += sys.getsizeof(v.row)
        for x in v.row:
            if type(x) is bool or (type(x) is int and -5 <= x <= 256):
                continue
            val_b += sys.getsizeof(x)
    k = len(sample)
    ix = store.indexes["by_k"]
    ix_map: dict[Any, Any] = getattr(ix, "map", {})
    buckets = sum(sys.getsizeof(b) for b in ix_map.values() if isinstance(b, set))
    return {
        "row_tuple": row_b / k,
        "values": val_b / k,
        "version": ver_b / k,
        "pk_dict": sys.getsizeof(heads) / n,
        "index_dict": sys.getsizeof(ix_map) / n,
        "index_buckets": buckets / n,
    }


def _spawn_memory_child(how: str, rows: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", how, str(rows)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child ({how}) failed:\n{res.stderr}")
    doc: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return doc


def bench_memory(rep: Report, s: Sizes) -> None:
    sec = "4. memory per row (6 columns, primary key + hash index)"
    n = s.memory_rows
    with phase(f"memory: {n:,} rows in a fresh process, RSS delta"):
        rss = _spawn_memory_child("rss", n)
    with phase(f"memory: {n:,} rows in a fresh process, tracemalloc (slower)"):
        traced = _spawn_memory_child("tracemalloc", n)
    rep.add(sec, "memory_rows", n, "rows")
    rep.add(sec, "memory_bytes_per_row_rss", rss["bytes_per_row"], "B", "<= 1024")
    rep.add(sec, "memory_bytes_per_row_traced", traced["bytes_per_row"], "B", "<= 1024")
    rep.add(sec, "memory_insert_rows_per_s", n / rss["insert_s"], "rows/s")
    rep.add(
        sec,
        "memory_gc_full_pause_ms",
        rss["gc_full_pause_s"] * 1e3,
        "ms",
        note=f"one gc.collect() with the rows resident ({rss['gc_tracked_objects']:,} objects)",
    )
    for part, b in rss["breakdown"].items():
        rep.add(sec, f"memory_part_{part}_bytes", b, "B", note="sys.getsizeof estimate")
    rep.note(
        "memory rows hold distinct values (int k, 15-char str, float, bool, 16-byte blob)"
        " with 4 rows per secondary-index key; memory_part_* is a sys.getsizeof breakdown"
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "core bench")
    p.add_argument("--only", choices=["throughput", "listeners", "recovery", "memory"])
    p.add_argument("--memory-child", nargs=2, metavar=("HOW", "ROWS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        how, rows = args.memory_child
        print(json.dumps(memory_child(how, int(rows))))
        return 0
    setup_logging(args.verbose)
    sizes = QUICK if args.quick else FULL
    tmp: Path | None = args.tmp_dir
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    rep = Report("core", args.quick)
    rep.meta.update(environment(tmp))
    rep.meta["repeats"] = sizes.repeats
    rep.meta["sizes"] = {
        "durable_seq": sizes.durable_seq,
        "durable_concurrent": sizes.durable_conc,
        "interval": sizes.interval,
        "none": sizes.none,
        "listeners": sizes.listeners,
        "recovery_rows": sizes.recovery_rows,
        "recovery_tail": sizes.recovery_tail,
        "memory_rows": sizes.memory_rows,
        "callers": sizes.callers,
    }
    if rep.meta["data_dir_fs"] in ("tmpfs", "ramfs"):
        rep.note("the data directories are on tmpfs: fsync is free, durable figures flatter")
    if sizes.repeats > 1:
        rep.note(f"throughput figures are the median of {sizes.repeats} runs")
    log.info(
        "core bench (%s run): data dirs under %s (%s), %s CPUs",
        "quick" if args.quick else "full",
        rep.meta["data_dir_base"],
        rep.meta["data_dir_fs"],
        rep.meta["cpus"],
    )
    t0 = time.perf_counter()
    if args.only in (None, "throughput"):
        bench_throughput(rep, tmp, sizes)
    if args.only in (None, "listeners"):
        bench_listeners(rep, tmp, sizes)
    if args.only in (None, "recovery"):
        bench_recovery(rep, tmp, sizes, args.quick)
    if args.only in (None, "memory"):
        bench_memory(rep, sizes)
    rep.meta["bench_seconds"] = round(time.perf_counter() - t0, 1)
    log.info("core bench finished in %.1f s", time.perf_counter() - t0)
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
