"""Provider ingress: signed Twilio voice webhooks per second through the real HTTP server.

A ``voicehub serve`` subprocess (fresh data directory, ``durable``, Twilio credentials from
the environment, a public URL as behind a proxy) answers signed ``POST
/providers/twilio/voice`` webhooks, each for a new CallSid: signature check, one durable
``call_started`` commit (a call, two participants, an audit entry), and the
``<Connect><Stream>`` TwiML with a fresh stream token. The load generator (this process)
keeps C keep-alive HTTP/1.1 connections busy, one request in flight each, and measures the
time from sending a request to having its TwiML. Reports webhooks/s and p50/p99 latency,
sequential (C = 1) and concurrent, next to the targets (>= 500/s, p50 <= 5 ms).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._serve_process import ServeProcess
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

log = logging.getLogger("bench.provider")

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token-" + "0" * 15
PUBLIC_URL = "https://voice.bench.example"
PATH = "/providers/twilio/voice"


@dataclass(frozen=True)
class Sizes:
    seq: int
    conc: int
    connections: int
    warmup: int


FULL = Sizes(seq=2000, conc=10_000, connections=16, warmup=300)
QUICK = Sizes(seq=500, conc=2500, connections=16, warmup=100)


def start_server(data_dir: Path) -> ServeProcess:
    """``voicehub serve``, durable, with Twilio credentials as in production."""
    env = {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "VOICEHUB_PUBLIC_URL": PUBLIC_URL,
        "VOICEHUB_MEDIA": "false",  # the webhook path alone, no call worker
    }
    return ServeProcess(data_dir, "--durability", "durable", env=env)


def signed_request(port: int) -> bytes:
    """One voice webhook for a new call, signed as Twilio signs it (HMAC-SHA1 of the public
    URL followed by the sorted parameters, base64)."""
    params = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": "CA" + secrets.token_hex(16),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+14155550100",
        "FromCountry": "US",
        "FromState": "CA",
        "To": "+14155550199",
        "ToCountry": "US",
        "ToState": "CA",
    }
    data = PUBLIC_URL + PATH + "".join(k + params[k] for k in sorted(params))
    sig = base64.b64encode(hmac.new(AUTH_TOKEN.encode(), data.encode(), hashlib.sha1).digest())
    body = urllib.parse.urlencode(params).encode()
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"X-Twilio-Signature: {sig.decode()}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(r: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, await r.readexactly(length)


@dataclass
class Run:
    n: int
    seconds: float
    latencies: list[float]
    server_cpu_s: float

    @property
    def rate(self) -> float:
        return self.n / self.seconds


async def drive(server: ServeProcess, n: int, connections: int) -> Run:
    """``n`` webhooks over ``connections`` keep-alive connections, one in flight each."""
    requests = [signed_request(server.port) for _ in range(n)]
    latencies: list[float] = []
    it = iter(requests)

    async def worker() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for req in it:
                t = time.perf_counter()
                w.write(req)
                status, body = await _read_response(r)
                latencies.append(time.perf_counter() - t)
                if status != 200 or b"<Stream" not in body:
                    raise RuntimeError(f"webhook answered {status}: {body[:200]!r}")
        finally:
            w.close()

    c0, t0 = server.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return Run(n, time.perf_counter() - t0, latencies, server.cpu_seconds() - c0)


def _ms(xs: list[float], p: float) -> float:
    return percentile(xs, p) * 1000


def bench(rep: Report, tmp: Path | None, s: Sizes) -> None:
    with fresh_dir(tmp, "provider") as d:
        server = start_server(d / "data")
        try:
            with phase("starting voicehub serve with Twilio credentials"):
                server.wait_ready()
            with phase(f"warm-up: {s.warmup} webhooks"):
                asyncio.run(drive(server, s.warmup, 1))
            with phase(f"sequential: {s.seq} webhooks, one connection"):
                seq = asyncio.run(drive(server, s.seq, 1))
            with phase(f"concurrent: {s.conc} webhooks over {s.connections} connections"):
                conc = asyncio.run(drive(server, s.conc, s.connections))
        finally:
            server.stop()
    for name, run, targets in (
        ("seq", seq, (None, "<= 5")),
        (f"c{s.connections}", conc, (">= 500", None)),
    ):
        sec = (
            "sequential: one connection"
            if name == "seq"
            else f"concurrent: {s.connections} connections"
        )
        rep.add(sec, f"twilio_voice_{name}_per_s", run.rate, "webhooks/s", target=targets[0])
        rep.add(sec, f"twilio_voice_{name}_p50_ms", _ms(run.latencies, 50), "ms", targets[1])
        rep.add(sec, f"twilio_voice_{name}_p99_ms", _ms(run.latencies, 99), "ms")
        rep.add(
            sec,
            f"twilio_voice_{name}_server_cpu_us",
            run.server_cpu_s / run.n * 1e6,
            "µs/webhook",
        )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0] if __doc__ else "provider bench")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    s = QUICK if args.quick else FULL
    tmp: Path | None = args.tmp_dir
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    rep = Report("provider", args.quick)
    rep.meta.update(environment(tmp))
    rep.meta["load_average_before"] = load_average()
    rep.meta["workload"] = {
        "sequential": s.seq,
        "concurrent": s.conc,
        "connections": s.connections,
        "warmup": s.warmup,
    }
    rep.note(
        "one webhook = signature check + one durable call_started commit (call, 2"
        " participants, audit entry) + <Connect><Stream> TwiML with a fresh stream token;"
        " latency = request sent until the TwiML is read"
    )
    t0 = time.perf_counter()
    bench(rep, tmp, s)
    rep.meta["load_average_after"] = load_average()
    rep.meta["bench_seconds"] = round(time.perf_counter() - t0, 1)
    return finish(rep, args.check)


if __name__ == "__main__":
    sys.exit(main())
