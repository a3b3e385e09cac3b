"""Test harness for provider adapters: a real node on a loopback port with the adapters
mounted by the composition root, exactly as ``voicehub serve`` mounts them.

``provider_node(data_dir, twilio=..., vonage=...)`` yields a ``ProviderNode``: the running
node, its HTTP/WS base URLs on 127.0.0.1, the adapters and the session registry. The public
URL (what providers sign and build media URLs from) is ``PUBLIC_URL``; tests sign requests
for it and send them to the loopback address, as a reverse proxy would forward them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import server_app
from server_support import serve_node

from core.sql.query import run_query
from providers.config import TwilioConfig, VonageConfig
from providers.session import SessionRegistry
from voicehub.app import MediaPlan, Node, ProviderPlan, Settings, open_node
from voicehub.server import ServerConfig

PUBLIC_URL = "https://voice.example.test"


@dataclass
class ProviderNode:
    node: Node
    port: int
    server: Any
    task: asyncio.Task[None]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def adapters(self) -> dict[str, Any]:
        assert self.node.providers is not None
        return dict(self.node.providers.adapters)

    @property
    def sessions(self) -> SessionRegistry:
        assert self.node.providers is not None
        return self.node.providers.sessions

    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        """A system query of the node's store (what the provider wrote)."""
        res = run_query(self.node.db, query, params)
        return [dict(zip(res.columns, r)) for r in res.rows]

    def audit_rows(self) -> list[dict[str, Any]]:
        """The security audit entries of refused provider requests."""
        db = self.node.db
        if db.visible_offset < db.offset:  # a refusal's audit row may still be in flight
            db.gate.wait(db.offset, timeout=10)
        return self.sql("SELECT * FROM auth_audit WHERE event = 'provider_request_refused'")

    async def shutdown(self) -> None:
        if not self.task.done():
            self.server.should_exit = True
            await self.task
            await self.node.stop()


@contextlib.asynccontextmanager
async def provider_node(
    data_dir: Path | None,
    *,
    twilio: TwilioConfig | None = None,
    vonage: VonageConfig | None = None,
    public_url: str = PUBLIC_URL,
    durability: str = "durable",
    media: MediaPlan | None = None,
    **cfg: Any,
) -> AsyncIterator[ProviderNode]:
    """``media``: the call worker (default: none, the adapters alone)."""
    settings = Settings(durability=durability if data_dir is not None else "none")
    settings.data_dir = data_dir  # type: ignore[assignment]  # None: memory only
    node = open_node(
        settings,
        extra_modules=[server_app.app],
        cfg=ServerConfig(**cfg),
        clock=time.time,
        providers=ProviderPlan(public_url, twilio, vonage),
        media=media or MediaPlan(enabled=False),
    )
    async with serve_node(node) as (port, server, task):
        srv = ProviderNode(node, port, server, task)
        try:
            yield srv
        finally:
            await srv.shutdown()
