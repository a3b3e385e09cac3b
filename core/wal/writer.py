"""Appends commit frames to the active segment, with group commit on a flusher thread.

``append`` only copies a frame into an in-memory batch (the reducer path never blocks on
disk). The flusher thread writes whole batches and fsyncs them; every commit appended while
one fsync runs shares the next one (group commit). Policies: ``durable`` (flush as soon as
there is data; callers wait for ``on_durable``), ``interval`` (flush every N ms; callers do
not wait). Invariant: ``on_durable(n)`` is reported only after every frame up to offset
``n`` is on disk, and any write or fsync error is reported through ``on_failure`` and stops
the writer for good: an fsync error leaves the file in an unknown state, so nothing may be
acknowledged after it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from core.wal.format import frame, segment_header, segment_name

log = logging.getLogger("voicehub.wal")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalWriter:
    def __init__(
        self,
        wal_dir: Path,
        active: Path,
        active_size: int,
        policy: str,
        interval_ms: int,
        segment_bytes: int,
        on_durable: Callable[[int], None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.wal_dir = wal_dir
        self.policy = policy
        self.interval = interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        self._on_durable = on_durable
        self._on_failure = on_failure
        self._fd = os.open(active, os.O_RDWR)
        self._size = active_size
        self._preallocate()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buf = bytearray()
        self._buf_first = 0
        self._buf_last = 0
        self._closing = False
        self.failed: BaseException | None = None
        self.fsyncs = 0
        self.bytes_written = 0
        self._thread = threading.Thread(target=self._run, name="voicehub-wal", daemon=True)
        self._thread.start()

    @staticmethod
    def create_segment(wal_dir: Path, first_offset: int) -> Path:
        """Create a new empty segment durably (header fsynced, directory fsynced)."""
        path = wal_dir / segment_name(first_offset)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, segment_header(first_offset))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(wal_dir)
        return path

    def append(self, offset: int, payload: bytes) -> None:
        data = frame(offset, payload)
        with self._lock:
            if not self._buf:
                self._buf_first = offset
                self._buf.extend(data)
                self._buf_last = offset
                if self.policy == "durable":
                    self._wake.notify()
            else:
                self._buf.extend(data)
                self._buf_last = offset

    def _take(self) -> tuple[bytes, int, int] | None:
        if not self._buf:
            return None
        data = bytes(self._buf)
        self._buf.clear()
        return data, self._buf_first, self._buf_last

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._buf and not self._closing:
                        if self.policy == "durable":
                            self._wake.wait()
                        else:
                            self._wake.wait(self.interval)
                            break
                    batch = self._take()
                    closing = self._closing
                if batch is not None:
                    self._write(*batch)
                elif self.policy != "durable" and not closing:
                    continue
                if closing and batch is None:
                    return
        except BaseException as e:
            self.failed = e
            log.critical("write-ahead log failed, refusing all further writes: %r", e)
            self._on_failure(e)

    def _write(self, data: bytes, first: int, last: int) -> None:
        if self._size >= self.segment_bytes:
            self._rotate(first)
        view = memoryview(data)
        pos = self._size
        while view:
            n = os.pwrite(self._fd, view, pos)
            view = view[n:]
            pos += n
        os.fdatasync(self._fd)
        self.fsyncs += 1
        self._size += len(data)
        self.bytes_written += len(data)
        self._on_durable(last)

    def _preallocate(self) -> None:
        """Reserve the segment's blocks up front: fdatasync then has no size to update.

        The reserved space reads as zeros, which readers take as the end of the log.
        """
        try:
            os.posix_fallocate(self._fd, 0, max(self.segment_bytes, self._size))
        except OSError as e:  # filesystems without fallocate: plain appends still work
            log.info("log preallocation unavailable (%s); appending instead", e)

    def _rotate(self, first_offset: int) -> None:
        # Cut the finished segment to its real length first, so only the last segment
        # can ever end in preallocated zeros.
        os.ftruncate(self._fd, self._size)
        os.fsync(self._fd)
        os.close(self._fd)
        path = self.create_segment(self.wal_dir, first_offset)
        self._fd = os.open(path, os.O_RDWR)
        self._size = os.path.getsize(path)
        self._preallocate()
        log.info("log segment %s started", path.name)

    def close(self) -> None:
        """Flush what is buffered, fsync, stop the flusher thread."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        if self.failed is None:
            os.fsync(self._fd)
        os.close(self._fd)

    @property
    def position(self) -> int:
        """Bytes of real log data in the active segment (preallocated zeros excluded)."""
        return self._size
