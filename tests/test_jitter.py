"""The RTP jitter buffer: order restored, duplicates and late packets dropped, losses
concealed with silence of the packet size, sequence numbers wrapping at 2^16; and the
codecs re-frame 30 ms peers to canonical 20 ms frames."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.codecs import CANONICAL_FRAME_BYTES, Decoder, pcm16_to_ulaw
from providers.jitter import JitterBuffer


def pkt(i: int) -> bytes:
    return bytes([i % 251 + 1]) * 160


def test_reorders_and_drops_duplicates() -> None:
    jb = JitterBuffer(depth=3)
    out: list[bytes] = []
    for s in (10, 12, 11, 13, 14):
        jb.push(s, pkt(s))
        out += jb.pop()
    assert out == [pkt(10), pkt(11), pkt(12), pkt(13), pkt(14)]
    jb.push(16, pkt(16))
    jb.push(16, pkt(16))
    assert jb.stats.duplicates == 1 and jb.stats.concealed == 0


def test_a_lost_packet_is_concealed_and_a_late_one_dropped() -> None:
    jb = JitterBuffer(depth=2)
    out: list[bytes] = []
    for s in (1, 3, 4, 5):
        jb.push(s, pkt(s))
        out += jb.pop()
    assert out == [pkt(1), bytes(160), pkt(3), pkt(4), pkt(5)]
    jb.push(2, pkt(2))  # too late: its slot was concealed
    assert jb.pop() == [] and jb.stats.late == 1 and jb.stats.concealed == 1


def test_sequence_numbers_wrap() -> None:
    jb = JitterBuffer(depth=2)
    out: list[bytes] = []
    for s in (65535, 65534, 0, 1):
        jb.push(s, pkt(s))
        out += jb.pop()
    assert out == [pkt(65534), pkt(65535), pkt(0), pkt(1)]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(1, 60), st.integers(1, 6), st.randoms())
def test_any_shuffle_within_the_depth_comes_out_in_order(
    start: int, n: int, depth: int, rnd: random.Random
) -> None:
    seqs = [(start + i) & 0xFFFF for i in range(n)]
    # each packet arrives up to ``depth`` places away from its turn
    arrival = sorted(range(n), key=lambda i: i + rnd.random() * depth)
    jb = JitterBuffer(depth=depth + 1)
    out: list[bytes] = []
    for k in arrival:
        jb.push(seqs[k], pkt(k))
        out += jb.pop()
    out += jb.flush()
    assert out == [pkt(k) for k in range(n)]
    assert jb.stats.concealed == 0


def test_thirty_ms_peers_become_twenty_ms_frames() -> None:
    ulaw = pcm16_to_ulaw(bytes(480))  # one 30 ms packet at 8 kHz = 240 samples
    d = Decoder("mulaw", 8000)
    frames = [f for _ in range(10) for f in d.decode(ulaw)]  # 300 ms
    assert all(len(f) == CANONICAL_FRAME_BYTES for f in frames)
    assert 14 <= len(frames) <= 15
