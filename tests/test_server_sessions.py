"""Durable sessions, resume with catch-up, take-over, slow consumers, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import websockets
from server_support import Client, connect, eventually, http, running

from voicehub.server import sessions

SEG_BY_CALL = "SELECT id, call_id, text FROM segment WHERE call_id = $1"


def fold(rows: Counter, msg: dict[str, Any], query_id: Any) -> None:
    """Apply one subscribed/tx_update message to a multiset of rows."""
    if msg["type"] == "subscribed":
        rows.clear()
        rows.update(tuple(r) for r in msg["rows"])
        return
    for u in msg["updates"]:
        if u["query_id"] == query_id:
            rows.subtract(tuple(r) for r in u["deletes"])
            rows.update(tuple(r) for r in u["inserts"])
    for k in [k for k, n in rows.items() if n == 0]:
        del rows[k]


async def rest_call(url: str, reducer: str, args: Any) -> dict:
    status, body = await http("POST", f"{url}/v1/reducers/{reducer}", args)
    assert status == 200, body
    return body


async def test_resume_gets_exactly_what_it_missed(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            rows: Counter = Counter()
            fold(rows, await c.subscribe("a", SEG_BY_CALL, ["a"]), "a")
            await c.call(1, "shout", ["a", "one"])
            fold(rows, await c.expect("tx_update"), "a")
            last = (await c.expect("call_result"))["offset"]
        # while disconnected: an insert, an update-like pair, a delete is not possible via
        # reducers here, so insert twice plus an unrelated commit
        await rest_call(srv.http_url, "shout", ["a", "two"])
        await rest_call(srv.http_url, "shout", ["b", "elsewhere"])
        await rest_call(srv.http_url, "shout", ["a", "three"])
        async with connect(srv.ws_url) as c:
            s2 = await c.hello(s["session_token"], last)
            assert s2["resumed"] is True and s2["subscriptions"] == ["a"]
            assert s2["identity"] == s["identity"] and s2["session_token"] == s["session_token"]
            # one tx_update per missed commit that changed the subscription, at its offset
            offsets = []
            for want in ([2, "a", "two"], [4, "a", "three"]):
                catch = await c.expect("tx_update")
                assert catch["catch_up"] is True and catch["offset"] > last
                (u,) = catch["updates"]
                assert u["inserts"] == [want] and u["deletes"] == []
                offsets.append(catch["offset"])
                fold(rows, catch, "a")
            assert offsets[1] == offsets[0] + 2  # the unrelated commit in between is skipped
            tail = await c.expect("tx_update")  # the end of the catch-up (nothing left)
            assert tail["catch_up"] is True and tail["updates"] == [] and tail["caught_up"]
            assert tail["offset"] > offsets[1]
            # and live updates continue on the restored subscription
            await c.call(2, "shout", ["a", "four"])
            fold(rows, await c.expect("tx_update"), "a")
            await c.expect("call_result")
        status, res = await http(
            "POST", srv.http_url + "/v1/sql", {"sql": SEG_BY_CALL, "params": ["a"]}
        )
        assert status == 200
        assert rows == Counter(tuple(r) for r in res["rows"])


async def test_resume_past_the_replay_limit_gets_one_net_delta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "REPLAY_LIMIT", 1)
    async with running(tmp_path) as srv:
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            rows: Counter = Counter()
            fold(rows, await c.subscribe("a", SEG_BY_CALL, ["a"]), "a")
            await c.call(1, "shout", ["a", "one"])
            fold(rows, await c.expect("tx_update"), "a")
            last = (await c.expect("call_result"))["offset"]
        await rest_call(srv.http_url, "shout", ["a", "two"])
        await rest_call(srv.http_url, "shout", ["a", "three"])
        async with connect(srv.ws_url) as c:
            s2 = await c.hello(s["session_token"], last)
            assert s2["resumed"] is True
            catch = await c.expect("tx_update")
            assert catch["catch_up"] is True and catch["caught_up"] is True
            (u,) = catch["updates"]
            assert sorted(u["inserts"]) == [[2, "a", "two"], [3, "a", "three"]]
            fold(rows, catch, "a")
            await c.nothing()
        status, res = await http(
            "POST", srv.http_url + "/v1/sql", {"sql": SEG_BY_CALL, "params": ["a"]}
        )
        assert status == 200
        assert rows == Counter(tuple(r) for r in res["rows"])


async def test_resume_sends_subscriptions_it_had_not_seen_in_full(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        await rest_call(srv.http_url, "shout", ["b", "old"])
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            sub_a = await c.subscribe("a", SEG_BY_CALL, ["a"])
            k = sub_a["offset"]
            await c.send(type="subscribe", query_id="b", sql=SEG_BY_CALL, params=["b"])
            # disconnect before reading the second "subscribed": the client saw only k
        async with connect(srv.ws_url) as c:
            s2 = await c.hello(s["session_token"], k)
            assert s2["resumed"] is True and s2["subscriptions"] == ["a", "b"]
            catch = await c.expect("tx_update")
            assert catch["updates"] == []
            fresh = await c.expect("subscribed")
            assert fresh["query_id"] == "b" and fresh["rows"] == [[1, "b", "old"]]
            assert fresh["offset"] > catch["offset"]


async def test_resume_reads_old_offsets_from_the_log(tmp_path: Path) -> None:
    async with running(tmp_path, history_commits=1) as srv:
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            await c.subscribe("a", SEG_BY_CALL, ["a"])
            await c.call(1, "shout", ["a", "one"])
            await c.expect("tx_update")
            last = (await c.expect("call_result"))["offset"]
        for i in range(5):
            await rest_call(srv.http_url, "shout", ["a", f"m{i}"])
        assert srv.node.db.history_floor > last  # not in memory any more
        async with connect(srv.ws_url) as c:
            s2 = await c.hello(s["session_token"], last)
            assert s2["resumed"] is True
            catch = await c.expect("tx_update")
            assert [r[2] for r in catch["updates"][0]["inserts"]] == [f"m{i}" for i in range(5)]


async def test_past_the_horizon_the_snapshot_is_fresh_and_flagged() -> None:
    async with running(None, history_commits=1) as srv:  # memory only: no log to read
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            sub = await c.subscribe("a", SEG_BY_CALL, ["a"])
        for i in range(3):
            await rest_call(srv.http_url, "shout", ["a", f"m{i}"])
        async with connect(srv.ws_url) as c:
            s2 = await c.hello(s["session_token"], sub["offset"])
            assert s2["resumed"] is False and s2["reason"] == "history_unavailable"
            assert s2["subscriptions"] == ["a"]
            fresh = await c.expect("subscribed")
            assert [r[2] for r in fresh["rows"]] == ["m0", "m1", "m2"]
        async with connect(srv.ws_url) as c:
            s3 = await c.hello(s["session_token"], 10**9)
            assert s3["resumed"] is False and s3["reason"] == "invalid_offset"
            await c.expect("subscribed")
        async with connect(srv.ws_url) as c:
            s4 = await c.hello(s["session_token"])
            assert s4["resumed"] is False and s4["reason"] == "no_offset"
            await c.expect("subscribed")


async def test_unknown_token_gets_a_new_session(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        s = await c.hello("not-a-token", 3)
        assert s["resumed"] is False and s["reason"] == "unknown_session"
        assert s["session_token"] != "not-a-token"


async def test_rest_calls_can_share_the_session_identity(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        s = await c.hello()
        await c.call("shared", "bump", {"name": "s"})
        first = await c.expect("call_result")
        status, body = await http(
            "POST",
            srv.http_url + "/v1/reducers/bump",
            {"name": "s"},
            {"Authorization": f"Bearer {s['session_token']}", "Idempotency-Key": "shared"},
        )
        assert status == 200 and body["replayed"] is True and body["offset"] == first["offset"]


async def test_a_newer_connection_takes_the_session_over(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as old:
        s = await old.hello()
        sub = await old.subscribe("a", SEG_BY_CALL, ["a"])
        async with connect(srv.ws_url) as new:
            s2 = await new.hello(s["session_token"], sub["offset"])
            assert s2["resumed"] is True
            await new.expect("tx_update")
            try:
                await old.recv()
                raise AssertionError("the old connection should be closed")
            except websockets.ConnectionClosed:
                pass
            assert old.ws.close_code == 4001
            await new.call(1, "shout", ["a", "x"])
            assert (await new.expect("tx_update"))["updates"][0]["query_id"] == "a"
        await eventually(lambda: srv.node.hub.mgr.subscription_count == 0)


async def test_slow_consumer_is_cut_off_without_slowing_anyone(tmp_path: Path) -> None:
    async with running(tmp_path, send_queue_limit=16, close_timeout_s=30) as srv:
        async with (
            connect(srv.ws_url, max_queue=1) as slow,
            connect(srv.ws_url) as fast,
            connect(srv.ws_url) as writer,
        ):
            s = await slow.hello()
            await fast.hello()
            await writer.hello()
            slow_rows: Counter = Counter()
            fold(slow_rows, await slow.subscribe("big", SEG_BY_CALL, ["big"]), "big")
            last = slow.log[-1]["offset"]
            fast_rows: Counter = Counter()
            fold(fast_rows, await fast.subscribe("big", SEG_BY_CALL, ["big"]), "big")
            n = 120

            async def read_fast() -> None:
                while sum(fast_rows.values()) < 4 * n:
                    fold(fast_rows, await fast.expect("tx_update", timeout=20), "big")

            reader = asyncio.create_task(read_fast())
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for w in range(0, n, 8):  # pipelined, 8 calls in flight
                for i in range(w, w + 8):
                    await writer.call(i, "bulk", {"call_id": "big", "n": 4, "size": 16_000})
                for _ in range(8):
                    assert (await writer.expect("call_result", timeout=20))["offset"]
            writer_s = loop.time() - t0
            await reader
            # the slow reader now reads what reached it, then finds itself disconnected
            try:
                while True:
                    m = await slow.recv(timeout=20)
                    fold(slow_rows, m, "big")
                    last = max(last, m["offset"])
            except websockets.ConnectionClosed:
                pass
            assert slow.ws.close_code == 4000, slow.ws.close_reason
            assert sum(slow_rows.values()) < 4 * n
            assert writer_s < 10
        # its session is intact: resume gets exactly the rest
        async with connect(srv.ws_url, max_size=None) as again:
            s2 = await again.hello(s["session_token"], last)
            assert s2["resumed"] is True
            fold(slow_rows, await again.expect("tx_update", timeout=20), "big")
            assert slow_rows == fast_rows


async def test_graceful_shutdown_closes_with_going_away(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        await c.hello()
        await c.subscribe("a", SEG_BY_CALL, ["a"])
        await c.call(1, "shout", ["a", "x"])
        stopping = asyncio.create_task(srv.shutdown())
        got: list[Client | dict] = []
        try:
            while True:
                got.append(await c.recv())
        except websockets.ConnectionClosed:
            pass
        await stopping
        assert [m["type"] for m in got] == ["tx_update", "call_result"]  # flushed first
        assert c.ws.close_code == 1001
        assert list((tmp_path / "snapshots").glob("*.snap")), "final snapshot written"
        assert srv.node.db.closed


async def test_idle_sessions_expire_but_connected_ones_stay(tmp_path: Path) -> None:
    async with running(tmp_path, session_ttl_s=60) as srv:
        async with connect(srv.ws_url) as gone:
            s_gone = await gone.hello()
            await gone.subscribe("a", SEG_BY_CALL, ["a"])
        async with connect(srv.ws_url) as live:
            s_live = await live.hello()
            await eventually(lambda: len(srv.node.hub.attached) == 1)
            later = srv.node.db.timestamp + 61_000_000
            srv.node.hub.expire_once(now=later)
            db = srv.node.db
            assert len(db.stores["__sessions__"]) == 1
            assert len(db.stores["__session_subs__"]) == 0
            assert srv.node.hub.sessions.load(s_live["session_token"]) is not None
        async with connect(srv.ws_url) as c:
            s = await c.hello(s_gone["session_token"], 1)
            assert s["resumed"] is False and s["reason"] == "unknown_session"


async def test_draining_refuses_new_work(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        srv.node.hub.draining = True
        status, body = await http("POST", srv.http_url + "/v1/reducers/shout", ["a", "b"])
        assert status == 503 and body["error"]["code"] == "shutting_down"
        try:
            async with connect(srv.ws_url):
                raise AssertionError("connection should be refused")
        except websockets.InvalidStatus as e:
            assert e.response.status_code == 503
        srv.node.hub.draining = False
