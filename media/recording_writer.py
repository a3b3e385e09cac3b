"""``RecordingWriter``: appends one call recording to an encrypted, crash-safe file.

The writer appends a call's caller and agent audio to
``<root>/<call_id>/<recording_id>.vhrec.part`` as AES-GCM records of about a second per
channel, fsyncs every ``sync_interval_ms`` of media time (and at pause, resume and
finalize), and on ``finalize`` writes the footer, fsyncs and renames the file to
``.vhrec``. It is synchronous and blocking (file I/O, fsync); an asyncio caller runs it
in a worker thread. The public entry point is ``media.recorder``.

Invariant: no plaintext audio reaches the disk; a ``.part`` file always starts with a
complete, durable header and session record (written under a temporary name, then linked
into place); a ``.vhrec`` file is only ever complete, fsynced and finalized; a new nonce
prefix is fsynced (``S`` record) before its first use, so no nonce repeats under a key.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from media.keys import KeyRecord, Keyring
from media.recording_format import (
    CHANNELS,
    KIND_AUDIO,
    KIND_FOOTER,
    KIND_ORIGIN,
    KIND_PAUSE,
    KIND_RESUME,
    KIND_SESSION,
    NO_CHANNEL,
    REC_SIZE,
    SAMPLE_WIDTH,
    SAMPLES_PER_MS,
    SLOT_BYTES,
    TAG_BYTES,
    TRAILER,
    TRAILER_MAGIC,
    RecordingError,
    Sealer,
    encode_audio,
    encode_header,
    encode_json,
    encode_slot,
)
from media.recording_reader import ScanState, scan
from media.recording_types import (
    PART,
    ChannelSummary,
    FinalizedRecording,
    Gap,
    RecorderClosed,
    storage_uri,
)

log = logging.getLogger("voicehub.media.recorder")

MAX_SEGMENTS = 256  # audio segments per record before it is sealed early
_CHANNEL_INDEX: dict[str | int, int] = {**{c: i for i, c in enumerate(CHANNELS)}, 0: 0, 1: 1}


class RecordingWriter:
    """Writes one recording. Not thread-safe: one call at a time (any thread).

    Placement: a frame goes at ``timestamp_ms`` on its channel's timeline; within
    ``jitter_ms`` of where the channel's previous audio ended it is butted against it; a
    frame that starts earlier loses its overlapping samples (counted in
    ``overlap_samples``). Timestamps are authoritative, so agent frames must carry their
    playout time. Frames written while paused are dropped (``dropped_paused_samples``).
    """

    key_record: KeyRecord
    _sealer: Sealer
    _sha: Any  # hashlib.sha256 over every byte written so far (the file checksum)
    _chain: Any  # hashlib.sha256 over the header and each record's clear fields + tag

    def __init__(self, root: Path, call_id: int, recording_id: int) -> None:
        """Use ``create`` or ``reopen``."""
        self.root = Path(root)
        self.call_id = call_id
        self.recording_id = recording_id
        self.storage_uri = storage_uri(call_id, recording_id)
        self.path = self.root / (self.storage_uri + PART)
        self.final_path = self.root / self.storage_uri
        self._fd = -1
        self._fast = False
        self._result: FinalizedRecording | None = None
        self.overlap_samples = 0
        self.dropped_paused_samples = 0
        self.durable_sample = 0
        self.dropped_bytes = 0

    def _configure(self, sync_interval_ms: int, chunk_ms: int, jitter_ms: int) -> None:
        if sync_interval_ms <= 0 or chunk_ms <= 0 or jitter_ms < 0:
            raise ValueError("intervals must be positive")
        self._sync_samples = sync_interval_ms * SAMPLES_PER_MS
        self._chunk_samples = chunk_ms * SAMPLES_PER_MS
        self._jitter = jitter_ms * SAMPLES_PER_MS
        self._bufs = [bytearray(), bytearray()]
        self._buf_start = [0, 0]
        self._segs: list[list[list[int]]] = [[], []]

    # ------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        root_dir: Path,
        recording_id: int,
        call_id: int,
        keyring: Keyring,
        *,
        start_ms: int | None = None,
        sync_interval_ms: int = 2000,
        chunk_ms: int = 1000,
        jitter_ms: int = 10,
    ) -> RecordingWriter:
        """A new recording (``FileExistsError`` if it already has a file).

        ``start_ms`` fixes the recording's time origin (stream ms); by default it is the
        timestamp of the first frame or pause.
        """
        w = cls(root_dir, call_id, recording_id)
        w._configure(sync_interval_ms, chunk_ms, jitter_ms)
        if w.final_path.exists() or w.path.exists():
            raise FileExistsError(f"recording {recording_id} already has a file: {w.path}")
        w.path.parent.mkdir(parents=True, exist_ok=True)
        data_key, w.key_record = keyring.new_data_key()
        start = None if start_ms is None else start_ms * SAMPLES_PER_MS
        header = encode_header(
            recording_id, call_id, secrets.token_bytes(16), w.key_record.key_id, start, time.time()
        )
        w._sealer = Sealer(data_key, header)
        w._init_state(start, header.raw + w._sealer.header_mac(header) + encode_slot(w.key_record))
        tmp = w.path.with_name(f"{w.path.name}.tmp-{secrets.token_hex(4)}")
        w._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            w._write(w._head)
            w._new_session(set())
            os.link(tmp, w.path)  # atomic, never overwrites
        except BaseException:
            os.close(w._fd)
            w._fd = -1
            raise
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(w.path.parent)
        _fsync_dir(w.root)
        w._refresh()
        return w

    def _init_state(self, origin: int | None, head: bytes) -> None:
        self._head = head
        self._sha = hashlib.sha256()
        self._chain = hashlib.sha256(head[:-SLOT_BYTES])  # the key slot is left out
        self._seq = 0
        self._prefix = b""
        self._origin = origin
        self._ends = [origin or 0, origin or 0]
        self._chunks = [0, 0]
        self._samples = [0, 0]
        self._gaps: list[tuple[int, int, str]] = []
        self._paused: tuple[int, str] | None = None
        self._latest = origin or 0
        self._next_sync = self._latest + self._sync_samples

    @classmethod
    def reopen(
        cls,
        root_dir: Path,
        recording_id: int,
        call_id: int,
        keyring: Keyring,
        timestamp_ms: int | None = None,
        *,
        sync_interval_ms: int = 2000,
        chunk_ms: int = 1000,
        jitter_ms: int = 10,
    ) -> RecordingWriter:
        """Continue an unfinished recording after a crash (instead of ``recover``).

        The torn tail is cut off; if ``timestamp_ms`` lies after the kept audio, the span
        in between becomes a marked gap with reason ``recorder_restart``. A recording that
        was paused stays paused.
        """
        w = cls(root_dir, call_id, recording_id)
        w._configure(sync_interval_ms, chunk_ms, jitter_ms)
        with open(w.path, "rb") as f:
            st = scan(f, w.path.name, keyring, strict=False)
        if st.footer is not None:
            raise RecordingError(f"{w.path.name}: already finalized; run recover()")
        w._resume_from(st)
        if timestamp_ms is not None and w._paused is None and w._origin is not None:
            pos = timestamp_ms * SAMPLES_PER_MS
            if pos > w._floor():
                w.pause("recorder_restart", w._floor() // SAMPLES_PER_MS)
                w.resume(timestamp_ms)
        return w

    def _resume_from(self, st: ScanState) -> None:
        """Adopt a tolerant scan's state: truncate the torn tail, start a new session."""
        h = st.header
        if (h.recording_id, h.call_id) != (self.recording_id, self.call_id):
            raise RecordingError(f"{self.path.name}: header names another recording")
        self.key_record, self._sealer = st.key_record, st.sealer
        self.dropped_bytes = os.path.getsize(self.path) - st.valid_end
        if st.problem:
            log.warning("%s: keeping %d bytes: %s", self.path, st.valid_end, st.problem)
        self._init_state(st.origin, b"")
        self._sha, self._chain, self._seq = st.sha, st.chain, st.records
        floor = st.floor()
        self._ends = [max(e if e is not None else floor, floor) for e in st.chan_end]
        self._chunks, self._samples = list(st.chan_chunks), list(st.chan_samples)
        self._gaps, self._paused = list(st.gaps), st.open_gap
        self._latest = self.durable_sample = max(st.latest, floor)
        self._next_sync = self._latest + self._sync_samples
        self._fd = os.open(self.path, os.O_WRONLY)
        os.ftruncate(self._fd, st.valid_end)
        os.lseek(self._fd, st.valid_end, os.SEEK_SET)
        self._new_session(st.prefixes)
        self._refresh()

    def _new_session(self, used: set[bytes]) -> None:
        """Announce a fresh nonce prefix durably before any record uses it."""
        prefix = secrets.token_bytes(4)
        while prefix in used:
            prefix = secrets.token_bytes(4)
        self._prefix = prefix
        self._record(KIND_SESSION, NO_CHANNEL, 0, 0, b"")
        os.fsync(self._fd)

    # ------------------------------------------------------------ writing

    def write(self, channel: str | int, pcm: bytes, timestamp_ms: int) -> None:
        """Add one frame of canonical PCM (16-bit LE mono 16 kHz) at stream time ``ms``."""
        ch = _CHANNEL_INDEX.get(channel)
        if self._fast and ch is not None:  # the common case: the frame continues the chunk
            end = self._ends[ch]
            d = timestamp_ms * SAMPLES_PER_MS - end
            buf = self._bufs[ch]
            if buf and -self._jitter <= d <= self._jitter and not len(pcm) & 1:
                e = end + (len(pcm) >> 1)
                start = self._buf_start[ch]
                if e - start <= self._chunk_samples:
                    self._segs[ch][-1][1] += len(pcm) >> 1
                    buf += pcm
                    self._ends[ch] = e
                    if e - start >= self._chunk_samples:
                        self._seal(ch)
                    if e > self._latest:
                        self._latest = e
                        if e >= self._next_sync:
                            self.sync()
                    return
        self._write_general(ch, channel, pcm, timestamp_ms)

    def _write_general(
        self, ch: int | None, channel: str | int, pcm: bytes, timestamp_ms: int
    ) -> None:
        if ch is None:
            raise ValueError(f"unknown channel {channel!r} (expected caller or agent)")
        if self._fd < 0:
            raise RecorderClosed(f"recording {self.recording_id} is closed")
        n = len(pcm) >> 1
        if len(pcm) & 1:
            raise ValueError("PCM length must be a whole number of 16-bit samples")
        if self._paused is not None:
            self.dropped_paused_samples += n
            return
        if n == 0:
            return
        pos = timestamp_ms * SAMPLES_PER_MS
        if self._origin is None:
            self._set_origin(pos)
        end = self._ends[ch]
        d = pos - end
        if -self._jitter <= d <= self._jitter:
            pos = end
        elif d < 0:
            if -d >= n:
                self.overlap_samples += n
                return
            pcm = pcm[-2 * d :]
            n += d
            self.overlap_samples -= d
            pos = end
        buf, segs = self._bufs[ch], self._segs[ch]
        if buf and (
            pos + n - self._buf_start[ch] > self._chunk_samples or len(segs) >= MAX_SEGMENTS
        ):
            self._seal(ch)
            buf, segs = self._bufs[ch], self._segs[ch]
        if not buf:
            self._buf_start[ch] = pos
            segs.append([0, n])
        elif pos == end:
            segs[-1][1] += n
        else:
            segs.append([pos - self._buf_start[ch], n])
        buf += pcm
        self._ends[ch] = end = pos + n
        if end - self._buf_start[ch] >= self._chunk_samples:
            self._seal(ch)
        if end > self._latest:
            self._latest = end
            if end >= self._next_sync:
                self.sync()

    def write_many(self, frames: Iterable[tuple[str | int, bytes, int]]) -> None:
        """``write`` for each ``(channel, pcm, timestamp_ms)`` (one worker-thread hop)."""
        for channel, pcm, ts in frames:
            self.write(channel, pcm, ts)

    def pause(self, reason: str, timestamp_ms: int) -> None:
        """Open a marked gap at ``timestamp_ms`` (or where the stored audio ends, if later)."""
        self._check_open()
        if self._paused is not None:
            return
        pos = timestamp_ms * SAMPLES_PER_MS
        if self._origin is None:
            self._set_origin(pos)
        self._seal_all()
        start = max(pos, self._floor())
        self._record(KIND_PAUSE, NO_CHANNEL, start, start, encode_json({"reason": reason}))
        self._paused = (start, reason)
        self._refresh()
        self._latest = max(self._latest, start)
        self.sync()

    def resume(self, timestamp_ms: int) -> None:
        """Close the gap at ``timestamp_ms``; audio before that point is dropped."""
        self._check_open()
        self._resume_at(timestamp_ms * SAMPLES_PER_MS)
        self.sync()

    def _resume_at(self, pos: int) -> None:
        if self._paused is None:
            return
        start, reason = self._paused
        end = max(pos, start)
        self._record(KIND_RESUME, NO_CHANNEL, start, end, b"")
        self._gaps.append((start, end, reason))
        self._ends = [max(e, end) for e in self._ends]
        self._paused = None
        self._refresh()
        self._latest = max(self._latest, end)

    def sync(self) -> None:
        """Seal pending audio into records and fsync: a crash now loses nothing before."""
        self._check_open()
        self._seal_all()
        os.fsync(self._fd)
        self.durable_sample = self._latest
        self._next_sync = self._latest + self._sync_samples

    @property
    def paused(self) -> bool:
        return self._paused is not None

    @property
    def durable_ms(self) -> int:
        """Media time (ms from the start) up to which every written frame is fsynced."""
        return max(0, self.durable_sample - (self._origin or 0)) // SAMPLES_PER_MS

    def finalize(self, end_ms: int | None = None, *, recovered: bool = False) -> FinalizedRecording:
        """Write the footer, fsync, rename to ``.vhrec``; idempotent.

        ``end_ms`` (stream time of the stop) extends the recording with trailing silence;
        an open pause is closed there (or where it began).
        """
        if self._result is not None:
            return self._result
        self._check_open()
        end = None if end_ms is None else end_ms * SAMPLES_PER_MS
        if self._paused is not None:
            self._resume_at(end if end is not None else self._paused[0])
        self._seal_all()
        if self._origin is None:
            self._origin = end if end is not None else 0
        o = self._origin
        end_sample = max(self._floor(), end if end is not None else o)
        duration_ms = -(-(end_sample - o) // SAMPLES_PER_MS)
        dropped = self.dropped_bytes
        manifest = {
            "recording_id": self.recording_id,
            "call_id": self.call_id,
            "key_id": self.key_record.key_id,
            "records": self._seq,
            "records_sha256": self._chain.hexdigest(),
            "origin_sample": o,
            "end_sample": end_sample,
            "duration_ms": duration_ms,
            "channels": {c: [self._chunks[i], self._samples[i]] for i, c in enumerate(CHANNELS)},
            "gaps": [list(g) for g in self._gaps],
            "finalized_by": "recover" if recovered else "writer",
            "dropped_bytes": dropped,
            "overlap_samples": self.overlap_samples,
            "dropped_paused_samples": self.dropped_paused_samples,
        }
        footer_at = os.lseek(self._fd, 0, os.SEEK_CUR)
        self._record(KIND_FOOTER, NO_CHANNEL, o, end_sample, encode_json(manifest))
        self._write(TRAILER.pack(footer_at, TRAILER_MAGIC))
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._refresh()
        os.rename(self.path, self.final_path)
        _fsync_dir(self.final_path.parent)
        self._result = FinalizedRecording(
            self.recording_id,
            self.call_id,
            self.storage_uri,
            self._sha.hexdigest(),
            self.key_record.key_id,
            self.key_record,
            duration_ms,
            o // SAMPLES_PER_MS,
            {c: ChannelSummary(self._chunks[i], self._samples[i]) for i, c in enumerate(CHANNELS)},
            tuple(
                Gap((s - o) // SAMPLES_PER_MS, -(-(e - o) // SAMPLES_PER_MS), r)
                for s, e, r in self._gaps
            ),
            recovered,
            dropped,
        )
        return self._result

    close = finalize

    def abort(self) -> None:
        """Close without finalizing (fsynced): the ``.part`` stays for ``recover``/``reopen``."""
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
            self._refresh()

    # ------------------------------------------------------------ internals

    def _refresh(self) -> None:
        """``write``'s fast path is open: file open, not paused, time origin known."""
        self._fast = self._fd >= 0 and self._paused is None and self._origin is not None

    def _check_open(self) -> None:
        if self._fd < 0:
            raise RecorderClosed(f"recording {self.recording_id} is closed")

    def _floor(self) -> int:
        return max(max(self._ends), self._origin or 0)

    def _set_origin(self, pos: int) -> None:
        self._origin = pos
        self._ends = [pos, pos]
        self._latest = max(self._latest, pos)
        self._next_sync = pos + self._sync_samples
        self._record(KIND_ORIGIN, NO_CHANNEL, pos, pos, b"")
        self._refresh()

    def _seal_all(self) -> None:
        for ch in (0, 1):
            if self._bufs[ch]:
                self._seal(ch)

    def _seal(self, ch: int) -> None:
        buf, segs = self._bufs[ch], self._segs[ch]
        start = self._buf_start[ch]
        end = start + segs[-1][0] + segs[-1][1]
        self._record(KIND_AUDIO, ch, start, end, encode_audio([(o, n) for o, n in segs], buf))
        self._chunks[ch] += 1
        self._samples[ch] += len(buf) // SAMPLE_WIDTH
        self._bufs[ch] = bytearray()
        self._segs[ch] = []

    def _record(self, kind: int, channel: int, start: int, end: int, plain: bytes) -> None:
        rec = self._sealer.seal(kind, self._seq, self._prefix, channel, start, end, plain)
        self._chain.update(rec[:REC_SIZE] + rec[-TAG_BYTES:])
        self._write(rec)
        self._seq += 1

    def _write(self, data: bytes) -> None:
        self._sha.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
