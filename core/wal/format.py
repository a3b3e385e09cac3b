"""Byte layout of log segments and commit frames, and the commit record itself.

Segment file ``<first offset, 20 digits>.wal``: a 20-byte header
``magic "VHWAL\\0" | version u16 | first_offset u64 | crc32 u32`` (little endian), then frames.
Frame: ``length u32 | crc32 u32 | offset u64 | payload[length]`` where the CRC covers
length, offset and payload. Payload: a MessagePack ``CommitRecord`` (array form).
Invariant: offsets are dense and increasing across frames and segments; a frame is valid
only if its length fits, its CRC matches and its offset is the one expected next.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import msgspec

SEGMENT_MAGIC = b"VHWAL\x00"
SEGMENT_VERSION = 1
_SEG = struct.Struct("<6sHQ")
SEGMENT_HEADER_SIZE = _SEG.size + 4
_FRAME = struct.Struct("<IIQ")
FRAME_HEADER_SIZE = _FRAME.size
_LEN_OFF = struct.Struct("<IQ")
MAX_FRAME = 256 * 1024 * 1024


class CommitRecord(msgspec.Struct, array_like=True, gc=False):
    """Everything replay needs: who called what with which arguments, and what changed."""

    offset: int
    timestamp: int
    reducer: str
    caller: str
    args: list[Any]
    # (table, inserted rows, deleted primary keys) - deletes are applied first
    changes: list[tuple[str, list[Any], list[Any]]]
    # (table, column position, new value) for sequences that advanced
    sequences: list[tuple[str, int, int]] = []
    # table definitions created by this commit (schema commits only)
    schema: list[Any] = []
    value: Any = None


ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(CommitRecord)


def segment_name(first_offset: int) -> str:
    return f"{first_offset:020d}.wal"


def segment_header(first_offset: int) -> bytes:
    head = _SEG.pack(SEGMENT_MAGIC, SEGMENT_VERSION, first_offset)
    return head + struct.pack("<I", zlib.crc32(head))


def parse_segment_header(data: bytes) -> int:
    """Return the segment's first offset, or raise ValueError describing the damage."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise ValueError("segment header is truncated")
    magic, version, first = _SEG.unpack_from(data, 0)
    (crc,) = struct.unpack_from("<I", data, _SEG.size)
    if magic != SEGMENT_MAGIC:
        raise ValueError("not a voicehub log segment (bad magic)")
    if zlib.crc32(data[: _SEG.size]) != crc:
        raise ValueError("segment header checksum mismatch")
    if version != SEGMENT_VERSION:
        raise ValueError(f"unsupported log format version {version}")
    return int(first)


def frame(offset: int, payload: bytes) -> bytes:
    n = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(_LEN_OFF.pack(n, offset)))
    return _FRAME.pack(n, crc, offset) + payload


class FrameError(Exception):
    """Damage at byte ``pos`` of a segment."""

    def __init__(self, pos: int, reason: str) -> None:
        super().__init__(f"byte {pos}: {reason}")
        self.pos = pos
        self.reason = reason


def iter_frames(
    data: bytes | memoryview, pos: int, expect: int
) -> Iterator[tuple[int, bytes, int]]:
    """Yield (offset, payload, end position) from ``pos``; raise FrameError at damage."""
    end = len(data)
    mv = memoryview(data)
    while pos < end:
        if end - pos < FRAME_HEADER_SIZE:
            raise FrameError(pos, f"truncated frame header ({end - pos} bytes)")
        n, crc, offset = _FRAME.unpack_from(data, pos)
        if n == 0 and crc == 0 and offset == 0:
            raise FrameError(pos, "zeroed bytes where a frame should start")
        if n > MAX_FRAME:
            raise FrameError(pos, f"implausible frame length {n}")
        body = pos + FRAME_HEADER_SIZE
        if body + n > end:
            raise FrameError(pos, f"truncated frame (needs {n} bytes, {end - body} present)")
        payload = bytes(mv[body : body + n])
        if zlib.crc32(payload, zlib.crc32(_LEN_OFF.pack(n, offset))) != crc:
            raise FrameError(pos, "frame checksum mismatch")
        if offset != expect:
            raise FrameError(pos, f"frame offset {offset}, expected {expect}")
        yield offset, payload, body + n
        pos = body + n
        expect += 1


def valid_frame_after(data: bytes, pos: int, expect: int) -> int | None:
    """Position of a checksum-valid frame for offsets ``expect .. expect+63`` after ``pos``.

    Used to tell a torn tail (nothing valid follows the damage) from damage in the middle
    of the log (later commits are intact). Searches for the offset field with bytes.find,
    so it costs a few linear scans of the tail, not one parse per byte position.
    """
    end = len(data)
    for k in range(64):
        needle = struct.pack("<Q", expect + k)
        q = data.find(needle, pos + 1)
        while q != -1:
            p = q - 8
            if p > pos and p + FRAME_HEADER_SIZE <= end:
                n, crc, offset = _FRAME.unpack_from(data, p)
                body = p + FRAME_HEADER_SIZE
                if 0 < n <= MAX_FRAME and body + n <= end:
                    check = zlib.crc32(data[body : body + n], zlib.crc32(_LEN_OFF.pack(n, offset)))
                    if check == crc:
                        return p
            q = data.find(needle, q + 1)
    return None
