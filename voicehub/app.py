"""The composition root: turns settings into a running node (store, modules, shells).

Only this module (and the CLI above it) wires the layers together.
"""

from __future__ import annotations

import logging

from core import Database, StoreConfig, StoreError
from core.module import Module
from core.runtime import StoreRuntime
from modules.python_host import ModuleLoadError, load_modules
from voicehub.config import Settings

log = logging.getLogger("voicehub.app")

__all__ = ["Node", "Settings", "StartupError", "open_node"]


class StartupError(Exception):
    pass


class Node:
    """One running voicehub: the database and its async runtime."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.runtime = StoreRuntime(db)

    async def start(self) -> None:
        await self.runtime.start()

    async def stop(self) -> None:
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


def open_node(settings: Settings) -> Node:
    mods = load_user_modules(settings.modules)
    cfg = StoreConfig(
        data_dir=settings.data_dir,
        durability=settings.durability,  # type: ignore[arg-type]
        interval_ms=settings.interval_ms,
        history_commits=settings.history_commits,
        snapshot_every=settings.snapshot_every,
    )
    try:
        db = Database.open(mods, cfg)
    except StoreError as e:
        raise StartupError(f"cannot open the store at {settings.data_dir}: {e}") from None
    return Node(db)
