"""Store configuration: where data lives, how durable commits are, how much history is kept.

``durability``: ``durable`` (default; ack after fsync, group commit), ``interval`` (fsync
every ``interval_ms``; acks do not wait), ``none`` (memory only: nothing is written).
Without a data directory the default is ``none``; with one it is ``durable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Durability = Literal["durable", "interval", "none"]


@dataclass
class StoreConfig:
    data_dir: Path | None = None
    durability: Durability = None  # type: ignore[assignment]  # resolved in __post_init__
    interval_ms: int = 10
    history_commits: int = 10_000
    snapshot_every: int = 100_000
    keep_snapshots: int = 2
    segment_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.durability is None:
            self.durability = "durable" if self.data_dir is not None else "none"
        if self.durability not in ("durable", "interval", "none"):
            raise ValueError(f"unknown durability policy {self.durability!r}")
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir)
        if self.durability != "none" and self.data_dir is None:
            raise ValueError(f"durability {self.durability!r} needs a data directory")
        if self.history_commits < 0 or self.keep_snapshots < 1:
            raise ValueError("history_commits must be >= 0 and keep_snapshots >= 1")
