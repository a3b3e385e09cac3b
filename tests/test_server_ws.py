"""The WebSocket protocol with raw ``websockets`` clients against a real server.

Ordering (each commit once, in offset order), atomic multi-subscription updates, a call's
result arriving right after the deltas it caused, durable-before-visible, idempotent
retries, malformed frames, both encodings.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import server_app
from server_support import Client, connect, running

SEG_BY_CALL = "SELECT id, call_id, text FROM segment WHERE call_id = $1"


async def test_session_subscribe_call_and_deltas(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        assert c.ws.subprotocol == "v1.json"
        await c.send(type="subscribe", query_id="q1", sql=SEG_BY_CALL, params=["a"])
        session = await c.expect("session")
        assert session["resumed"] is False and len(session["identity"]) == 64
        sub = await c.expect("subscribed")
        assert sub["query_id"] == "q1" and sub["rows"] == []
        assert sub["columns"] == ["id", "call_id", "text"]
        assert sub["types"] == ["int64", "text", "text"]
        await c.call("r1", "shout", {"call_id": "a", "text": "hi"})
        tx = await c.expect("tx_update")
        res = await c.expect("call_result")
        assert tx["offset"] == res["offset"] > sub["offset"]
        assert tx["updates"] == [{"query_id": "q1", "inserts": [[1, "a", "hi"]], "deletes": []}]
        assert res == {
            "type": "call_result",
            "request_id": "r1",
            "offset": tx["offset"],
            "value": 1,
        }
        # a commit that does not touch the subscription sends no tx_update
        await c.call("r2", "shout", ["b", "other call"])
        res2 = await c.expect("call_result")
        assert res2["offset"] == res["offset"] + 1
        await c.call(3, "fail", {"why": "nope"})
        err = await c.expect("call_result")
        assert err == {
            "type": "call_result",
            "request_id": 3,
            "error": {"code": "reducer_error", "message": "nope"},
        }
        # the initial rows and every delta are released only once durable
        assert srv.node.db.gate.durable >= res2["offset"]


async def test_one_tx_update_per_commit_covers_all_subscriptions(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c, connect(srv.ws_url) as d:
        await c.hello()
        await d.hello()
        await c.subscribe("a", SEG_BY_CALL, ["a"])
        await c.subscribe("b", SEG_BY_CALL, ["b"])
        await c.subscribe("all", "SELECT COUNT(*) FROM segment")
        await d.subscribe("b-only", SEG_BY_CALL, ["b"])
        await c.call("m", "shout_many", {"call_ids": ["a", "b", "z"], "text": "x"})
        tx = await c.expect("tx_update")
        res = await c.expect("call_result")
        assert res["offset"] == tx["offset"]
        by_q = {u["query_id"]: u for u in tx["updates"]}
        assert set(by_q) == {"a", "b", "all"}
        assert by_q["a"]["inserts"] == [[1, "a", "x"]]
        assert by_q["b"]["inserts"] == [[2, "b", "x"]]
        assert by_q["all"] == {"query_id": "all", "inserts": [[3]], "deletes": [[0]]}
        other = await d.expect("tx_update")
        assert other == {
            "type": "tx_update",
            "offset": tx["offset"],
            "updates": [{"query_id": "b-only", "inserts": [[2, "b", "x"]], "deletes": []}],
        }
        await d.nothing()


async def test_commits_arrive_once_and_in_offset_order(tmp_path: Path) -> None:
    async with (
        running(tmp_path) as srv,
        connect(srv.ws_url) as w1,
        connect(srv.ws_url) as w2,
        connect(srv.ws_url) as watcher,
    ):
        for w in (w1, w2, watcher):
            await w.hello()
        await watcher.subscribe("all", "SELECT id, call_id FROM segment")
        await w1.subscribe("mine", SEG_BY_CALL, ["w1"])
        n = 60

        async def write(w: Client, name: str) -> list[int]:
            offsets = []
            for i in range(n):
                await w.call(f"{name}-{i}", "shout", [name, str(i)])
            # results may trail their own tx_updates; collect both in order
            seen_tx = set()
            while len(offsets) < n:
                m = await w.recv()
                if m["type"] == "tx_update":
                    seen_tx.add(m["offset"])
                else:
                    assert m["type"] == "call_result", m
                    if name == "w1":  # w1 sees its own deltas right before each result
                        assert m["offset"] in seen_tx
                    offsets.append(m["offset"])
            return offsets

        o1, o2 = await asyncio.gather(write(w1, "w1"), write(w2, "w2"))
        assert o1 == sorted(o1) and o2 == sorted(o2)
        got: list[int] = []
        rows = 0
        while rows < 2 * n:
            m = await watcher.expect("tx_update")
            got.append(m["offset"])
            (u,) = m["updates"]
            rows += len(u["inserts"])
        assert got == sorted(o1 + o2), "every commit once, in offset order"


async def test_results_wait_for_durability(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        await c.hello()
        await c.subscribe("q", SEG_BY_CALL, ["a"])
        gate = srv.node.db.gate
        for i in range(20):
            await c.call(i, "shout", ["a", "t"])
        for _ in range(20):
            tx = await c.expect("tx_update")
            assert gate.durable >= tx["offset"]
            res = await c.expect("call_result")
            assert gate.durable >= res["offset"]


async def test_malformed_and_unknown_frames_get_errors(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        await c.hello()
        await c.ws.send("{not json")
        assert (await c.expect("error"))["code"] == "malformed_message"
        await c.ws.send(b"\xc1\xc1")
        assert (await c.expect("error"))["code"] == "malformed_message"
        await c.ws.send("[1, 2]")
        assert (await c.expect("error"))["code"] == "invalid_message"
        await c.send(type="teleport")
        assert (await c.expect("error"))["code"] == "unknown_message"
        await c.ws.send(json.dumps({"no": "type"}))
        assert (await c.expect("error"))["code"] == "unknown_message"
        await c.send(type="call", request_id="x", args={})  # no reducer
        err = await c.expect("error")
        assert err["code"] == "invalid_message"
        assert err["ref"] == {"type": "call", "request_id": "x"}
        await c.send(type="subscribe", query_id=True, sql="SELECT 1")
        assert (await c.expect("error"))["code"] == "invalid_message"
        await c.send(type="hello")
        assert (await c.expect("error"))["code"] == "session_already_established"
        await c.send(type="subscribe", query_id="bad", sql="SELEKT")
        err = await c.expect("error")
        assert err["code"] == "sql_error" and err["ref"] == {"type": "subscribe", "query_id": "bad"}
        await c.send(type="unsubscribe", query_id="never")
        assert (await c.expect("error"))["code"] == "unknown_query_id"
        # ... and the connection still works
        await c.call("ok", "shout", ["a", "b"])
        assert (await c.expect("call_result"))["value"] == 1


async def test_unsubscribe_and_duplicate_query_ids(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        await c.hello()
        await c.subscribe(7, SEG_BY_CALL, ["a"])
        await c.send(type="subscribe", query_id=7, sql=SEG_BY_CALL, params=["b"])
        assert (await c.expect("error"))["code"] == "duplicate_query_id"
        await c.send(type="subscribe", query_id="7", sql=SEG_BY_CALL, params=["b"])
        assert (await c.expect("subscribed"))["query_id"] == "7"  # "7" and 7 differ
        await c.send(type="unsubscribe", query_id=7)
        unsub = await c.expect("unsubscribed")
        assert unsub["query_id"] == 7
        await c.call("r", "shout", ["a", "gone"])
        assert (await c.expect("call_result"))["offset"] > unsub["offset"]
        await c.nothing()
        assert srv.node.hub.mgr.subscription_count == 1


async def test_query_reads_its_own_writes(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        await c.hello()
        await c.call("w", "shout", ["a", "written"])
        await c.send(type="query", request_id="q", sql="SELECT text FROM segment")
        res = await c.expect("call_result")
        q = await c.expect("query_result")
        assert q["rows"] == [["written"]] and q["offset"] >= res["offset"]
        assert q["columns"] == ["text"] and q["types"] == ["text"]
        await c.send(type="query", request_id="bad", sql="SELECT nope FROM segment")
        q = await c.expect("query_result")
        assert q["error"]["code"] == "sql_error" and "rows" not in q


async def test_msgpack_subprotocol(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url, binary=True) as c:
        assert c.ws.subprotocol == "v1.msgpack"
        await c.hello()
        sub = await c.subscribe("blobs", "SELECT id, data FROM blob")
        assert sub["rows"] == []
        await c.call("b", "put_blob", {"id": 1, "data": b"\x00\xffraw"})
        tx = await c.expect("tx_update")
        assert tx["updates"][0]["inserts"] == [[1, b"\x00\xffraw"]]
        assert (await c.expect("call_result"))["value"] == 5
        await c.ws.send(
            json.dumps({"type": "query", "request_id": 1, "sql": "SELECT COUNT(*) FROM blob"})
        )
        q = await c.expect("query_result")  # a JSON text frame is accepted, answered in msgpack
        assert q["rows"] == [[1]], q


async def test_json_bytes_are_base64(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, connect(srv.ws_url) as c:
        await c.hello()
        await c.subscribe("blobs", "SELECT id, data FROM blob")
        await c.call("b", "put_blob", {"id": 1, "data": "AP8="})
        tx = await c.expect("tx_update")
        assert tx["updates"][0]["inserts"] == [[1, "AP8="]]


async def test_retried_call_returns_the_stored_outcome(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            await c.subscribe("t", "SELECT name, value FROM tally")
            before = server_app.RUNS["bump"]
            await c.call("once", "bump", {"name": "x"})
            await c.expect("tx_update")
            first = await c.expect("call_result")
            await c.call("once", "bump", {"name": "x"})
            again = await c.expect("call_result")  # no second tx_update: nothing ran
            assert again == {**first, "replayed": True}
            assert server_app.RUNS["bump"] == before + 1
            await c.call("once", "shout", ["a", "b"])
            assert (await c.expect("call_result"))["error"]["code"] == "request_id_conflict"
        # the same session on a new connection: still remembered
        async with connect(srv.ws_url) as c2:
            await c2.hello(s["session_token"], first["offset"])
            await c2.expect("tx_update")  # empty catch-up
            await c2.call("once", "bump", {"name": "x"})
            again = await c2.expect("call_result")
            assert again["replayed"] is True and again["offset"] == first["offset"]
        # another session has its own request-id scope
        async with connect(srv.ws_url) as c3:
            await c3.hello()
            await c3.call("once", "bump", {"name": "x"})
            assert (await c3.expect("call_result"))["value"] == 2
        assert server_app.RUNS["bump"] == before + 2
