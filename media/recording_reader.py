"""Reading recording files: authenticate every record, rebuild the timeline, export WAV.

``scan`` walks a file record by record. Strict (``verify``, ``export_wav``): any damage is
a ``RecordingError`` naming the record; a file without a valid footer and trailer is
refused. Tolerant (crash recovery): it stops at the first incomplete or unauthenticated
record and reports where, so the caller keeps the longest authenticated prefix.

Invariant: no audio leaves this module unless every record of the file authenticated, the
sequence numbers are dense, each channel's spans are ordered and outside the marked gaps,
and the footer's SHA-256, record count, timeline and gaps match what was read. The WAV is
written to a temporary name and renamed only once complete.
"""

from __future__ import annotations

import hashlib
import os
import sys
import wave
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from media.keys import KeyRecord, Keyring
from media.recording_format import (
    CHANNELS,
    KIND_AUDIO,
    KIND_FOOTER,
    KIND_ORIGIN,
    KIND_PAUSE,
    KIND_RESUME,
    KIND_SESSION,
    RATE,
    SAMPLE_WIDTH,
    SAMPLES_PER_MS,
    TAG_BYTES,
    TRAILER,
    TRAILER_MAGIC,
    Header,
    RawRecord,
    RecordingError,
    Sealer,
    decode_audio,
    decode_json,
    decode_slot,
    open_or_raise,
    read_header,
    read_record,
)

EXPORT_WINDOW = 30 * RATE  # samples per channel assembled in memory at a time


@dataclass
class ScanState:
    """What a scan established about a file (also the state a writer resumes from)."""

    header: Header
    key_record: KeyRecord
    sealer: Sealer
    records: int = 0  # the next sequence number
    valid_end: int = 0  # byte offset after the last authenticated non-footer record
    problem: str | None = None  # tolerant scans: why the scan stopped early
    origin: int | None = None
    prefixes: set[bytes] = field(default_factory=set)
    prefix: bytes = b""
    chan_end: list[int | None] = field(default_factory=lambda: [None, None])
    chan_chunks: list[int] = field(default_factory=lambda: [0, 0])
    chan_samples: list[int] = field(default_factory=lambda: [0, 0])
    gaps: list[tuple[int, int, str]] = field(default_factory=list)
    open_gap: tuple[int, str] | None = None
    latest: int = 0  # the furthest sample position any record reached
    footer: dict[str, Any] | None = None
    sha: Any = None  # hashlib sha256 over bytes [0, valid_end)
    chain: Any = None  # sha256 over header (no key slot) + each record's clear fields + tag
    audio: list[tuple[int, int, int, int]] = field(default_factory=list)  # off, ch, start, end

    def floor(self) -> int:
        """Where the next audio or gap may start: after all stored audio and gaps."""
        ends = [e for e in self.chan_end if e is not None]
        ends += [g[1] for g in self.gaps]
        if self.origin is not None:
            ends.append(self.origin)
        return max(ends) if ends else 0


def resolve_key(
    header: Header, slot: bytes, keyring: Keyring, key_record: KeyRecord | None, name: str
) -> tuple[KeyRecord, Sealer]:
    if key_record is not None and key_record.key_id != header.key_id:
        raise RecordingError(
            f"{name}: key record {key_record.key_id} is not this recording's key "
            f"({header.key_id}, recording {header.recording_id})"
        )
    rec = key_record or decode_slot(slot, header.key_id)
    if rec is None:
        raise RecordingError(
            f"{name}: the header's wrapped key was shredded; pass the recording's KeyRecord"
        )
    sealer = Sealer(keyring.unwrap(rec), header)
    return rec, sealer


def scan(
    f: BinaryIO,
    name: str,
    keyring: Keyring,
    *,
    strict: bool,
    key_record: KeyRecord | None = None,
) -> ScanState:
    f.seek(0)
    header, mac, slot = read_header(f, name)
    rec_key, sealer = resolve_key(header, slot, keyring, key_record, name)
    sealer.check_header(header, mac, name)
    st = ScanState(header, rec_key, sealer, origin=header.start_sample)
    st.sha = hashlib.sha256(header.raw + mac + slot)
    st.chain = hashlib.sha256(header.raw + mac)
    st.valid_end = offset = header.size
    size = os.fstat(f.fileno()).st_size
    while True:
        f.seek(offset)
        try:
            rec = read_record(f, offset)
            if rec is None:
                if offset == size and not strict:
                    break
                raise RecordingError(
                    f"{name}: truncated at byte {offset} after record {st.records - 1}"
                    + ("" if offset < size else " (no footer: not finalized)")
                )
            _apply(st, rec, name)
        except RecordingError as e:
            if strict:
                raise
            st.problem = str(e)
            break
        if rec.kind == KIND_FOOTER:
            _check_footer(st, rec, f, size, name, strict)
            break
        st.sha.update(rec.fixed + rec.ciphertext)
        st.chain.update(rec.fixed + rec.ciphertext[-TAG_BYTES:])
        offset += rec.size
        st.valid_end = offset
    return st


def _apply(st: ScanState, rec: RawRecord, name: str) -> None:
    """Authenticate ``rec`` and fold it into the state (RecordingError if inconsistent)."""
    if rec.seq != st.records:
        raise RecordingError(
            f"{name}: {rec.describe()}: expected sequence number {st.records} "
            "(records reordered, removed or duplicated)"
        )
    plain = open_or_raise(st.sealer, rec, name)
    where = f"{name}: {rec.describe()}"
    if rec.nonce[4:] != rec.seq.to_bytes(8, "little"):
        raise RecordingError(f"{where}: nonce does not carry the sequence number")
    if rec.kind == KIND_SESSION:
        if rec.nonce[:4] in st.prefixes:
            raise RecordingError(f"{where}: nonce prefix reused")
        st.prefixes.add(rec.nonce[:4])
        st.prefix = rec.nonce[:4]
    elif rec.nonce[:4] != st.prefix or not st.prefix:
        raise RecordingError(f"{where}: nonce outside any announced session")
    if rec.kind == KIND_ORIGIN:
        if st.origin is not None:
            raise RecordingError(f"{where}: second time origin")
        st.origin = rec.start
    elif rec.kind == KIND_AUDIO:
        ch = rec.channel
        if ch >= len(CHANNELS) or st.origin is None or st.open_gap is not None:
            raise RecordingError(f"{where}: audio outside the recording's timeline")
        prev = st.chan_end[ch]
        lo = max(st.origin, prev if prev is not None else st.origin, *(g[1] for g in st.gaps[-1:]))
        if rec.end <= rec.start or rec.start < lo:
            raise RecordingError(f"{where}: audio overlaps earlier audio, a gap, or the start")
        segs = decode_audio(plain, rec.end - rec.start, where)
        st.chan_end[ch] = rec.end
        st.chan_chunks[ch] += 1
        st.chan_samples[ch] += sum(len(pcm) // SAMPLE_WIDTH for _, pcm in segs)
        st.audio.append((rec.offset, ch, rec.start, rec.end))
    elif rec.kind == KIND_PAUSE:
        if st.open_gap is not None or st.origin is None or rec.start < st.floor():
            raise RecordingError(f"{where}: pause overlaps audio or another pause")
        st.open_gap = (rec.start, str(decode_json(plain, where).get("reason", "")))
    elif rec.kind == KIND_RESUME:
        if st.open_gap is None or rec.start != st.open_gap[0] or rec.end < rec.start:
            raise RecordingError(f"{where}: resume without a matching pause")
        st.gaps.append((rec.start, rec.end, st.open_gap[1]))
        st.open_gap = None
    elif rec.kind == KIND_FOOTER:  # not counted: a footer that fails its checks is cut off
        st.footer = decode_json(plain, where)
        return
    elif rec.kind != KIND_SESSION:
        raise RecordingError(f"{where}: unknown record kind")
    st.latest = max(st.latest, rec.end, rec.start)
    st.records += 1


def _check_footer(
    st: ScanState, rec: RawRecord, f: BinaryIO, size: int, name: str, strict: bool
) -> None:
    m = st.footer or {}
    problems = []
    if m.get("records_sha256") != st.chain.hexdigest():
        problems.append("records hash differs (records before the footer were changed)")
    if m.get("records") != rec.seq:
        problems.append(f"footer lists {m.get('records')} records, found {rec.seq}")
    if st.open_gap is not None:
        problems.append("a pause is still open")
    if [list(g) for g in st.gaps] != m.get("gaps"):
        problems.append("gaps differ from the footer's")
    chans = {c: [st.chan_chunks[i], st.chan_samples[i]] for i, c in enumerate(CHANNELS)}
    if m.get("channels") != chans:
        problems.append("channel summary differs from the footer's")
    origin, end = m.get("origin_sample"), m.get("end_sample")
    if not isinstance(origin, int) or not isinstance(end, int):
        problems.append("footer lacks the timeline")
    elif (st.origin is not None and origin != st.origin) or end < st.floor():
        problems.append("footer timeline differs from the records'")
    elif m.get("duration_ms") != -(-(end - origin) // SAMPLES_PER_MS):
        problems.append("footer duration inconsistent")
    f.seek(rec.offset + rec.size)
    trailer = f.read(TRAILER.size + 1)
    if len(trailer) != TRAILER.size or TRAILER.unpack(trailer) != (rec.offset, TRAILER_MAGIC):
        problems.append("bad trailer, or bytes after it")
    if problems:
        st.footer = None
        msg = f"{name}: {rec.describe()}: " + "; ".join(problems)
        if strict:
            raise RecordingError(msg)
        st.problem = msg
        return
    if st.origin is None:
        st.origin = origin


# ---------------------------------------------------------------- public reading API


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """A verified finalized file: the footer's manifest plus the file's checksum."""

    recording_id: int
    call_id: int
    key_id: str
    key_record: KeyRecord  # the key record used (the header's, or the one passed in)
    checksum: str
    duration_ms: int
    origin_ms: int
    gaps: tuple[tuple[int, int, str], ...]  # (start_ms, end_ms, reason) from the start
    channels: dict[str, dict[str, int]]
    manifest: dict[str, Any]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _verified(
    path: Path,
    keyring: Keyring,
    key_record: KeyRecord | None,
    expected_checksum: str | None,
) -> tuple[ScanState, RecordingInfo]:
    name = Path(path).name
    checksum = _sha256_file(path)
    if expected_checksum is not None and checksum != expected_checksum:
        raise RecordingError(f"{name}: checksum {checksum} differs from {expected_checksum}")
    with open(path, "rb") as f:
        st = scan(f, name, keyring, strict=True, key_record=key_record)
    m = st.footer
    if m is None or st.origin is None:
        raise RecordingError(f"{name}: no footer (not finalized)")
    o = st.origin
    info = RecordingInfo(
        st.header.recording_id,
        st.header.call_id,
        st.header.key_id,
        st.key_record,
        checksum,
        int(m["duration_ms"]),
        o // SAMPLES_PER_MS,
        tuple(((s - o) // SAMPLES_PER_MS, -(-(e - o) // SAMPLES_PER_MS), r) for s, e, r in st.gaps),
        {
            c: {"chunks": st.chan_chunks[i], "samples": st.chan_samples[i]}
            for i, c in enumerate(CHANNELS)
        },
        m,
    )
    return st, info


def verify(
    path: Path,
    keyring: Keyring,
    *,
    key_record: KeyRecord | None = None,
    expected_checksum: str | None = None,
) -> RecordingInfo:
    """Authenticate a finalized file end to end; ``RecordingError`` names what is wrong."""
    return _verified(Path(path), keyring, key_record, expected_checksum)[1]


def export_wav(
    path: Path,
    keyring: Keyring,
    out_path: Path,
    *,
    key_record: KeyRecord | None = None,
    expected_checksum: str | None = None,
) -> RecordingInfo:
    """Decrypt a verified recording to a 16 kHz 16-bit stereo WAV (left caller, right agent).

    Time-aligned by the stored positions; silence where a channel had no audio and in every
    marked gap. The WAV holds exactly ``duration_ms * 16`` sample frames. The whole file is
    verified before anything is written.
    """
    path, out_path = Path(path), Path(out_path)
    st, info = _verified(path, keyring, key_record, expected_checksum)
    assert st.origin is not None
    total = info.duration_ms * SAMPLES_PER_MS
    origin, name = st.origin, path.name
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    by_chan = [[a for a in st.audio if a[1] == ch] for ch in range(len(CHANNELS))]
    nxt = [0, 0]
    try:
        with open(path, "rb") as f, wave.open(str(tmp), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(SAMPLE_WIDTH)
            w.setframerate(RATE)
            for w0 in range(0, total, EXPORT_WINDOW):
                w1 = min(total, w0 + EXPORT_WINDOW)
                mono = [bytearray(2 * (w1 - w0)) for _ in CHANNELS]
                for ch, recs in enumerate(by_chan):
                    i = nxt[ch]
                    while i < len(recs) and recs[i][3] - origin <= w0:
                        i += 1
                    nxt[ch] = i
                    while i < len(recs) and recs[i][2] - origin < w1:
                        _place(f, st.sealer, recs[i], origin, w0, w1, mono[ch], name)
                        i += 1
                for gs, ge, _ in st.gaps:
                    a, b = max(gs - origin, w0) - w0, min(ge - origin, w1) - w0
                    if a < b:
                        for buf in mono:
                            buf[2 * a : 2 * b] = bytes(2 * (b - a))
                stereo = array("h", bytes(4 * (w1 - w0)))
                stereo[0::2] = array("h", mono[0])
                stereo[1::2] = array("h", mono[1])
                if sys.byteorder == "big":  # pragma: no cover - WAV is little-endian
                    stereo.byteswap()
                w.writeframes(stereo.tobytes())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def _place(
    f: BinaryIO,
    sealer: Sealer,
    entry: tuple[int, int, int, int],
    origin: int,
    w0: int,
    w1: int,
    out: bytearray,
    name: str,
) -> None:
    """Decrypt one audio record and copy the part inside [w0, w1) into ``out``."""
    offset, _, start, end = entry
    f.seek(offset)
    rec = read_record(f, offset)
    if rec is None or rec.start != start or rec.end != end:
        raise RecordingError(f"{name}: record at byte {offset} changed during export")
    plain = open_or_raise(sealer, rec, name)
    base = start - origin
    for off, pcm in decode_audio(plain, end - start, name):
        a = base + off  # segment start, samples from the recording's start
        b = a + len(pcm) // SAMPLE_WIDTH
        lo, hi = max(a, w0), min(b, w1)
        if lo < hi:
            out[2 * (lo - w0) : 2 * (hi - w0)] = pcm[2 * (lo - a) : 2 * (hi - a)]
