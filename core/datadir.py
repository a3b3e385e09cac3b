"""The data directory's file-level rules: one process at a time, and what may be deleted.

Invariant: ``prune`` never removes a snapshot among the newest ``keep`` nor a log segment
holding a commit after the oldest kept snapshot, so recovery (and AS OF reads back to that
snapshot) always finds what it needs.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
from pathlib import Path

from core.errors import StoreError
from core.recovery import list_segments
from core.snapshot import list_snapshots

log = logging.getLogger("voicehub.store")


def lock(data_dir: Path) -> int:
    """Take the directory's exclusive lock; returns the fd that holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"data directory {data_dir} is in use by another process") from None
    return fd


def prune(data_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` snapshots and the log segments needed after the oldest."""
    snaps = list_snapshots(data_dir / "snapshots")
    for _, p in snaps[keep:]:
        p.unlink()
        log.info("old snapshot %s removed", p.name)
    kept = snaps[:keep]
    if len(kept) < keep:
        return
    oldest = kept[-1][0]
    segs = list_segments(data_dir / "wal")
    for (_, p), (nxt, _) in itertools.pairwise(segs):
        if nxt <= oldest + 1:
            p.unlink()
            log.info("log segment %s removed (covered by snapshot %d)", p.name, oldest)
