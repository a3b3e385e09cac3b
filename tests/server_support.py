"""Test harness for the server: a real uvicorn on a free loopback port, real clients.

``running(...)`` starts a node in-process (uvicorn on a background task); ``spawn(...)``
starts ``voicehub serve`` as a subprocess for restart and kill -9 tests. ``Client`` is a
thin raw ``websockets`` client that decodes JSON or MessagePack frames; ``http`` is a
tiny blocking HTTP client run on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import server_app
import websockets

from voicehub.app import Node, Settings, open_node
from voicehub.auth.settings import AuthSettings
from voicehub.server import ServerConfig, bind, make_server

ROOT = Path(__file__).resolve().parent.parent
APP_FILE = Path(__file__).with_name("server_app.py")


@dataclass
class Running:
    node: Node
    port: int
    server: Any
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        """Graceful stop as on SIGTERM: drain, close sockets with 1001, snapshot."""
        if not self.task.done():
            self.server.should_exit = True
            await self.task
            await self.node.stop()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


@contextlib.asynccontextmanager
async def running(
    data_dir: Path | None,
    durability: str = "durable",
    history_commits: int = 10_000,
    auth: dict[str, Any] | None = None,
    clock: Any = None,
    modules: list[Any] | None = None,
    **cfg: Any,
) -> AsyncIterator[Running]:
    """A node on a free port; ``auth`` overrides ``AuthSettings`` fields, ``clock`` (wall
    seconds) drives token/lockout/link expiry, ``modules`` are loaded after ``server_app``."""
    settings = Settings(
        durability=durability if data_dir is not None else "none",
        history_commits=history_commits,
        simulator=False,
    )
    settings.data_dir = data_dir  # type: ignore[assignment]  # None: memory only
    node = open_node(
        settings,
        extra_modules=[server_app.app, *(modules or [])],
        cfg=ServerConfig(**cfg),
        clock=clock or time.time,
        auth=AuthSettings(data_dir=data_dir, **auth) if auth is not None else None,
    )
    async with serve_node(node) as (port, server, task):
        srv = Running(node, port, server, task)
        try:
            yield srv
        finally:
            await srv.shutdown()


@contextlib.asynccontextmanager
async def serve_node(node: Node) -> AsyncIterator[tuple[int, Any, asyncio.Task[None]]]:
    """Start ``node`` and serve it under uvicorn on a free loopback port: (port, server,
    serving task). The caller stops it (``should_exit``, then ``node.stop()``)."""
    await node.start()
    sock = bind("127.0.0.1", 0)
    server = make_server(node.app, node.hub, "warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield sock.getsockname()[1], server, task
    finally:
        sock.close()


async def eventually(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- clients


class Client:
    def __init__(self, ws: Any, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.log: list[dict[str, Any]] = []

    async def send(self, **msg: Any) -> None:
        if self.binary:
            await self.ws.send(msgspec.msgpack.encode(msg))
        else:
            await self.ws.send(json.dumps(msg))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.binary:
            assert isinstance(frame, bytes), "msgpack connections get binary frames"
            msg = msgspec.msgpack.decode(frame)
        else:
            assert isinstance(frame, str), "json connections get text frames"
            msg = json.loads(frame)
        self.log.append(msg)
        return msg

    async def expect(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.recv(timeout)
        assert msg["type"] == type_, msg
        return msg

    async def nothing(self, timeout: float = 0.2) -> None:
        with contextlib.suppress(TimeoutError):
            msg = await self.recv(timeout)
            raise AssertionError(f"unexpected message {msg}")

    async def hello(self, token: str | None = None, last_offset: int | None = None) -> dict:
        await self.send(type="hello", session_token=token, last_offset=last_offset)
        return await self.expect("session")

    async def subscribe(self, query_id: Any, sql: str, params: Any = None) -> dict:
        await self.send(type="subscribe", query_id=query_id, sql=sql, params=params)
        return await self.expect("subscribed")

    async def call(self, request_id: Any, reducer: str, args: Any = None) -> None:
        await self.send(type="call", request_id=request_id, reducer=reducer, args=args)

    async def close(self) -> None:
        await self.ws.close()


@contextlib.asynccontextmanager
async def connect(url: str, binary: bool = False, **kw: Any) -> AsyncIterator[Client]:
    protos = ["v1.msgpack"] if binary else ["v1.json"]
    async with websockets.connect(url, subprotocols=protos, compression=None, **kw) as ws:
        yield Client(ws, binary)


def _http(method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    return await asyncio.to_thread(_http, method, url, body, headers or {})


# ---------------------------------------------------------------- subprocess servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Spawned:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.log_path = data_dir.parent / f"serve-{port}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from voicehub.cli import main; main()",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--module",
                str(APP_FILE),
                "--log-level",
                "warning",
                "--no-simulator",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()}")
            with contextlib.suppress(OSError):
                status, _ = await http("GET", self.http_url + "/readyz")
                if status == 200:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"server not ready: {self.log_path.read_text()}")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        rc = await asyncio.to_thread(self.proc.wait, 20)
        self._log.close()
        return rc

    def output(self) -> str:
        return self.log_path.read_text()
