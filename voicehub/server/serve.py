"""Running the app under uvicorn on one port, with a graceful shutdown.

``Server`` is a ``uvicorn.Server`` that (1) leaves signal handling to its caller (the CLI
installs handlers that set ``should_exit``; tests just set it), and (2) on shutdown first
stops accepting, then lets the hub drain - in-flight calls finish, every queue is
flushed, every socket is closed with 1001 "going away" - before uvicorn's own shutdown
(which would close WebSockets with 1012). The store is closed (with a final snapshot) by
the caller after ``serve`` returns.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from voicehub.server.hub import Hub

log = logging.getLogger("voicehub.server")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free port); raises OSError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and accepted sockets inherit it. Without it a response written in two parts
    # (headers, body) waits for the client's delayed ACK: ~40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the caller owns signals (see voicehub.cli)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        log.info("stopped accepting connections; draining")
        try:
            await self.hub.drain()
        finally:
            await super().shutdown(sockets)


def make_server(app: object, hub: Hub, log_level: str = "info") -> Server:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        lifespan="off",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        access_log=False,
        log_level=log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=max(1, round(hub.cfg.shutdown_timeout_s)),
    )
    return Server(config, hub)
