"""Crash tests: SIGKILL a child that commits as fast as it can, reopen, check the state.

The child (``tests/crash_child.py``) prints ``ack <offset> <id> <k>`` after every
acknowledged (fsynced) commit. After each kill the parent reopens the store in-process and
checks, against every ack it has ever read and every row any earlier reopen saw:

* the store opens (only torn-tail warnings are acceptable after a kill);
* every acknowledged row is present with its id, key and commit offset;
* offsets are dense: item rows hold every offset after the install commits, in id order;
* no row exists that the log cannot justify: for each (run, task) the rows are the seqs
  ``0..m`` where ``m`` is the last acknowledged seq or one more (one call in flight per task),
  and runs appear in offset order;
* nothing seen by an earlier reopen ever disappears;
* no ``.tmp-`` snapshot is loaded or left behind.

Every restart continues appending to the same data directory. Failures print the seed;
``CRASH_SEED=<seed>`` replays the same delays and pauses (the exact kill moment still
depends on timing).
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crash_child
import pytest

from core import CorruptionError, Database, StoreConfig
from core.snapshot import SnapshotReader

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parent.parent
SEGMENT_BYTES = 64 * 1024
TASKS = 8


def run_db_check(data_dir: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from voicehub.cli import main; main()",
            "db",
            "check",
            "--data-dir",
            str(data_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


@dataclass
class Ack:
    offset: int
    id: int
    k: int


@dataclass
class KillStats:
    acks: int = 0
    tmp_left: bool = False


class CrashHarness:
    """One data directory, killed and reopened over and over."""

    def __init__(
        self,
        data_dir: Path,
        rng: random.Random,
        *,
        snapshot_every: int = 300,
        keep_snapshots: int = 2,
        slow_snapshot: float = 0.0,
    ) -> None:
        self.data_dir = data_dir
        self.rng = rng
        self.snapshot_every = snapshot_every
        self.keep_snapshots = keep_snapshots
        self.slow_snapshot = slow_snapshot
        self.run = 0
        self.acks: dict[int, Ack] = {}  # by row id
        self.acked_seq: dict[tuple[int, int], int] = {}  # (run, task) -> last acked seq
        self.known: dict[int, tuple[int, int]] = {}  # id -> (k, off), every row ever seen
        self.base: int | None = None  # offset of the last commit before the first item
        self.last_offset = 0
        self.log: list[str] = []

    # ------------------------------------------------------------------ child

    def _spawn(self, pause: float) -> tuple[subprocess.Popen[bytes], queue.Queue[str | None]]:
        args = [
            sys.executable,
            str(CHILD),
            str(self.data_dir),
            "--run",
            str(self.run),
            "--tasks",
            str(TASKS),
            "--snapshot-every",
            str(self.snapshot_every),
            "--keep-snapshots",
            str(self.keep_snapshots),
            "--segment-bytes",
            str(SEGMENT_BYTES),
            "--pause",
            str(pause),
        ]
        if self.slow_snapshot:
            args += ["--slow-snapshot", str(self.slow_snapshot)]
        stderr = open(self.data_dir.parent / f"child-{self.run}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT)
        stderr.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode())
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()
        return proc, lines

    def _child_err(self) -> str:
        p = self.data_dir.parent / f"child-{self.run}.err"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def kill_once(self, delay: float, trigger: str = "ack", pause: float = 0.0) -> KillStats:
        """Start a child, SIGKILL it ``delay`` s after the first line starting ``trigger``."""
        self.run += 1
        proc, lines = self._spawn(pause)
        got: list[str] = []
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(
                        f"run {self.run}: no {trigger!r} line within 60 s\n{self._child_err()}"
                    ) from None
                if line is None:
                    raise AssertionError(
                        f"run {self.run}: child exited with {proc.wait()} before any"
                        f" {trigger!r} line\n{self._child_err()}"
                    )
                got.append(line)
                if line.startswith(trigger):
                    break
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        while (line := lines.get(timeout=30)) is not None:
            got.append(line)
        assert proc.returncode == -signal.SIGKILL, (
            f"run {self.run}: child exited with {proc.returncode}\n{self._child_err()}"
        )
        stats = KillStats()
        for line in got:
            if not line.endswith("\n"):
                continue  # cut by the kill: not a complete ack
            parts = line.split()
            if parts[0] == "ready":
                ready = int(parts[1])
                if self.base is None:
                    self.base = ready
                else:
                    assert ready == self.last_offset, (
                        f"run {self.run}: child opened at offset {ready}, but the last"
                        f" reopen ended at offset {self.last_offset}"
                    )
            elif parts[0] == "ack":
                a = Ack(int(parts[1]), int(parts[2]), int(parts[3]))
                assert a.id not in self.acks, f"id {a.id} acknowledged twice"
                self.acks[a.id] = a
                run, task, seq = crash_child.split_key(a.k)
                assert run == self.run
                prev = self.acked_seq.get((run, task), -1)
                assert seq == prev + 1, f"task {task} acked seq {seq} after {prev}"
                self.acked_seq[(run, task)] = seq
                stats.acks += 1
        snaps = self.data_dir / "snapshots"
        stats.tmp_left = snaps.exists() and any(p.name.startswith(".tmp-") for p in snaps.iterdir())
        self.log.append(
            f"run {self.run}: delay {delay:.3f}, {stats.acks} acks, tmp left {stats.tmp_left}"
        )
        return stats

    # ------------------------------------------------------------------ verify

    def verify(self, close_snapshot: bool = False) -> list[str]:
        cfg = StoreConfig(
            data_dir=self.data_dir,
            durability="durable",
            snapshot_every=0,
            keep_snapshots=self.keep_snapshots,
            segment_bytes=SEGMENT_BYTES,
        )
        db = Database.open([crash_child.mod], cfg)
        try:
            rec = db.recovered
            assert rec is not None
            for w in rec.warnings:
                assert "torn" in w, f"unexpected recovery warning after a kill: {w}"
            if rec.snapshot_path is not None:
                assert not rec.snapshot_path.name.startswith(".tmp-"), rec.snapshot_path
            snaps = self.data_dir / "snapshots"
            if snaps.exists():
                left = [p.name for p in snaps.iterdir() if p.name.startswith(".tmp-")]
                assert not left, f"unfinished snapshots left after open: {left}"
            with db.snapshot() as s:
                assert s.offset == db.offset
                rows = s.table("item").rows()
            self._check_rows(db.offset, rows)
            self.last_offset = db.offset
            return list(rec.warnings)
        finally:
            db.close(snapshot=close_snapshot)

    def _check_rows(self, offset: int, rows: list[Any]) -> None:
        assert self.base is not None
        rows = sorted(rows, key=lambda r: r.id)
        n = len(rows)
        ids = [r.id for r in rows]
        assert ids == list(range(1, n + 1)), "item ids are not the contiguous set 1..n"
        offs = [r.off for r in rows]
        assert offs == list(range(self.base + 1, self.base + n + 1)), (
            "item offsets are not dense and in id order"
        )
        assert offset == self.base + n, f"store offset {offset} but {n} items after {self.base}"
        by_id = {r.id: r for r in rows}
        for a in self.acks.values():
            r = by_id.get(a.id)
            assert r is not None, f"acknowledged row {a} is missing"
            assert (r.k, r.off) == (a.k, a.offset), f"acknowledged row {a} reads back as {r}"
        for rid, (k, off) in self.known.items():
            r = by_id.get(rid)
            assert r is not None and (r.k, r.off) == (k, off), (
                f"row {rid} (k={k}, offset {off}) was recovered before and is now {r}"
            )
        seqs: dict[tuple[int, int], list[int]] = defaultdict(list)
        last_run = 0
        for r in rows:  # id order == offset order
            run, task, seq = crash_child.split_key(r.k)
            assert 1 <= run <= self.run and 0 <= task < TASKS, f"row {r} has an impossible key"
            assert run >= last_run, f"row {r} of run {run} after a row of run {last_run}"
            last_run = run
            seqs[(run, task)].append(seq)
        for key in set(seqs) | set(self.acked_seq):
            got = sorted(seqs.get(key, []))
            m = len(got) - 1
            acked = self.acked_seq.get(key, -1)
            assert got == list(range(m + 1)), f"run/task {key}: seqs {got[:20]}... not a prefix"
            assert acked <= m <= acked + 1, (
                f"run/task {key}: {m + 1} rows on disk but last ack was seq {acked}"
                " (only one call can be in flight per task)"
            )
        for r in rows:
            self.known[r.id] = (r.k, r.off)


def make_rng() -> tuple[int, random.Random]:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(2**32)))
    return seed, random.Random(seed)


def kill_loop(tmp_path: Path, kills: int, per_dir: int = 50) -> None:
    """``kills`` SIGKILLs, ``per_dir`` of them in a row on each data directory.

    (A fresh directory every ``per_dir`` kills keeps the store, and so every reopen and
    every check, small enough for the long variant.)
    """
    seed, rng = make_rng()
    checks = 0
    bad_checks: list[str] = []
    h: CrashHarness | None = None
    try:
        for i in range(kills):
            if i % per_dir == 0:
                data = tmp_path / f"data-{i // per_dir}"
                data.mkdir()
                h = CrashHarness(data, rng)
            assert h is not None
            pause = rng.choice([0.0, 0.002, 0.005, 0.01])
            stats = h.kill_once(rng.uniform(0.05, 0.5), pause=pause)
            assert stats.acks > 0
            if i % 5 == 4 or stats.tmp_left:
                # collected, asserted at the end: a wrong exit code must not hide the
                # state checks of the remaining kills
                rc, out = run_db_check(h.data_dir)
                checks += 1
                if rc not in (0, 1):
                    bad_checks.append(
                        f"kill {h.run} (tmp left: {stats.tmp_left}): exit {rc}\n{out}"
                    )
            h.verify(close_snapshot=rng.random() < 0.2)
        assert checks >= kills // 5
        assert not bad_checks, (
            f"db check exited 2 (refuses start) after {len(bad_checks)} of {checks} kills,"
            " yet every one of those stores opened:\n" + "\n".join(bad_checks[:2])
        )
    except BaseException:
        print(f"\nCRASH_SEED={seed}\n" + "\n".join(h.log[-10:] if h else []))
        raise


def test_kill_during_commits(tmp_path: Path) -> None:
    """50 SIGKILLs at random moments on one data directory; each restart appends."""
    kill_loop(tmp_path, 50)


@pytest.mark.slow
def test_kill_during_commits_many(tmp_path: Path) -> None:
    """500 SIGKILLs: ten data directories, 50 kills in a row on each."""
    kill_loop(tmp_path, 500)


def snapshot_kill_loop(tmp_path: Path, kills: int) -> None:
    """SIGKILL while a (slowed-down) snapshot is half written or written but not renamed."""
    seed, rng = make_rng()
    data = tmp_path / "data"
    data.mkdir()
    # pause 2 ms between a task's calls: ~300 commits per run, so this store stays small
    h = CrashHarness(data, rng, snapshot_every=100, keep_snapshots=2, slow_snapshot=0.01)
    partial = complete = 0
    bad_checks: list[str] = []
    try:
        for i in range(kills):
            # the slowed writer sleeps 10 ms after each of its ~5 chunk writes and 50 ms
            # before the rename; kill while it writes, while a complete temp file waits for
            # its rename, or a little later (after the rename, during pruning)
            mode = ("write", "rename", "late")[i % 3]
            if mode == "write":
                stats = h.kill_once(rng.uniform(0.0, 0.035), trigger="snap-write", pause=0.002)
            elif mode == "rename":
                stats = h.kill_once(rng.uniform(0.0, 0.03), trigger="snap-rename", pause=0.002)
            else:
                stats = h.kill_once(rng.uniform(0.05, 0.12), trigger="snap-rename", pause=0.002)
            if stats.tmp_left:
                (tmp,) = (data / "snapshots").glob(".tmp-*")
                try:
                    SnapshotReader(tmp).verify()
                    complete += 1
                except CorruptionError:
                    partial += 1
            if stats.tmp_left or i % 4 == 0:
                # on a copy: db check must not decide what the real open sees
                copy = tmp_path / f"check-{i}"
                shutil.copytree(data, copy)
                rc, out = run_db_check(copy)
                shutil.rmtree(copy)
                if rc not in (0, 1):
                    bad_checks.append(
                        f"kill {h.run} (tmp left: {stats.tmp_left}): exit {rc}\n{out}"
                    )
            h.verify()
        # the kills must really have hit both windows, or this test proves nothing
        assert partial >= kills // 6, f"only {partial} kills left a half-written snapshot"
        assert complete >= kills // 6, f"only {complete} kills left an unrenamed snapshot"
        assert not bad_checks, (
            "db check reported damage that does not refuse start after a kill during a"
            " snapshot write:\n" + "\n".join(bad_checks[:3])
        )
    except BaseException:
        print(f"\nCRASH_SEED={seed}\n" + "\n".join(h.log[-10:]))
        raise


def test_kill_during_snapshot_write(tmp_path: Path) -> None:
    snapshot_kill_loop(tmp_path, 15)


@pytest.mark.slow
def test_kill_during_snapshot_write_many(tmp_path: Path) -> None:
    snapshot_kill_loop(tmp_path, 200)


def test_snapshot_with_commits_in_flight_then_power_loss(tmp_path: Path) -> None:
    """A snapshot taken while a commit is still on its way to disk, then power is lost.

    The durable state is the snapshot at offset S plus the log up to S; the in-flight
    commit S+1 never reached the disk (it was never acknowledged). Recovering from the
    snapshot must give exactly the state that replaying the log to S gives, including
    the auto-increment sequence: the next insert gets the same id either way, and the
    ids stay contiguous.

    Fault injection: the WAL flusher is held before it writes the in-flight batch, and
    the "disk after the power cut" is a copy of the data directory taken at that moment.
    """
    data = tmp_path / "data"
    config = StoreConfig(
        data_dir=data, durability="durable", snapshot_every=0, segment_bytes=SEGMENT_BYTES
    )
    db = Database.open([crash_child.mod], config)
    wal = db._wal
    assert wal is not None
    release = threading.Event()
    holding = threading.Event()
    real_write = wal._write

    def held_write(buf: bytes, first: int, last: int) -> None:
        holding.set()
        assert release.wait(30)
        real_write(buf, first, last)

    try:
        for k in range(5):
            db.call_sync("add", {"k": k})
        wal._write = held_write  # type: ignore[method-assign]
        pending = db.execute("add", {"k": 99})  # in flight: offset S+1, not durable
        assert holding.wait(10)
        taken: list[Path | None] = []
        snapper = threading.Thread(target=lambda: taken.append(db.take_snapshot()))
        snapper.start()
        snapper.join(1.0)
        if snapper.is_alive():
            # a store that waits for the in-flight commit before capturing is fine too:
            # then the snapshot and the log both end at S+1
            release.set()
            snapper.join(30)
        (snap,) = taken
        assert snap is not None
        at = int(snap.stem)
        assert at in (pending.offset - 1, pending.offset)
        power_cut = tmp_path / "after-power-cut"
        shutil.copytree(data, power_cut)
        without_snapshot = tmp_path / "log-only"
        shutil.copytree(data, without_snapshot)
        shutil.rmtree(without_snapshot / "snapshots")
    finally:
        release.set()
        db.close(snapshot=False)

    def next_id(d: Path, from_snapshot: bool) -> tuple[int, list[int]]:
        db = Database.open([crash_child.mod], StoreConfig(**{**vars(config), "data_dir": d}))
        try:
            assert db.recovered is not None
            assert (db.recovered.snapshot_path is not None) == from_snapshot
            assert db.offset == at
            new = db.call_sync("add", {"k": 7}).value
            with db.snapshot() as s:
                ids = sorted(r.id for r in s.table("item").rows())
            return new, ids
        finally:
            db.close(snapshot=False)

    log_id, log_ids = next_id(without_snapshot, from_snapshot=False)
    snap_id, snap_ids = next_id(power_cut, from_snapshot=True)
    assert log_ids == list(range(1, len(log_ids) + 1))
    assert snap_id == log_id, (
        f"after recovering from snapshot {at} the next id is {snap_id}, replaying the log to"
        f" the same offset gives {log_id}: the snapshot holds sequence values of the"
        f" in-flight commit {pending.offset} (ids now {snap_ids})"
    )


def test_ack_only_after_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No commit is acknowledged before an fdatasync that covers its frame has returned.

    SIGKILL keeps the page cache, so the kill tests cannot see an ack that came before the
    sync; this test watches the WAL's writes and syncs directly instead.
    """
    import core.wal.writer as writer_mod

    lock = threading.Lock()
    written: set[int] = set()
    synced: set[int] = set()

    class WatchedOs:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def pwrite(fd: int, data: Any, pos: int) -> int:
            n = os.pwrite(fd, data, pos)
            buf = bytes(data[:n])
            at = 0
            while at + 16 <= len(buf):  # frames: len u32 | crc u32 | offset u64 | payload
                length = int.from_bytes(buf[at : at + 4], "little")
                if at + 16 + length > len(buf):
                    break
                with lock:
                    written.add(int.from_bytes(buf[at + 8 : at + 16], "little"))
                at += 16 + length
            return n

        @staticmethod
        def fdatasync(fd: int) -> None:
            with lock:
                pending = set(written)
            os.fdatasync(fd)
            with lock:
                synced.update(pending)

    monkeypatch.setattr(writer_mod, "os", WatchedOs())
    config = StoreConfig(
        data_dir=tmp_path / "data",
        durability="durable",
        snapshot_every=0,
        segment_bytes=SEGMENT_BYTES,
    )
    db = Database.open([crash_child.mod], config)
    early: list[int] = []
    try:
        for k in range(300):
            off = db.call_sync("add", {"k": k}).offset
            with lock:
                if off not in synced:
                    early.append(off)

        async def burst() -> None:
            async def one(task: int) -> None:
                for seq in range(40):
                    off = (await db.call("add", {"k": crash_child.make_key(1, task, seq)})).offset
                    with lock:
                        if off not in synced:
                            early.append(off)

            await asyncio.gather(*(one(t) for t in range(TASKS)))

        asyncio.run(burst())
    finally:
        db.close(snapshot=False)
    assert not early, f"{len(early)} commits acknowledged before their fdatasync: {early[:10]}"
    assert len(synced) >= 300 + 40 * TASKS
