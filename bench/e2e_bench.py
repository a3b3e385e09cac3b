"""End-to-end benchmark: the reference agent workload over real WebSockets and the real SDK.

    .venv/bin/python bench/e2e_bench.py [--quick] [--writers K] [--agents N]
        [--only durable|interval] [--tmp-dir DIR] [--check] [-v]

A ``voicehub serve`` subprocess (fresh data directory, free loopback port, ``--module
bench/_e2e_module.py``) is loaded by this process, which is the load generator:

* ``N`` (100) agent connections, each a ``voicehub.client.Client`` with its own session
  and its own parameterized subscription ``SELECT * FROM actions WHERE agent = $1``;
* writers calling the reducer ``act(agents, kind, payload)``, which writes one action
  addressed to 3 random agents. It is modelled as **3 rows in one commit** (one per
  addressee) rather than one row on a column that 3 agents share: every agent keeps a
  subscription of its own (no two agents share a circuit or its delta), the commit
  reaches exactly the 3 subscriptions whose parameter it touches through the parameter
  index, and each of them gets its own ``tx_update`` frame - the costlier of the two
  models for the server.

An action's latency runs from the moment the writer sends its ``call`` until the writer
has its ``call_result`` **and** all 3 agents have the row in their caches (timed in the
SDK's callbacks, all in this process, one clock). Measured for one sequential writer
(closed loop: the next action starts when the previous one is complete) and for ``K``
concurrent writers, under ``--durability durable`` and ``interval``. Targets (issue 4):
a single sequential writer under ``durable`` at >= 5,000 actions/s with p50 <= 0.43 ms;
the reference figures are 2,326 actions/s and 0.43 ms. CPU seconds of the server and of
this process are reported per action to show where the time goes (2 CPUs: one each).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._serve_process import ServeProcess
from bench._ws_floor import fsync_floor, network_floor
from bench.common import (
    Report,
    base_parser,
    environment,
    finish,
    fresh_dir,
    load_average,
    percentile,
    phase,
    setup_logging,
)
from voicehub.client import Client
from voicehub.server.loop import uvloop_available

log = logging.getLogger("voicehub.bench")

MODULE = Path(__file__).resolve().with_name("_e2e_module.py")
SQL = "SELECT * FROM actions WHERE agent = $1"
FANOUT = 3
REF_RATE = "2,326 actions/s"
REF_P50 = "0.43 ms"


@dataclass(frozen=True)
class Sizes:
    agents: int
    writers: int
    seq_actions: int
    conc_actions: int
    warmup: int
    repeats: int
    floor_commits: int


FULL = Sizes(
    100, 8, seq_actions=5_000, conc_actions=30_000, warmup=500, repeats=3, floor_commits=5_000
)
QUICK = Sizes(
    100, 8, seq_actions=1_500, conc_actions=6_000, warmup=200, repeats=1, floor_commits=1_500
)

# ---------------------------------------------------------------- the server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def e2e_server(data_dir: Path, durability: str) -> ServeProcess:
    """``voicehub serve`` with the bench's module under ``durability``."""
    # no speech engines: they are not on this workload's path, and their model loads
    # (seconds of CPU right after readiness) would overlap the measurement
    return ServeProcess(
        data_dir, "--durability", durability, "--module", str(MODULE), "--no-speech"
    )


# ---------------------------------------------------------------- the load generator


class Waiter:
    __slots__ = ("done", "left", "t")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.left = FANOUT
        self.t = 0.0


@dataclass
class Run:
    actions: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    result_latencies: list[float] = field(default_factory=list)
    server_cpu_s: float = 0.0
    load_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.actions / self.seconds


class Load:
    def __init__(self, url: str, sizes: Sizes, encoding: str, seed: int = 7) -> None:
        self.url = url
        self.sizes = sizes
        self.encoding = encoding
        self.rng = random.Random(seed)
        self.names = [f"agent-{i:03d}" for i in range(sizes.agents)]
        self.agents: list[Client] = []
        self.writers: list[Client] = []
        self.pending: dict[str, Waiter] = {}
        self.strays = 0
        self.delivered = 0
        self.sent = 0

    def _arrived(self, row: Any) -> None:
        self.delivered += 1
        w = self.pending.get(row[3])
        if w is None:
            self.strays += 1
            return
        w.left -= 1
        if w.left == 0:
            w.t = time.perf_counter()
            w.done.set_result(None)

    async def setup(self) -> None:
        async def agent(name: str) -> Client:
            c = await Client.connect(self.url, reconnect=False, encoding=self.encoding)
            await c.subscribe(SQL, [name], key=("id",), on_insert=self._arrived)
            return c

        for i in range(0, len(self.names), 20):  # 20 handshakes at a time
            self.agents += await asyncio.gather(*(agent(n) for n in self.names[i : i + 20]))
        self.writers = list(
            await asyncio.gather(
                *(
                    Client.connect(self.url, reconnect=False, encoding=self.encoding)
                    for _ in range(self.sizes.writers)
                )
            )
        )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.agents + self.writers))

    async def action(self, w: Client, wid: int, lat: list[float], res: list[float]) -> None:
        self.sent += 1
        token = f"{wid}:{self.sent}"
        waiter = Waiter(asyncio.get_running_loop().create_future())
        self.pending[token] = waiter
        pc = time.perf_counter
        t0 = pc()
        await w.call_outcome("act", [self.rng.sample(self.names, FANOUT), "say", token])
        t1 = pc()
        if waiter.left:
            await waiter.done
        del self.pending[token]
        res.append(t1 - t0)
        lat.append(max(t1, waiter.t) - t0)

    async def run(self, server: ServeProcess, n: int, writers: int) -> Run:
        per = n // writers
        lat: list[float] = []
        res: list[float] = []

        async def writer(i: int) -> None:
            w = self.writers[i]
            for _ in range(per):
                await self.action(w, i, lat, res)

        gc.collect()
        s0, c0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(writer(i) for i in range(writers)))
        secs = time.perf_counter() - t0
        run = Run(per * writers, secs, lat, res)
        run.server_cpu_s = server.cpu_seconds() - s0
        run.load_cpu_s = time.process_time() - c0
        return run


# ---------------------------------------------------------------- one policy


def _ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1e3


def run_loop(coro: Any, client_loop: str) -> Any:
    """The load generator's event loop: uvloop (as an SDK user may choose) or asyncio."""
    if client_loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def bench_policy(
    rep: Report, tmp: Path | None, policy: str, s: Sizes, encoding: str, client_loop: str
) -> None:
    with fresh_dir(tmp, f"e2e-{policy}") as d:
        server = e2e_server(d / "data", policy)
        try:
            with phase(f"{policy}: starting voicehub serve"):
                server.wait_ready()
            runs = run_loop(_drive(server, s, policy, encoding), client_loop)
        finally:
            server.stop()
    seq, conc = runs
    durable = policy == "durable"
    sec = f"{policy}: 1 sequential writer, {s.agents} subscribed agents"
    rep.add(
        sec,
        f"{policy}_seq_actions_per_s",
        seq.rate,
        "actions/s",
        ">= 5000" if durable else None,
        reference=REF_RATE,
    )
    rep.add(
        sec,
        f"{policy}_seq_p50_ms",
        _ms(seq.latencies, 50),
        "ms",
        "<= 0.43" if durable else None,
        note="call sent -> result and all 3 deltas received",
        reference=REF_P50,
    )
    rep.add(sec, f"{policy}_seq_p99_ms", _ms(seq.latencies, 99), "ms")
    rep.add(sec, f"{policy}_seq_result_p50_ms", _ms(seq.result_latencies, 50), "ms")
    _cpu(rep, sec, f"{policy}_seq", seq)
    k = s.writers
    sec = f"{policy}: {k} concurrent writers, {s.agents} subscribed agents"
    rep.add(sec, f"{policy}_k{k}_actions_per_s", conc.rate, "actions/s", reference=REF_RATE)
    rep.add(sec, f"{policy}_k{k}_p50_ms", _ms(conc.latencies, 50), "ms", reference=REF_P50)
    rep.add(sec, f"{policy}_k{k}_p99_ms", _ms(conc.latencies, 99), "ms")
    rep.add(sec, f"{policy}_k{k}_result_p50_ms", _ms(conc.result_latencies, 50), "ms")
    _cpu(rep, sec, f"{policy}_k{k}", conc)


def _cpu(rep: Report, sec: str, prefix: str, run: Run) -> None:
    rep.add(sec, f"{prefix}_actions", run.actions, "actions")
    rep.add(sec, f"{prefix}_server_cpu_us_per_action", run.server_cpu_s / run.actions * 1e6, "µs")
    rep.add(sec, f"{prefix}_loadgen_cpu_us_per_action", run.load_cpu_s / run.actions * 1e6, "µs")


async def _drive(server: ServeProcess, s: Sizes, policy: str, encoding: str) -> tuple[Run, Run]:
    load = Load(server.ws_url, s, encoding)
    with phase(f"{policy}: {s.agents} agents connect and subscribe, {s.writers} writers connect"):
        await load.setup()
    try:
        gc.collect()
        gc.freeze()
        with phase(f"{policy}: warm-up, {s.warmup:,} actions"):
            await load.run(server, s.warmup, 1)
        seqs: list[Run] = []
        concs: list[Run] = []
        for r in range(s.repeats):  # interleaved, so drift hits both alike
            with phase(f"{policy}: 1 sequential writer x {s.seq_actions:,} actions"):
                seqs.append(await load.run(server, s.seq_actions, 1))
            _progress(policy, "seq", r, s.repeats, seqs[-1])
            k, per = s.writers, s.conc_actions // s.writers
            with phase(f"{policy}: {k} writers x {per:,} actions"):
                concs.append(await load.run(server, s.conc_actions, k))
            _progress(policy, f"k{k}", r, s.repeats, concs[-1])
        total = s.warmup + sum(x.actions for x in seqs + concs)
        cached = sum(len(next(iter(c.subscriptions.values()))) for c in load.agents)
        if load.strays or load.delivered != FANOUT * total or cached != FANOUT * total:
            raise AssertionError(
                f"{total} actions: {load.delivered} deliveries, {cached} cached rows,"
                f" {load.strays} unexpected (expected {FANOUT * total} each)"
            )
    finally:
        gc.unfreeze()
        await load.close()
    return _median(seqs), _median(concs)


def _median(runs: list[Run]) -> Run:
    """The run with the median rate (its latencies and CPU figures come with it)."""
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def _progress(policy: str, what: str, r: int, n: int, run: Run) -> None:
    log.info(
        "  %s %s run %d/%d: %s actions/s, p50 %.3f ms, p99 %.3f ms",
        policy,
        what,
        r + 1,
        n,
        f"{run.rate:,.0f}",
        _ms(run.latencies, 50),
        _ms(run.latencies, 99),
    )


# ---------------------------------------------------------------- the floor: the store alone


def bench_floor(rep: Report, tmp: Path | None, s: Sizes, client_loop: str) -> None:
    """What a durable sequential action cannot beat here: the same commit in-process
    (``await db.call``), and the network and fsync floors of ``bench/_ws_floor.py``."""
    from bench._e2e_module import e2e
    from core import Database, StoreConfig

    async def go(db: Database) -> list[float]:
        args = [["a", "b", "c"], "say", "t"]
        for _ in range(200):
            await db.call("act", args)
        lat = []
        pc = time.perf_counter
        for _ in range(s.floor_commits):
            t = pc()
            await db.call("act", args)
            lat.append(pc() - t)
        return lat

    with fresh_dir(tmp, "e2e-floor") as d, phase("floor: in-process durable commits"):
        db = Database.open([e2e], StoreConfig(data_dir=d, durability="durable", snapshot_every=0))
        try:
            lat = asyncio.run(go(db))
        finally:
            db.close(snapshot=False)
    sec = "0. floor: the same commit in-process, no network (durable)"
    rep.add(
        sec,
        "store_durable_commit_p50_ms",
        _ms(lat, 50),
        "ms",
        note="await db.call('act') -> durable ack, one caller: WAL write + fdatasync",
    )
    rep.add(sec, "store_durable_commit_p99_ms", _ms(lat, 99), "ms")
    with phase("floor: pwrite + fdatasync on the data directory's filesystem"):
        fs = fsync_floor(tmp, s.floor_commits)
    with phase("floor: the same traffic over a bare WebSocket server (no database)"):
        net = network_floor(s.agents, s.warmup, s.seq_actions, client_loop)
    rep.add(
        sec,
        "fsync_floor_p50_ms",
        _ms(fs, 50),
        "ms",
        note="one 300-byte pwrite + fdatasync, preallocated file, nothing else in flight",
    )
    rep.add(
        sec,
        "network_floor_p50_ms",
        _ms(net, 50),
        "ms",
        note="bench/_ws_floor.py: same uvicorn protocol and loop, an app that only forwards;"
        " call frame -> reply + 3 agent frames",
    )
    rep.add(sec, "network_floor_p99_ms", _ms(net, 99), "ms")
    rep.add(
        sec,
        "durable_seq_floor_p50_ms",
        _ms(fs, 50) + _ms(net, 50),
        "ms",
        note="network floor + fsync floor: no durable sequential action is faster here",
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "e2e bench")
    p.add_argument("--writers", type=int, default=None, help="concurrent writers K (8)")
    p.add_argument("--agents", type=int, default=None, help="subscribed agents (100)")
    p.add_argument("--only", choices=["durable", "interval"])
    p.add_argument("--encoding", choices=["json", "msgpack"], default="json")
    p.add_argument(
        "--client-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop" if uvloop_available() else "asyncio",
        help="the load generator's event loop (default uvloop where installed)",
    )
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    base = QUICK if args.quick else FULL
    s = dataclasses.replace(
        base, agents=args.agents or base.agents, writers=args.writers or base.writers
    )
    tmp: Path | None = args.tmp_dir
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    rep = Report("e2e", args.quick)
    rep.meta.update(environment(tmp))
    rep.meta["load_average_before"] = load_average()
    rep.meta["workload"] = {
        "agents": s.agents,
        "writers": s.writers,
        "fanout": FANOUT,
        "seq_actions": s.seq_actions,
        "concurrent_actions": s.conc_actions,
        "warmup": s.warmup,
        "repeats": s.repeats,
        "encoding": args.encoding,
        "client_loop": args.client_loop,
    }
    rep.meta["server"] = (
        "voicehub serve --durability {durable,interval} --module bench/_e2e_module.py,"
        " --no-speech, other settings at their defaults (interval 10 ms, event loop auto)"
    )
    if s.repeats > 1:
        rep.note(f"each figure comes from the median-rate run of {s.repeats}")
    rep.meta["reference"] = {"actions_per_s": 2326, "p50_ms": 0.43}
    if rep.meta["data_dir_fs"] in ("tmpfs", "ramfs"):
        rep.note("the data directories are on tmpfs: fsync is free, durable figures flatter")
    rep.note(
        "one action = one reducer call writing 3 rows (one per addressed agent) in one commit;"
        " latency = call sent until the caller has its result and all 3 agents have the row"
    )
    rep.note("server: voicehub serve subprocess; load generator: this process (one event loop)")
    t0 = time.perf_counter()
    if args.only in (None, "durable"):
        bench_floor(rep, tmp, s, args.client_loop)
    for policy in ("durable", "interval"):
        if args.only in (None, policy):
            bench_policy(rep, tmp, policy, s, args.encoding, args.client_loop)
    rep.meta["load_average_after"] = load_average()
    rep.meta["bench_seconds"] = round(time.perf_counter() - t0, 1)
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
