"""The on-disk format of an encrypted voicehub call recording (``.vhrec``), byte level.

Layout (all integers little-endian; see docs/recording.md)::

    header   MAGIC | u32 n | header JSON (n bytes) | HMAC-SHA256 (32) | key slot (128)
    records  u32 len | kind u8 | seq u32 | nonce 12 | channel u8 | start i64 | end i64
             | AES-256-GCM ciphertext+tag            (len counts everything after itself)
    trailer  u64 offset of the footer record | b"VHRECEND"      (finalized files only)

Invariant: every byte after the key slot is an authenticated record or the trailer. A
record's associated data binds the file id, the recording id, and its kind, sequence
number, nonce, channel and sample span, so records cannot be altered, reordered (the
sequence numbers are dense from 0), or moved between recordings undetected; the footer
(the last record) carries a hash over every record before it and the record count, so a
finalized file cannot be truncated or spliced undetected (the footer's ``records_sha256``
chains the header and every record's clear fields and GCM tag; it leaves out the key slot,
so shredding keeps the file verifiable with the database's key row). A nonce is the writer session's
4-byte prefix (announced by an ``S`` record that is fsynced before the prefix is used,
never repeated in a file) followed by the 8-byte sequence number: no nonce repeats under
a recording's data key. The key slot (master key id + wrapped data key) is outside the
header MAC so ``shred`` can overwrite it; the wrapped key authenticates itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from media.keys import MAX_MASTER_ID, WRAPPED_KEY_BYTES, KeyRecord

MAGIC = b"VHREC\x00v1"
FORMAT_VERSION = 1
TRAILER_MAGIC = b"VHRECEND"
TRAILER = struct.Struct("<Q8s")
SLOT_BYTES = 128
MAC_BYTES = 32
RATE = 16000
SAMPLES_PER_MS = RATE // 1000
SAMPLE_WIDTH = 2
CHANNELS = ("caller", "agent")
NO_CHANNEL = 255

KIND_SESSION = b"S"[0]  # a writer session begins; its nonce prefix is in use from now on
KIND_ORIGIN = b"O"[0]  # the recording's time origin (start = the first sample's position)
KIND_AUDIO = b"A"[0]  # one channel's audio for [start, end): segments + PCM
KIND_PAUSE = b"P"[0]  # a gap opens at start; plaintext: {"reason": ...}
KIND_RESUME = b"R"[0]  # the open gap [start, end) closes
KIND_FOOTER = b"F"[0]  # the manifest; the last record of a finalized file
KIND_NAMES = {
    KIND_SESSION: "session",
    KIND_ORIGIN: "origin",
    KIND_AUDIO: "audio",
    KIND_PAUSE: "pause",
    KIND_RESUME: "resume",
    KIND_FOOTER: "footer",
}

REC = struct.Struct("<IBI12sBqq")  # len, kind, seq, nonce, channel, start, end
REC_SIZE = REC.size
REC_FIXED = REC.size - 4  # bytes counted by ``len`` before the ciphertext
TAG_BYTES = 16
MAX_RECORD = 16 << 20
SEG_COUNT = struct.Struct("<H")
SEG = struct.Struct("<II")  # offset from the record's start, samples (both in samples)
_SLOT_PAD = SLOT_BYTES - MAX_MASTER_ID - WRAPPED_KEY_BYTES


class RecordingError(Exception):
    """A recording file is malformed, tampered with, truncated, or keyed differently."""


# ---------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class Header:
    recording_id: int
    call_id: int
    file_id: bytes
    key_id: str
    start_sample: int | None
    created_at: float
    raw: bytes  # MAGIC .. JSON: the bytes the MAC covers

    @property
    def size(self) -> int:
        return len(self.raw) + MAC_BYTES + SLOT_BYTES

    @property
    def slot_offset(self) -> int:
        return len(self.raw) + MAC_BYTES


def encode_header(
    recording_id: int,
    call_id: int,
    file_id: bytes,
    key_id: str,
    start_sample: int | None,
    created_at: float,
) -> Header:
    doc = {
        "format": FORMAT_VERSION,
        "recording_id": recording_id,
        "call_id": call_id,
        "file_id": file_id.hex(),
        "key_id": key_id,
        "rate": RATE,
        "sample_width": SAMPLE_WIDTH,
        "channels": list(CHANNELS),
        "start_sample": start_sample,
        "created_at": created_at,
    }
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    raw = MAGIC + struct.pack("<I", len(body)) + body
    return Header(recording_id, call_id, file_id, key_id, start_sample, created_at, raw)


def encode_slot(record: KeyRecord) -> bytes:
    mid = record.master_key_id.encode("ascii")
    if len(mid) > MAX_MASTER_ID or len(record.wrapped_key) != WRAPPED_KEY_BYTES:
        raise RecordingError("key record does not fit the header's key slot")
    return mid.ljust(MAX_MASTER_ID, b"\x00") + record.wrapped_key + bytes(_SLOT_PAD)


def decode_slot(slot: bytes, key_id: str) -> KeyRecord | None:
    """The wrapped key kept in the header, or None if the slot was shredded."""
    if not any(slot):
        return None
    mid = slot[:MAX_MASTER_ID].rstrip(b"\x00").decode("ascii", "replace")
    return KeyRecord(key_id, mid, slot[MAX_MASTER_ID : MAX_MASTER_ID + WRAPPED_KEY_BYTES])


def read_header(f: BinaryIO, name: str) -> tuple[Header, bytes, bytes]:
    """(header, mac, key slot) read from the start of ``f``; not yet authenticated."""
    start = f.read(len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or start[: len(MAGIC)] != MAGIC:
        raise RecordingError(f"{name}: not a voicehub recording (bad magic or empty header)")
    (n,) = struct.unpack("<I", start[len(MAGIC) :])
    if n > 1 << 16:
        raise RecordingError(f"{name}: header length {n} is implausible")
    body = f.read(n)
    mac = f.read(MAC_BYTES)
    slot = f.read(SLOT_BYTES)
    if len(body) < n or len(mac) < MAC_BYTES or len(slot) < SLOT_BYTES:
        raise RecordingError(f"{name}: truncated header")
    try:
        doc: dict[str, Any] = json.loads(body)
        if doc["format"] != FORMAT_VERSION or doc["rate"] != RATE:
            raise RecordingError(f"{name}: unsupported format {doc['format']}/{doc['rate']}")
        header = Header(
            int(doc["recording_id"]),
            int(doc["call_id"]),
            bytes.fromhex(doc["file_id"]),
            str(doc["key_id"]),
            None if doc["start_sample"] is None else int(doc["start_sample"]),
            float(doc["created_at"]),
            start + body,
        )
    except (ValueError, KeyError, TypeError):
        raise RecordingError(f"{name}: malformed header") from None
    return header, mac, slot


# ---------------------------------------------------------------- keys and records


class Sealer:
    """The per-recording keys (derived from the data key with HKDF) and record AEAD."""

    __slots__ = ("_aad_prefix", "_aead", "_mac_key")

    def __init__(self, data_key: bytes, header: Header) -> None:
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=64,
            salt=header.file_id,
            info=b"voicehub recording v1",
        ).derive(data_key)
        self._aead = AESGCM(okm[:32])
        self._mac_key = okm[32:]
        self._aad_prefix = MAGIC + header.file_id + struct.pack("<Q", header.recording_id)

    def header_mac(self, header: Header) -> bytes:
        return hmac.new(self._mac_key, header.raw, hashlib.sha256).digest()

    def check_header(self, header: Header, mac: bytes, name: str) -> None:
        if not hmac.compare_digest(self.header_mac(header), mac):
            raise RecordingError(
                f"{name}: header authentication failed (tampered header, or the key "
                "belongs to another recording)"
            )

    def seal(
        self, kind: int, seq: int, prefix: bytes, channel: int, start: int, end: int, plain: bytes
    ) -> bytes:
        """One complete record (length prefix included)."""
        nonce = prefix + seq.to_bytes(8, "little")
        fixed = REC.pack(REC_FIXED + len(plain) + TAG_BYTES, kind, seq, nonce, channel, start, end)
        ct = self._aead.encrypt(nonce, plain, self._aad_prefix + fixed)
        return fixed + ct

    def open(self, rec: RawRecord) -> bytes:
        """The plaintext of ``rec``, or ``InvalidTag``."""
        return self._aead.decrypt(rec.nonce, rec.ciphertext, self._aad_prefix + rec.fixed)


@dataclass(frozen=True, slots=True)
class RawRecord:
    offset: int
    fixed: bytes
    kind: int
    seq: int
    nonce: bytes
    channel: int
    start: int
    end: int
    ciphertext: bytes

    @property
    def size(self) -> int:
        return len(self.fixed) + len(self.ciphertext)

    def describe(self) -> str:
        what = KIND_NAMES.get(self.kind, f"kind {self.kind}")
        ch = f" {CHANNELS[self.channel]}" if self.channel < len(CHANNELS) else ""
        span = f" {self.start / RATE:.3f}-{self.end / RATE:.3f} s" if self.end else ""
        return f"record {self.seq} ({what}{ch}{span}) at byte {self.offset}"


def read_record(f: BinaryIO, offset: int) -> RawRecord | None:
    """The record at ``offset`` (``f`` positioned there), or None if it is incomplete."""
    fixed = f.read(REC.size)
    if len(fixed) < REC.size:
        return None
    n, kind, seq, nonce, channel, start, end = REC.unpack(fixed)
    if n < REC_FIXED + TAG_BYTES or n > MAX_RECORD:
        raise RecordingError(f"record at byte {offset}: implausible length {n}")
    ct = f.read(n - REC_FIXED)
    if len(ct) < n - REC_FIXED:
        return None
    return RawRecord(offset, fixed, kind, seq, nonce, channel, start, end, ct)


def open_or_raise(sealer: Sealer, rec: RawRecord, name: str) -> bytes:
    try:
        return sealer.open(rec)
    except InvalidTag:
        raise RecordingError(
            f"{name}: {rec.describe()}: authentication failed (tampered, corrupted, "
            "or from another recording)"
        ) from None


# ---------------------------------------------------------------- audio payloads


def encode_audio(segments: list[tuple[int, int]], pcm: bytes | bytearray) -> bytes:
    head = SEG_COUNT.pack(len(segments)) + b"".join(SEG.pack(o, n) for o, n in segments)
    return head + pcm


def decode_audio(plain: bytes, span: int, name: str) -> list[tuple[int, memoryview]]:
    """[(offset in samples from the record's start, PCM)], checked against the span."""
    (count,) = SEG_COUNT.unpack_from(plain)
    pos = SEG_COUNT.size + count * SEG.size
    view = memoryview(plain)
    out: list[tuple[int, memoryview]] = []
    last = 0
    for i in range(count):
        off, n = SEG.unpack_from(plain, SEG_COUNT.size + i * SEG.size)
        if off < last or off + n > span or pos + 2 * n > len(plain):
            raise RecordingError(f"{name}: audio segments inconsistent with the record span")
        out.append((off, view[pos : pos + 2 * n]))
        pos += 2 * n
        last = off + n
    if pos != len(plain):
        raise RecordingError(f"{name}: audio payload has trailing bytes")
    return out


def encode_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_json(plain: bytes, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(plain)
    except ValueError:
        raise RecordingError(f"{name}: malformed JSON payload") from None
    if not isinstance(doc, dict):
        raise RecordingError(f"{name}: malformed JSON payload")
    return doc
