"""The recorder's result types and file naming (shared by writer, recovery and callers).

Invariant: a ``FinalizedRecording`` describes a file that is complete, fsynced and renamed
into place; its ``checksum`` is the SHA-256 of exactly those bytes and its ``storage_uri``
is relative to the recorder's root directory (``<call_id>/<recording_id>.vhrec``).
"""

from __future__ import annotations

from dataclasses import dataclass

from media.keys import KeyRecord
from media.recording_format import SAMPLES_PER_MS

SUFFIX = ".vhrec"
PART = ".part"


@dataclass(frozen=True, slots=True)
class Gap:
    """A marked gap (pause): no audio stored; ms from the recording's start."""

    start_ms: int
    end_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelSummary:
    chunks: int
    samples: int

    @property
    def audio_ms(self) -> int:
        return self.samples // SAMPLES_PER_MS


@dataclass(frozen=True, slots=True)
class FinalizedRecording:
    """What ``recording_finalize`` needs (and a bit more), for one finalized file."""

    recording_id: int
    call_id: int
    storage_uri: str  # relative to the recorder's root directory
    checksum: str  # SHA-256 hex of the final file
    key_id: str
    key_record: KeyRecord  # store it (the database row): the file alone is not enough after shred
    duration_ms: int
    start_ms: int  # the stream time of the recording's first sample
    channels: dict[str, ChannelSummary]
    gaps: tuple[Gap, ...]
    recovered: bool = False  # finalized by ``recover`` after a crash
    dropped_bytes: int = 0  # torn or unauthenticated tail bytes recovery dropped


class RecorderClosed(Exception):
    """The writer was finalized or aborted."""


def storage_uri(call_id: int, recording_id: int) -> str:
    return f"{call_id}/{recording_id}{SUFFIX}"
