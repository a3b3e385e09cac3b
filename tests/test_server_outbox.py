"""Unit tests of the per-connection send queue and the wire codec (no sockets)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from voicehub.server.codec import (
    Call,
    Codec,
    Hello,
    TxUpdate,
    Update,
    decode_client,
)
from voicehub.server.errors import ApiError
from voicehub.server.outbox import CloseRequested, Outbox
from voicehub.server.sessions import net_delta


class FakeGate:
    def __init__(self) -> None:
        self.durable = 0
        self.changed = asyncio.Event()

    def now(self) -> int:
        return self.durable

    async def wait(self, offset: int) -> None:
        while self.durable < offset:
            self.changed.clear()
            await self.changed.wait()

    def advance(self, offset: int) -> None:
        self.durable = offset
        self.changed.set()


async def test_messages_leave_in_order_once_durable() -> None:
    g = FakeGate()
    box = Outbox(100, g.now, g.wait)
    box.push(1, "tx@1")
    box.push(1, "result@1")
    box.push(0, "error")  # depends on nothing, but must not overtake
    box.push(2, "tx@2")
    take = asyncio.create_task(box.take())
    await asyncio.sleep(0.01)
    assert not take.done(), "nothing is released before offset 1 is durable"
    g.advance(1)
    assert [m for _, m in await take] == ["tx@1", "result@1", "error"]
    take = asyncio.create_task(box.take())
    await asyncio.sleep(0.01)
    assert not take.done()
    g.advance(5)
    assert [m for _, m in await take] == ["tx@2"]


async def test_backlog_of_a_slow_reader_closes_with_4000() -> None:
    g = FakeGate()
    g.durable = 10
    box = Outbox(3, g.now, g.wait)
    for i in range(3):
        box.push(i + 1, f"m{i}")
    box.push(4, "one too many")
    assert box.closing and not box.items
    with pytest.raises(CloseRequested) as e:
        await box.take()
    assert e.value.code == 4000
    box.push(5, "ignored")
    assert not box.items


async def test_waiting_for_fsync_is_not_a_slow_reader() -> None:
    g = FakeGate()
    box = Outbox(3, g.now, g.wait)
    for i in range(6):  # head not durable yet: tolerated up to 4x the limit
        box.push(1, i)
    assert not box.closing
    for i in range(6):
        box.push(1, i)
    assert len(box) == 12 and not box.closing
    box.push(1, "13th")
    assert box.closing


async def test_finish_flushes_then_closes() -> None:
    g = FakeGate()
    g.durable = 10
    box = Outbox(10, g.now, g.wait)
    box.push(1, "a")
    box.finish(1001, "bye")
    box.push(2, "b")  # still accepted while flushing
    assert [m for _, m in await box.take()] == ["a", "b"]
    with pytest.raises(CloseRequested) as e:
        await box.take()
    assert (e.value.code, e.value.reason) == (1001, "bye")


def test_codec_decodes_both_encodings_and_classifies_errors() -> None:
    assert decode_client('{"type":"hello"}', False) == Hello()
    m = decode_client(
        msgspec.msgpack.encode({"type": "call", "request_id": 1, "reducer": "r"}), True
    )
    assert m == Call(request_id=1, reducer="r", args=None)
    for frame, code in [
        ("nope", "malformed_message"),
        ('{"type": "x"}', "unknown_message"),
        ('"str"', "invalid_message"),
        ('{"type": "call", "request_id": "", "reducer": "r"}', "invalid_message"),
        ('{"type": "call", "request_id": 1.5, "reducer": "r"}', "invalid_message"),
    ]:
        with pytest.raises(ApiError) as e:
            decode_client(frame, False)
        assert e.value.code == code, frame


def test_codec_encodes_per_subprotocol() -> None:
    msg = TxUpdate(3, [Update("q", [(1, b"\x00")], [])])
    text = Codec("v1.json").encode(msg)
    assert text["text"] == (
        '{"type":"tx_update","offset":3,"updates":[{"query_id":"q","inserts":[[1,"AA=="]],'
        '"deletes":[]}]}'
    )
    binary = Codec("v1.msgpack").encode(msg)
    assert msgspec.msgpack.decode(binary["bytes"])["updates"][0]["inserts"] == [[1, b"\x00"]]


def test_net_delta_is_a_multiset_difference() -> None:
    then = [(1, "a"), (2, "b"), (2, "b"), (3, {"k": 1, "j": 2})]
    now = [(2, "b"), (3, {"j": 2, "k": 1}), (4, "d")]
    ins, dels = net_delta(now, then)
    assert ins == [(4, "d")]
    assert sorted(dels, key=repr) == [(1, "a"), (2, "b")]
