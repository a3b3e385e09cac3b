"""The composition root: turns settings into a running node (store, modules, server).

Only this module (and the CLI above it) wires the layers together: the server's own
system module is installed first, then the user modules, and the hub and ASGI app sit on
the database.
"""

from __future__ import annotations

import logging
from typing import Any

from core import Database, StoreConfig, StoreError
from core.module import Module
from core.runtime import StoreRuntime
from modules.python_host import ModuleLoadError, load_modules
from voicehub.config import Settings
from voicehub.server import Hub, ServerConfig, ServerSystem, create_app

log = logging.getLogger("voicehub.app")

__all__ = ["Node", "Settings", "StartupError", "open_node", "server_config"]


class StartupError(Exception):
    pass


class Node:
    """One running voicehub: the database, its async runtime, the server's hub and app."""

    def __init__(self, db: Database, system: ServerSystem, cfg: ServerConfig) -> None:
        self.db = db
        self.runtime = StoreRuntime(db)
        self.hub = Hub(db, system, cfg)
        self.app: Any = create_app(self.hub)

    async def start(self) -> None:
        await self.runtime.start()
        await self.hub.start()

    async def stop(self) -> None:
        """After the server stopped: stop the shells, flush, write a final snapshot."""
        await self.hub.stop()
        await self.runtime.stop()
        self.db.close(snapshot=True)


def load_user_modules(specs: list[str]) -> list[Module]:
    mods: list[Module] = []
    for spec in specs:
        try:
            mods.extend(load_modules(spec))
        except ModuleLoadError as e:
            raise StartupError(str(e)) from None
    return mods


def server_config(settings: Settings) -> ServerConfig:
    return ServerConfig(
        idempotency_window_s=settings.idempotency_window_s,
        session_ttl_s=settings.session_ttl_s,
        send_queue_limit=settings.send_queue_limit,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )


def open_node(
    settings: Settings, extra_modules: list[Module] | None = None, cfg: ServerConfig | None = None
) -> Node:
    mods = load_user_modules(settings.modules) + list(extra_modules or [])
    store_cfg = StoreConfig(
        data_dir=settings.data_dir,
        durability=settings.durability,  # type: ignore[arg-type]
        interval_ms=settings.interval_ms,
        history_commits=settings.history_commits,
        snapshot_every=settings.snapshot_every,
    )
    system = ServerSystem()
    try:
        db = Database.open(system.modules(mods), store_cfg)
    except StoreError as e:
        raise StartupError(f"cannot open the store at {settings.data_dir}: {e}") from None
    return Node(db, system, cfg or server_config(settings))
