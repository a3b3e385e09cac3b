"""The floors under an agent action: what one round trip costs with no database at all.

``bench/e2e_bench.py`` reports these next to its figures, so a latency reads as a ratio
against the machine rather than as a bare number:

* **network floor**: the e2e workload's traffic over a bare WebSocket server (this file
  run as ``python bench/_ws_floor.py PORT``: the same uvicorn protocol, settings, event
  loop and switch interval as ``voicehub serve``, but an ASGI app that only forwards).
  100 agents and one writer connect with the SDK's WebSocket library; the writer sends a
  call-sized frame, the server answers it and sends one frame to each of 3 agents, and
  the round trip ends when the writer and all 3 agents have theirs.
* **fsync floor**: one ~300-byte ``pwrite`` + ``fdatasync`` into a preallocated file on
  the data directory's filesystem, what the write-ahead log does per durable commit when
  nothing else is in flight.

A durable sequential action cannot beat the sum of the two on this machine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._serve_process import free_port
from bench.common import REPO_ROOT

FANOUT = 3
REPLY = '{"type":"call_result","request_id":"%s","offset":123456,"value":null}'
DELTA = (
    '{"type":"tx_update","offset":123456,"updates":[{"query_id":"q1","inserts":'
    '[[123456,"agent-042","say","%s"]],"deletes":[]}]}'
)


# ---------------------------------------------------------------- the bare server


class ForwardApp:
    """ASGI: ``agent N`` registers an agent; ``i,j,k|token|call`` goes to agents i, j, k."""

    def __init__(self) -> None:
        self.agents: dict[int, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            m = await receive()
            if m["type"] != "websocket.receive":
                return
            text: str = m["text"]
            if text.startswith("agent "):
                self.agents[int(text[6:])] = send
                continue
            head, token, _call = text.split("|", 2)
            for i in head.split(","):
                await self.agents[int(i)]({"type": "websocket.send", "text": DELTA % token})
            await send({"type": "websocket.send", "text": REPLY % token})


def serve(port: int) -> None:
    import uvicorn

    from voicehub.server.loop import run_server_loop

    config = uvicorn.Config(
        ForwardApp(),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        access_log=False,
        log_level="warning",
    )
    run_server_loop(uvicorn.Server(config).serve())


# ---------------------------------------------------------------- the client side


async def _network(url: str, agents: int, warmup: int, n: int) -> list[float]:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    waiting: dict[str, list[Any]] = {}

    def arrived(token: str) -> None:
        w = waiting.get(token)
        if w is not None:
            w[0] -= 1
            if w[0] == 0:
                w[1].set_result(None)

    async def agent_loop(ws: Any) -> None:
        async for msg in ws:
            arrived(msg.rsplit('"', 4)[-4])  # the token is the last string in the row

    conns = []
    for i in range(agents):
        ws = await connect(url, max_size=None, compression=None)
        await ws.send(f"agent {i}")
        conns.append(ws)
    tasks = [asyncio.create_task(agent_loop(ws)) for ws in conns]
    writer = await connect(url, max_size=None, compression=None)
    await asyncio.sleep(0.2)
    lat: list[float] = []
    pc = time.perf_counter
    try:
        for k in range(warmup + n):
            token = f"0:{k}"
            fut = loop.create_future()
            waiting[token] = [FANOUT, fut]
            targets = ",".join(str((k * 7 + j * 31) % agents) for j in range(FANOUT))
            t0 = pc()
            await writer.send(
                f'{targets}|{token}|{{"type":"call","request_id":"r{k}",'
                f'"reducer":"act","args":[["a","b","c"],"say","{token}"]}}'
            )
            await writer.recv()
            await fut
            del waiting[token]
            if k >= warmup:
                lat.append(pc() - t0)
    finally:
        for t in tasks:
            t.cancel()
        await writer.close()
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return lat


def network_floor(agents: int, warmup: int, n: int, client_loop: str) -> list[float]:
    """Round-trip latencies (s) of the bare server, started and stopped here."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(port)],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the bare WebSocket server did not start") from None
                time.sleep(0.05)
        coro = _network(f"ws://127.0.0.1:{port}/", agents, warmup, n)
        if client_loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)
    finally:
        proc.terminate()
        proc.wait(10)


def fsync_floor(directory: Path | None, n: int) -> list[float]:
    """``pwrite`` + ``fdatasync`` latencies (s) of 300-byte records, preallocated file."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix="vh-fsync-floor-") as f:
        fd = f.fileno()
        os.posix_fallocate(fd, 0, 8 << 20)
        os.fsync(fd)
        rec = b"x" * 300
        out: list[float] = []
        pc = time.perf_counter
        for i in range(n):
            t0 = pc()
            os.pwrite(fd, rec, i * 300)
            os.fdatasync(fd)
            out.append(pc() - t0)
    return out


if __name__ == "__main__":
    serve(int(sys.argv[1]))
