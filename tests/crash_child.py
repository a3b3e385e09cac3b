"""Child process for the crash tests: commits as fast as it can until it is killed.

    python tests/crash_child.py DATA_DIR [--run N] [--tasks 8] [--snapshot-every 300]
                                [--segment-bytes B] [--keep-snapshots K] [--pause S]
                                [--slow-snapshot S]

Opens a durable ``Database`` on DATA_DIR with periodic snapshots (``StoreRuntime``), then
runs ``--tasks`` asyncio tasks that each loop ``await db.call("add", {"k": k})``. After
every acknowledged (fsynced) call it writes ``ack <offset> <id> <k>`` to stdout, where
``k = run * 10**9 + task * 10**6 + seq`` so the parent can tell which calls can exist.
Each task has at most one call in flight, so for every (run, task) the rows on disk must
be the seqs ``0..m`` with ``m`` the last acknowledged seq or one more.

``--slow-snapshot`` slows the snapshot writer down (it sleeps after every chunk written to
the temp file and before the rename, announcing ``snap-write <name>`` / ``snap-rename
<name>``), so the parent can SIGKILL the child while a snapshot is half written or fully
written but not yet renamed into place.

Every output line is one ``os.write`` to fd 1 (atomic for a pipe), so lines written by
the event loop and by the snapshot thread never interleave.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core import Database, Module, StoreConfig, column  # noqa: E402

KEY_RUN = 10**9
KEY_TASK = 10**6

mod = Module("crash")


@mod.table(primary_key="id")
class Item:
    id: int = column(auto_inc=True)
    k: int
    off: int


@mod.reducer
def add(ctx: Any, k: int) -> int:
    return ctx.db.item.insert(k=k, off=ctx.offset).id


def make_key(run: int, task: int, seq: int) -> int:
    return run * KEY_RUN + task * KEY_TASK + seq


def split_key(k: int) -> tuple[int, int, int]:
    return k // KEY_RUN, (k % KEY_RUN) // KEY_TASK, k % KEY_TASK


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def install_slow_snapshot(delay_s: float) -> None:
    """Slow ``core.snapshot.write_snapshot`` down without touching core/ (fault injection)."""
    import builtins

    import core.snapshot as snapmod

    real_open = builtins.open

    class SlowFile:
        def __init__(self, f: Any, name: str) -> None:
            self._f = f
            self._name = name

        def write(self, data: bytes) -> int:
            n = self._f.write(data)
            self._f.flush()
            emit(f"snap-write {self._name}")
            time.sleep(delay_s)
            return n

        def __getattr__(self, attr: str) -> Any:
            return getattr(self._f, attr)

        def __enter__(self) -> SlowFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

    def slow_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(".tmp-"):
            return SlowFile(f, Path(file).name)
        return f

    class SlowOs:
        def __getattr__(self, attr: str) -> Any:
            return getattr(os, attr)

        @staticmethod
        def rename(src: Any, dst: Any) -> None:
            emit(f"snap-rename {Path(src).name}")
            time.sleep(delay_s * 5)
            os.rename(src, dst)

    snapmod.open = slow_open  # type: ignore[attr-defined]
    snapmod.os = SlowOs()  # type: ignore[assignment]


async def amain(args: argparse.Namespace) -> None:
    from core.runtime import StoreRuntime

    cfg = StoreConfig(
        data_dir=Path(args.data_dir),
        durability="durable",
        snapshot_every=args.snapshot_every,
        keep_snapshots=args.keep_snapshots,
        segment_bytes=args.segment_bytes,
    )
    db = Database.open([mod], cfg)
    rt = StoreRuntime(db, snapshot_check_s=0.05)
    await rt.start()
    emit(f"ready {db.offset}")

    async def worker(task: int) -> None:
        seq = 0
        while True:
            k = make_key(args.run, task, seq)
            res = await db.call("add", {"k": k})
            emit(f"ack {res.offset} {res.value} {k}")
            seq += 1
            if args.pause:
                await asyncio.sleep(args.pause)

    await asyncio.gather(*(worker(t) for t in range(args.tasks)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--run", type=int, default=0)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--snapshot-every", type=int, default=300)
    p.add_argument("--keep-snapshots", type=int, default=2)
    p.add_argument("--segment-bytes", type=int, default=256 * 1024)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between a task's calls")
    p.add_argument("--slow-snapshot", type=float, default=0.0, metavar="SECONDS")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if args.slow_snapshot:
        install_slow_snapshot(args.slow_snapshot)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
