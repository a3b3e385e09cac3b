"""Snapshot files: the committed state of every table at one offset.

File ``snapshots/<offset, 20 digits>.snap``: a 28-byte header
``magic "VHSNAP\\0\\1" | offset u64 | timestamp u64 | crc32 u32``, then chunks
``length u32 | crc32 u32 | payload`` (MessagePack): first the meta chunk (table definitions,
sequence values, row counts), then ``["rows", table, [row, ...]]`` chunks of at most
``CHUNK_ROWS`` rows, then ``["end", chunk count]``. A snapshot is written to a temp file,
fsynced, renamed into place and the directory fsynced, so a file with the final name is
complete; ``verify`` still checks every checksum and the end marker before it is trusted.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from core.errors import CorruptionError
from core.schema import TableDef, to_builtins
from core.wal.writer import fsync_dir

log = logging.getLogger("voicehub.snapshot")

MAGIC = b"VHSNAP\x00\x01"
_HEAD = struct.Struct("<8sQQ")
HEADER_SIZE = _HEAD.size + 4
_CHUNK = struct.Struct("<II")
CHUNK_ROWS = 20_000
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def snapshot_name(offset: int) -> str:
    return f"{offset:020d}.snap"


def list_snapshots(snap_dir: Path, remove_tmp: bool = False) -> list[tuple[int, Path]]:
    """(offset, path) of every finished snapshot file, newest first.

    Unfinished temp files are never listed; they are deleted only with ``remove_tmp``
    (the repairing open), never by read-only callers: one may be a snapshot in progress.
    """
    out: list[tuple[int, Path]] = []
    if not snap_dir.exists():
        return out
    for p in snap_dir.iterdir():
        if p.name.startswith(".tmp-"):
            if remove_tmp:
                log.warning("removing unfinished snapshot %s", p)
                p.unlink(missing_ok=True)
        elif p.suffix == ".snap" and p.stem.isdigit():
            out.append((int(p.stem), p))
    out.sort(reverse=True)
    return out


def snapshot_point(path: Path) -> tuple[int, int]:
    """(offset, timestamp) from a snapshot's header (not a validity check)."""
    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return 0, 0
    _, offset, ts = _HEAD.unpack(head)
    return int(offset), int(ts)


class TableImage:
    """One table's part of a snapshot, as captured on the writer's thread."""

    __slots__ = ("rows", "sequences", "tdef")

    def __init__(self, tdef: TableDef, rows: list[tuple], sequences: dict[int, int]) -> None:
        self.tdef = tdef
        self.rows = rows
        self.sequences = sequences


def write_snapshot(snap_dir: Path, offset: int, timestamp: int, tables: list[TableImage]) -> Path:
    """Write a complete snapshot durably; safe to run on a worker thread."""
    t0 = time.perf_counter()
    snap_dir.mkdir(parents=True, exist_ok=True)
    final = snap_dir / snapshot_name(offset)
    tmp = snap_dir / f".tmp-{snapshot_name(offset)}"
    meta = {
        "format": 1,
        "offset": offset,
        "timestamp": timestamp,
        "tables": [to_builtins(t.tdef) for t in tables],
        "sequences": [[t.tdef.name, pos, v] for t in tables for pos, v in t.sequences.items()],
        "counts": {t.tdef.name: len(t.rows) for t in tables},
    }
    nrows = 0
    with open(tmp, "wb") as f:
        head = _HEAD.pack(MAGIC, offset, timestamp)
        f.write(head + struct.pack("<I", zlib.crc32(head)))
        chunks = 0

        def put(obj: Any) -> None:
            nonlocal chunks
            payload = _enc.encode(obj)
            f.write(_CHUNK.pack(len(payload), zlib.crc32(payload)) + payload)
            chunks += 1

        put(meta)
        for t in tables:
            rows = t.rows
            for i in range(0, len(rows), CHUNK_ROWS):
                put(["rows", t.tdef.name, rows[i : i + CHUNK_ROWS]])
                nrows += min(CHUNK_ROWS, len(rows) - i)
        put(["end", chunks + 1])
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    fsync_dir(snap_dir)
    log.info(
        "snapshot %s written: %d rows, %.1f MB, %.2f s",
        final.name,
        nrows,
        final.stat().st_size / 1e6,
        time.perf_counter() - t0,
    )
    return final


def _chunks(path: Path, data: bytes) -> Iterator[tuple[int, bytes]]:
    if len(data) < HEADER_SIZE:
        raise CorruptionError(f"snapshot {path}: truncated header ({len(data)} bytes)")
    magic, _, _ = _HEAD.unpack_from(data, 0)
    (hcrc,) = struct.unpack_from("<I", data, _HEAD.size)
    if magic != MAGIC:
        raise CorruptionError(f"snapshot {path}: not a voicehub snapshot (bad magic)")
    if zlib.crc32(data[: _HEAD.size]) != hcrc:
        raise CorruptionError(f"snapshot {path}: header checksum mismatch at byte 0")
    pos = HEADER_SIZE
    end = len(data)
    while pos < end:
        if end - pos < _CHUNK.size:
            raise CorruptionError(f"snapshot {path}: truncated chunk header at byte {pos}")
        n, crc = _CHUNK.unpack_from(data, pos)
        body = pos + _CHUNK.size
        if body + n > end:
            raise CorruptionError(f"snapshot {path}: truncated chunk at byte {pos}")
        payload = data[body : body + n]
        if zlib.crc32(payload) != crc:
            raise CorruptionError(f"snapshot {path}: chunk checksum mismatch at byte {pos}")
        yield pos, payload
        pos = body + n


class SnapshotReader:
    """Reads and checks one snapshot file; ``verify()`` before ``tables()``/``rows()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.meta: dict[str, Any] = {}

    def verify(self) -> dict[str, Any]:
        """Check every checksum, the chunk count and the end marker; return the meta."""
        count = 0
        last: Any = None
        for i, (pos, payload) in enumerate(_chunks(self.path, self.data)):
            count += 1
            if i == 0:
                try:
                    self.meta = _dec.decode(payload)
                except msgspec.DecodeError:
                    raise CorruptionError(f"snapshot {self.path}: bad meta at {pos}") from None
            last = payload
        if count < 2:
            raise CorruptionError(f"snapshot {self.path}: incomplete (no end marker)")
        try:
            tail = _dec.decode(last)
        except msgspec.DecodeError:
            tail = None
        if not (isinstance(tail, list) and tail[:1] == ["end"] and tail[1] == count):
            raise CorruptionError(f"snapshot {self.path}: incomplete (no valid end marker)")
        _, offset, _ = _HEAD.unpack_from(self.data, 0)
        if self.meta.get("offset") != offset:
            raise CorruptionError(f"snapshot {self.path}: meta offset does not match header")
        return self.meta

    def rows(self) -> Iterator[tuple[str, list[list[Any]]]]:
        for i, (_, payload) in enumerate(_chunks(self.path, self.data)):
            if i == 0:
                continue
            item = _dec.decode(payload)
            if item[0] == "rows":
                yield item[1], item[2]
