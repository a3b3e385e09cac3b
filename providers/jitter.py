"""A jitter buffer for RTP-style packet streams (SIP and WebRTC adapters).

Packets arrive with a 16-bit sequence number, possibly late, duplicated or out of order.
The buffer holds up to ``depth`` packets, releases them strictly in sequence order, drops
duplicates and packets that arrive after their slot was played, and - when a packet is
still missing while ``depth`` newer ones wait - conceals it with silence of the usual
packet size so the timeline (and the recording) keeps its length. Sequence numbers wrap
at 65536 (RFC 3550 §A.1 arithmetic).

Invariant: ``pop`` returns payloads in sequence order with no gaps and no repeats; the
number of concealed packets is counted (``concealed``), never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass


def _newer(a: int, b: int) -> bool:
    """Whether sequence number ``a`` is after ``b`` (mod 2^16)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


@dataclass
class JitterStats:
    received: int = 0
    duplicates: int = 0
    late: int = 0
    concealed: int = 0


class JitterBuffer:
    def __init__(self, depth: int = 4, silence: bytes = b"") -> None:
        if depth < 1:
            raise ValueError("the jitter buffer depth must be at least 1")
        self.depth = depth
        self.silence = silence
        self._next: int | None = None
        self._held: dict[int, bytes] = {}
        self.stats = JitterStats()

    def push(self, seq: int, payload: bytes) -> None:
        seq &= 0xFFFF
        st = self.stats
        if self._next is not None and not _newer(seq, self._next) and seq != self._next:
            st.late += 1  # its turn has passed (played or concealed)
            return
        if seq in self._held:
            st.duplicates += 1
            return
        st.received += 1
        if not self.silence:
            self.silence = bytes(len(payload))
        self._held[seq] = payload

    def _oldest(self) -> int:
        it = iter(self._held)
        first = next(it)
        for s in it:
            if _newer(first, s):
                first = s
        return first

    def pop(self) -> list[bytes]:
        """Every payload that may be played now, in order (concealing what is too late).

        The stream starts at the oldest of the first ``depth`` packets, so the very first
        packets may arrive out of order too."""
        out: list[bytes] = []
        if self._next is None:
            if len(self._held) < self.depth:
                return out
            self._next = self._oldest()
        while self._next is not None and self._held:
            nxt = self._next
            if nxt in self._held:
                out.append(self._held.pop(nxt))
            elif len(self._held) >= self.depth:
                out.append(self.silence)  # lost, or later than the buffer waits
                self.stats.concealed += 1
            else:
                break
            self._next = (nxt + 1) & 0xFFFF
        return out

    def flush(self) -> list[bytes]:
        """At the end of the stream: everything held, gaps concealed."""
        out: list[bytes] = []
        if self._next is None and self._held:
            self._next = self._oldest()
        while self._held and self._next is not None:
            nxt = self._next
            if nxt in self._held:
                out.append(self._held.pop(nxt))
            else:
                out.append(self.silence)
                self.stats.concealed += 1
            self._next = (nxt + 1) & 0xFFFF
        return out

    def __len__(self) -> int:
        return len(self._held)
