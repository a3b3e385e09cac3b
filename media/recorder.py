"""The call recorder engine: encrypted dual-channel recording files, crash-safe, WAV export.

The entry point for the media worker (see docs/recording.md)::

    w = RecordingWriter.create(root, recording_id, call_id, keyring)   # row became active
    w.write("caller", pcm, timestamp_ms); w.write("agent", pcm, timestamp_ms)
    w.pause("pci", ts); w.resume(ts)                                   # a marked gap
    done = w.finalize()            # -> recording_finalize(done.storage_uri, checksum, ...)
    recover(root, keyring)         # at startup: finalize what a crash left unfinished
    export_wav(root / done.storage_uri, keyring, "call.wav")

This module adds crash recovery, shredding and an asyncio wrapper to the writer
(``media.recording_writer``), the reader (``media.recording_reader``) and the keys
(``media.keys``), and re-exports them.

Invariant: after ``recover`` every recording file under the root is either a finalized,
verifiable ``.vhrec`` holding the longest authenticated prefix of what was written, or a
``.part`` left untouched because it cannot be authenticated at all (logged) - a file is
never rewritten into something unreadable, and no plaintext audio is written anywhere but
the WAV the caller asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from media.keys import KeyRecord, Keyring, KeyringError
from media.recording_format import CHANNELS, SLOT_BYTES, RecordingError, read_header
from media.recording_reader import RecordingInfo, export_wav, scan, verify
from media.recording_types import (
    PART,
    SUFFIX,
    ChannelSummary,
    FinalizedRecording,
    Gap,
    RecorderClosed,
    storage_uri,
)
from media.recording_writer import RecordingWriter, _fsync_dir

__all__ = [
    "AsyncRecordingWriter",
    "ChannelSummary",
    "FinalizedRecording",
    "Gap",
    "KeyRecord",
    "Keyring",
    "KeyringError",
    "RecorderClosed",
    "RecordingError",
    "RecordingInfo",
    "RecordingWriter",
    "export_wav",
    "load_finalized",
    "recover",
    "shred",
    "storage_uri",
    "unfinished",
    "verify",
]

log = logging.getLogger("voicehub.media.recorder")

T = TypeVar("T")


def unfinished(root_dir: Path) -> list[tuple[int, int, Path]]:
    """``(call_id, recording_id, path)`` of every ``.part`` file under ``root_dir``."""
    out = []
    for p in sorted(Path(root_dir).glob(f"*/*{SUFFIX}{PART}")):
        try:
            out.append((int(p.parent.name), int(p.name.split(".")[0]), p))
        except ValueError:
            log.warning("ignoring %s: not a recorder file name", p)
    return out


def recover(
    root_dir: Path, keyring: Keyring, *, exclude: Iterable[int] = ()
) -> list[FinalizedRecording]:
    """Finalize every recording a crash left unfinished (except ``exclude`` ids).

    Each keeps its longest authenticated prefix (the torn tail is dropped, see
    ``dropped_bytes``); a file that cannot be read at all (bad header, unknown master key)
    is logged and left in place. Run at startup, before any writer is open.
    """
    root, skip = Path(root_dir), set(exclude)
    for tmp in root.glob(f"*/*{SUFFIX}{PART}.tmp-*"):
        tmp.unlink()  # create() died before linking it: it never was a recording
    done = []
    for call_id, recording_id, path in unfinished(root):
        if recording_id in skip:
            continue
        try:
            done.append(_recover_one(root, call_id, recording_id, path, keyring))
        except (RecordingError, KeyringError, OSError) as e:
            log.error("cannot recover %s: %s", path, e)
    return done


def _recover_one(
    root: Path, call_id: int, recording_id: int, path: Path, keyring: Keyring
) -> FinalizedRecording:
    with open(path, "rb") as f:
        st = scan(f, path.name, keyring, strict=False)
    w = RecordingWriter(root, call_id, recording_id)
    w._configure(2000, 1000, 10)
    if st.footer is None:
        w._resume_from(st)
        return w.finalize(recovered=True)
    os.rename(path, w.final_path)  # finalized, but the crash came before the rename
    _fsync_dir(w.final_path.parent)
    return replace(load_finalized(root, call_id, recording_id, keyring), recovered=True)


def load_finalized(
    root_dir: Path,
    call_id: int,
    recording_id: int,
    keyring: Keyring,
    *,
    key_record: KeyRecord | None = None,
) -> FinalizedRecording:
    """Verify an existing ``.vhrec`` and describe it as ``finalize`` did.

    For a restart that finds a finalized file whose row was never ``recording_finalize``-d
    (the crash came between the two).
    """
    uri = storage_uri(call_id, recording_id)
    info = verify(Path(root_dir) / uri, keyring, key_record=key_record)
    m = info.manifest
    if (info.recording_id, info.call_id) != (recording_id, call_id):
        raise RecordingError(f"{uri}: the file belongs to another recording")
    return FinalizedRecording(
        recording_id, call_id, uri, info.checksum, info.key_id, info.key_record,
        info.duration_ms, info.origin_ms,
        {c: ChannelSummary(*m["channels"][c]) for c in CHANNELS},
        tuple(Gap(*g) for g in info.gaps), m.get("finalized_by") == "recover",
        int(m.get("dropped_bytes", 0)),
    )  # fmt: skip


def shred(path: Path) -> None:
    """Overwrite the header's wrapped data key (zeros) and fsync.

    Afterwards the file is readable only with the recording's ``KeyRecord`` (the database
    row); deleting that row too is crypto-shredding. The file's checksum changes. On
    copy-on-write or flash storage the old block may survive physically: rotate and retire
    the master key for a guarantee.
    """
    with open(path, "r+b") as f:
        header, _, _ = read_header(f, Path(path).name)
        f.seek(header.slot_offset)
        f.write(bytes(SLOT_BYTES))
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- asyncio glue


class AsyncRecordingWriter:
    """Thin asyncio wrapper: frames are batched and written in a worker thread.

    ``write_nowait`` (the call worker's per-frame call) only appends to the batch; a full
    batch (default 50 frames: 0.5 s of both channels) goes to a worker thread in the
    background. Every operation - a batch, pause, resume, sync, finalize - runs in the order
    it was issued, each after the one before has finished (a chain of tasks, so the
    blocking writer is used by one thread at a time); pause, resume, sync and finalize hand
    over the pending batch first and return when they are done. A failed operation fails
    every later one with its exception (``write_nowait`` raises it too): the file's state
    is unknown then, and ``recover`` takes over.
    """

    def __init__(self, writer: RecordingWriter, batch: int = 50) -> None:
        self.writer = writer
        self._batch: list[tuple[str | int, bytes, int]] = []
        # the first batch is shorter by an amount that depends on the recording, so calls
        # that started together do not all hand their batches over on the same frame
        self._size = 1 + (batch - 1) * (writer.recording_id * 2654435761 % 997) // 997
        self._full = batch
        self._tail: asyncio.Task[Any] | None = None
        self._pending = 0
        self._error: BaseException | None = None

    def write_nowait(self, channel: str | int, pcm: bytes, timestamp_ms: int) -> None:
        """Add one frame; never waits (the batch is written in the background)."""
        if self._error is not None:
            raise self._error
        batch = self._batch
        batch.append((channel, pcm, timestamp_ms))
        if len(batch) >= self._size:
            self._batch = []
            self._size = self._full
            self._chain(self.writer.write_many, batch)

    async def write(self, channel: str | int, pcm: bytes, timestamp_ms: int) -> None:
        """``write_nowait``, waiting while more than two batches are still being written
        (backpressure for a producer that can wait)."""
        self.write_nowait(channel, pcm, timestamp_ms)
        if self._pending > 2 and self._tail is not None:
            await asyncio.wait([self._tail])

    def _chain(self, fn: Callable[..., T], *args: Any) -> asyncio.Task[T]:
        prev = self._tail

        async def run() -> T:
            if prev is not None and not prev.done():
                await asyncio.wait([prev])  # its failure is recorded in _error
            if self._error is not None:
                raise self._error
            return await asyncio.to_thread(fn, *args)

        self._pending += 1
        task = asyncio.get_running_loop().create_task(run())
        task.add_done_callback(self._done)
        self._tail = task
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending -= 1
        if task.cancelled():
            return
        e = task.exception()
        if e is not None and self._error is None:
            self._error = e
            log.error("recording %s: a write failed: %s", self.writer.recording_id, e)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._chain(self.writer.write_many, batch)

    async def _then(self, fn: Callable[..., T], *args: Any) -> T:
        if self._error is not None:
            raise self._error
        self._flush()
        # shielded: a cancelled caller does not take the operation out of the chain
        return await asyncio.shield(self._chain(fn, *args))

    async def pause(self, reason: str, timestamp_ms: int) -> None:
        await self._then(self.writer.pause, reason, timestamp_ms)

    async def resume(self, timestamp_ms: int) -> None:
        await self._then(self.writer.resume, timestamp_ms)

    async def sync(self) -> None:
        await self._then(self.writer.sync)

    async def finalize(self, end_ms: int | None = None) -> FinalizedRecording:
        return await self._then(self.writer.finalize, end_ms)
