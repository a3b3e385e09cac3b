"""The Python client SDK (``voicehub.client``) against a real server on a loopback port.

Cache correctness (keyed and multiset, also against the store after random concurrent
commits from two clients in both encodings), callbacks (insert/delete/update folding), atomic
multi-subscription updates, a call's deltas in the cache when ``await call()`` returns,
idempotent retries (explicit, and automatic for a call in flight across a reconnect),
reconnect + resume after the server closes the socket (1001, 4000, a network error,
``resumed: false``, a graceful restart of a ``voicehub serve`` process), session
take-over, both encodings, and ``SyncClient``.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import server_app
from server_support import Running, Spawned, free_port, http, running

from voicehub.client import (
    Client,
    ConnectionLost,
    ServerError,
    SessionTakenOver,
    Subscription,
    SyncClient,
)
from voicehub.client.keys import single_table

SEG_BY_CALL = "SELECT id, call_id, text FROM segment WHERE call_id = $1"
SMALL_TALLIES = "SELECT name, value FROM tally WHERE value < 3"


async def sql_rows(url: str, sql: str, params: Any = None) -> Counter:
    status, body = await http("POST", url + "/v1/sql", {"sql": sql, "params": params})
    assert status == 200, body
    return Counter(tuple(r) for r in body["rows"])


async def rest(url: str, reducer: str, args: Any) -> dict:
    status, body = await http("POST", f"{url}/v1/reducers/{reducer}", args)
    assert status == 200, body
    return body


def server_conn(srv: Running, client: Client) -> Any:
    """The server-side connection of ``client`` (in-process servers only)."""
    for conn in srv.node.hub.connections:
        if conn.identity == client.identity:
            return conn
    raise AssertionError("no server connection for this client")


class Events:
    """Records every callback of a subscription."""

    def __init__(self, sub: Subscription) -> None:
        self.log: list[tuple] = []
        sub.on_insert(lambda r: self.log.append(("+", r)))
        sub.on_delete(lambda r: self.log.append(("-", r)))
        sub.on_update(lambda o, n: self.log.append(("~", o, n)))

    def take(self) -> list[tuple]:
        out, self.log = self.log, []
        return out


def test_key_detection_is_conservative() -> None:
    assert single_table(SEG_BY_CALL) == "segment"
    assert single_table("select * from Segment s where s.call_id = $1 order by id") == "segment"
    assert single_table("SELECT t.name, t.value FROM tally AS t LIMIT 3") == "tally"
    for sql in (
        "SELECT COUNT(*) FROM segment",
        "SELECT id AS x FROM segment",
        "SELECT DISTINCT call_id FROM segment",
        "SELECT s.id FROM segment s JOIN tally t ON s.text = t.name",
        "SELECT id FROM segment, tally WHERE id = value",
        "SELECT id FROM segment UNION ALL SELECT id FROM segment",
        "SELECT call_id, COUNT(*) FROM segment GROUP BY call_id",
    ):
        assert single_table(sql) is None, sql


async def test_call_query_and_subscription_cache(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        assert c.identity is not None and len(c.identity) == 64 and c.session_token
        await rest(srv.http_url, "shout", ["a", "before"])
        sub = await c.subscribe(SEG_BY_CALL, ["a"])
        assert sub.key == ("id",) and sub.columns == ["id", "call_id", "text"]
        assert sub.rows == [(1, "a", "before")]
        out = await c.call_outcome("shout", {"call_id": "a", "text": "hi"})
        # the commit's deltas arrived before its result: the cache has it already
        assert sub.get(out.value) == (out.value, "a", "hi") and sub.offset == out.offset
        assert await c.call("shout", ["b", "elsewhere"]) == 3
        assert len(sub) == 2
        res = await c.query("SELECT id, text FROM segment WHERE call_id = $1", ["a"])
        assert res.columns == ["id", "text"] and sorted(res.rows) == [(1, "before"), (2, "hi")]
        assert res.dicts()[0].keys() == {"id", "text"}
        assert Counter(sub.rows) == await sql_rows(srv.http_url, SEG_BY_CALL, ["a"])
        with pytest.raises(ServerError) as e:
            await c.call("fail", {"why": "nope"})
        assert e.value.code == "reducer_error" and e.value.message == "nope"
        with pytest.raises(ServerError) as e:
            await c.call("no_such")
        assert e.value.code == "no_such_reducer"
        with pytest.raises(ServerError) as e:
            await c.query("SELECT nope FROM segment")
        assert e.value.code == "sql_error"
        with pytest.raises(ServerError) as e:
            await c.subscribe("SELECT * FROM nowhere")
        assert e.value.code in ("sql_error", "no_such_table")
        assert c.last_offset >= out.offset


async def test_callbacks_fold_updates_by_primary_key(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        sub = await c.subscribe(SMALL_TALLIES)
        assert sub.key == ("name",)
        ev = Events(sub)
        await c.call("bump", {"name": "x"})
        assert ev.take() == [("+", ("x", 1))]
        await c.call("bump", {"name": "x"})
        assert ev.take() == [("~", ("x", 1), ("x", 2))]
        await c.call("bump", {"name": "x"})  # value 3 leaves the result
        assert ev.take() == [("-", ("x", 2))]
        assert sub.rows == []
        # without a key the same commits arrive as deletes and inserts
        raw = await c.subscribe(SMALL_TALLIES, key=None, as_dict=True)
        assert raw.key is None
        ev = Events(raw)
        await c.call("bump", {"name": "y"})
        await c.call("bump", {"name": "y"})
        assert ev.take() == [
            ("+", {"name": "y", "value": 1}),
            ("-", {"name": "y", "value": 1}),
            ("+", {"name": "y", "value": 2}),
        ]
        assert raw.rows == [{"name": "y", "value": 2}]
        # an aggregate is a multiset: one row replaced per commit
        count = await c.subscribe("SELECT COUNT(*) FROM tally")
        assert count.key is None and count.rows == [(2,)]
        await c.call("bump", {"name": "z"})
        assert count.rows == [(3,)]
        await raw.unsubscribe()
        assert not raw.active and raw.query_id not in c.subscriptions
        before = raw.rows
        await c.call("bump", {"name": "w"})
        assert raw.rows == before, "no delta after unsubscribe"
        assert sorted(sub.rows) == [("w", 1), ("y", 2), ("z", 1)]


async def test_caches_match_the_store_after_concurrent_random_commits(tmp_path: Path) -> None:
    rng = random.Random(4)
    queries = {
        "small": (SMALL_TALLIES, ("name",)),
        "groups": ("SELECT value, COUNT(*) AS n FROM tally GROUP BY value", None),
        "top": ("SELECT name, value FROM tally ORDER BY value DESC, name LIMIT 3", ("name",)),
    }
    async with (
        running(tmp_path, durability="interval") as srv,
        await Client.connect(srv.ws_url) as c1,
        await Client.connect(srv.ws_url, encoding="msgpack") as c2,
    ):
        subs = {
            (c, q): await c.subscribe(sql, key="auto")
            for c in (c1, c2)
            for q, (sql, _) in queries.items()
        }
        for (_, q), sub in subs.items():
            assert sub.key == queries[q][1], q

        async def writer(c: Client) -> None:
            for _ in range(150):
                await c.call("bump", {"name": f"n{rng.randrange(12)}", "by": rng.choice([1, 1, 2])})

        await asyncio.gather(writer(c1), writer(c2))
        for c in (c1, c2):  # a call's result follows every earlier commit's deltas
            await c.call("bump", {"name": "sync", "by": 100})
        for (_, q), sub in subs.items():
            assert Counter(sub.rows) == await sql_rows(srv.http_url, queries[q][0]), q


async def test_one_commit_updates_every_subscription_before_callbacks(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        a = await c.subscribe(SEG_BY_CALL, ["a"])
        b = await c.subscribe(SEG_BY_CALL, ["b"])
        total = await c.subscribe("SELECT COUNT(*) FROM segment")
        seen_in_a: list[tuple] = []
        a.on_insert(lambda r: seen_in_a.append((r, b.rows, total.rows)))
        txs: list[tuple[int, set]] = []
        c.on_transaction(lambda off, chs: txs.append((off, {ch.subscription for ch in chs})))
        out = await c.call_outcome("shout_many", {"call_ids": ["a", "b", "z"], "text": "x"})
        assert txs == [(out.offset, {a, b, total})]
        assert seen_in_a == [((1, "a", "x"), [(2, "b", "x")], [(3,)])]
        # a commit touching only one subscription reaches only that one
        out = await c.call_outcome("shout", ["b", "y"])
        assert txs[-1] == (out.offset, {b, total})


async def test_explicit_retry_with_the_same_request_id_is_replayed(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        runs = server_app.RUNS["bump"]
        first = await c.call_outcome("bump", {"name": "pay"}, request_id="pay-1")
        again = await c.call_outcome("bump", {"name": "pay"}, request_id="pay-1")
        assert not first.replayed and again.replayed
        assert (again.value, again.offset) == (first.value, first.offset) == (1, first.offset)
        assert server_app.RUNS["bump"] == runs + 1
        with pytest.raises(ServerError) as e:
            await c.call("shout", ["a", "x"], request_id="pay-1")
        assert e.value.code == "request_id_conflict"
        for replayed in (False, True):
            with pytest.raises(ServerError) as e:
                await c.call("fail", {"why": "no"}, request_id=7)
            assert e.value.code == "reducer_error" and e.value.replayed is replayed


async def test_call_in_flight_across_a_dropped_connection_runs_once(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        sub = await c.subscribe("SELECT name, value FROM tally")
        ev = Events(sub)
        hub = srv.node.hub
        real_call = hub.calls.call

        dropped: list[Any] = []

        def call_then_drop(identity: str, reducer: str, args: Any, rid: Any) -> Any:
            out = real_call(identity, reducer, args, rid)
            if rid == "drop-me" and not dropped:  # committed, then the connection dies
                dropped.append(out)  # before its result leaves
                server_conn(srv, c).outbox.abort(4000, "test")
            return out

        hub.calls.call = call_then_drop  # type: ignore[method-assign]
        runs = server_app.RUNS["bump"]
        out = await c.call_outcome("bump", {"name": "k"}, request_id="drop-me", timeout=10)
        assert out.replayed, "the retry got the stored outcome"
        assert (out.offset, out.value) == (dropped[0].offset, dropped[0].value)
        assert server_app.RUNS["bump"] == runs + 1, "the reducer ran once"
        assert c.reconnects == 1 and c.resumed
        assert sub.rows == [("k", 1)], "the catch-up brought the commit"
        assert ev.take() == [("+", ("k", 1))]
        # a call made while disconnected is sent once the session is back
        server_conn(srv, c).outbox.abort(4000, "test again")
        assert await c.call("bump", {"name": "k"}, timeout=10) == 2
        assert c.reconnects == 2 and sub.rows == [("k", 2)]
        assert ev.take() == [("~", ("k", 1), ("k", 2))]


async def test_reconnect_and_resume_after_going_away_and_network_errors(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        sub = await c.subscribe(SEG_BY_CALL, ["a"])
        inserted: Counter = Counter()
        sub.on_insert(lambda r: inserted.update([r]))
        await c.call("shout", ["a", "one"])
        for i, how in enumerate(["1001", "network", "1001"]):
            token = c.session_token
            if how == "1001":
                server_conn(srv, c).outbox.finish(1001, "going away")
            else:
                assert c._sock is not None
                c._sock.transport.abort()  # a dead TCP connection: no close frame
            for j in range(3):  # commits racing the reconnect, some missed meanwhile
                await rest(srv.http_url, "shout", ["a", f"{how}-{i}-{j}"])
            await asyncio.sleep(0.05)
            assert await c.call("shout", ["a", f"after-{i}"], timeout=10)
            assert c.reconnects == i + 1 and c.resumed and c.session_token == token
            assert Counter(sub.rows) == await sql_rows(srv.http_url, SEG_BY_CALL, ["a"])
        assert max(inserted.values()) == 1, "no row delivered twice"
        assert Counter(sub.rows) == inserted


async def test_resumed_false_replaces_the_cache(tmp_path: Path) -> None:
    async with running(tmp_path) as srv, await Client.connect(srv.ws_url) as c:
        sub = await c.subscribe(SEG_BY_CALL, ["a"])
        ev = Events(sub)
        await c.call("shout", ["a", "kept"])
        ev.take()
        c.last_offset += 10**9  # an offset the server never had: invalid_offset
        server_conn(srv, c).outbox.finish(1001, "going away")
        await c.wait_connected()
        await eventually_connected_again(c)
        await rest(srv.http_url, "shout", ["a", "missed"])
        await sub.wait_for(lambda s: len(s) == 2)
        assert not c.resumed
        assert sorted(r[2] for r in sub.rows) == ["kept", "missed"]
        assert ev.take() == [("+", (2, "a", "missed"))], "only the difference is reported"


async def eventually_connected_again(c: Client) -> None:
    for _ in range(500):
        if c.reconnects and c.connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("did not reconnect")


async def test_session_take_over_and_restored_subscriptions(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        first = await Client.connect(srv.ws_url)
        sub = await first.subscribe(SEG_BY_CALL, ["a"], query_id="mine")
        await first.call("shout", ["a", "x"])
        second = await Client.connect(srv.ws_url, session_token=first.session_token)
        try:
            assert second.identity == first.identity and not second.resumed
            restored = second.subscriptions["mine"]
            await restored.wait_for(lambda s: len(s) == 1)
            assert restored.rows == [(1, "a", "x")] and restored.sql is None
            await sub.wait_for(lambda s: not s.active)
            assert first.closed and isinstance(sub.error, SessionTakenOver)
            with pytest.raises(SessionTakenOver):
                await first.call("shout", ["a", "y"])
            await second.call("shout", ["a", "y"])
            assert len(restored) == 2
        finally:
            await first.close()
            await second.close()


async def test_giving_up_fails_what_is_pending(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        once = await Client.connect(srv.ws_url, reconnect=False)
        patient = await Client.connect(srv.ws_url, reconnect_timeout_s=0.5)
        sub = await patient.subscribe(SEG_BY_CALL, ["a"])
        await srv.shutdown()  # drains, closes every socket with 1001, stops listening
        with pytest.raises(ConnectionLost) as e:
            await once.call("shout", ["a", "x"])
        with pytest.raises(ConnectionLost) as e:
            await patient.call("shout", ["a", "x"])  # waits for the reconnect, which fails
        assert e.value.close_code == 1001 and "reconnect" in str(e.value)
        assert patient.closed and not sub.active and isinstance(sub.error, ConnectionLost)
        await once.close()
        await patient.close()


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_bytes_values_in_both_encodings(tmp_path: Path, encoding: str) -> None:
    async with (
        running(tmp_path) as srv,
        await Client.connect(srv.ws_url, encoding=encoding) as c,  # type: ignore[arg-type]
    ):
        sub = await c.subscribe("SELECT id, data FROM blob")
        assert await c.call("put_blob", {"id": 1, "data": b"\x00\xffhi"}) == 4
        assert sub.rows == [(1, b"\x00\xffhi")]
        res = await c.query("SELECT data FROM blob WHERE id = $1", [1])
        assert res.rows == [(b"\x00\xffhi",)]


async def test_sync_client(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:

        def script() -> None:
            with SyncClient(srv.ws_url, as_dict=True) as vh:
                sub = vh.subscribe(SEG_BY_CALL, ["s"])
                seen: list[Any] = []
                sub.on_insert(seen.append)
                seg = vh.call("shout", {"call_id": "s", "text": "sync"})
                assert sub.rows == [{"id": seg, "call_id": "s", "text": "sync"}]
                assert seen == sub.rows and sub.key == ("id",) and len(sub) == 1
                assert vh.query("SELECT COUNT(*) AS n FROM segment").dicts() == [{"n": 1}]
                assert vh.call_outcome("bump", {"name": "s"}, request_id="s1").value == 1
                assert vh.call_outcome("bump", {"name": "s"}, request_id="s1").replayed
                try:
                    vh.call("fail", {"why": "sync"})
                except ServerError as e:
                    assert e.code == "reducer_error"
                else:
                    raise AssertionError("no error")
                sub.unsubscribe()

        await asyncio.to_thread(script)


async def test_resume_across_a_graceful_server_restart(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    s = Spawned(data, port)
    await s.ready()
    c = await Client.connect(s.ws_url, reconnect_timeout_s=30)
    try:
        sub = await c.subscribe(SEG_BY_CALL, ["a"])
        inserted: Counter = Counter()
        sub.on_insert(lambda r: inserted.update([r]))
        await c.call("shout", ["a", "before"])
        token = c.session_token
        assert await s.stop(signal.SIGTERM) == 0  # drains, closes with 1001
        pending = asyncio.create_task(c.call("shout", ["a", "during the restart"]))
        s = Spawned(data, port)
        await s.ready()
        await rest(s.http_url, "shout", ["a", "missed"])
        await asyncio.wait_for(pending, 20)
        assert c.reconnects >= 1 and c.resumed and c.session_token == token
        assert Counter(sub.rows) == await sql_rows(s.http_url, SEG_BY_CALL, ["a"])
        assert sorted(r[2] for r in sub.rows) == ["before", "during the restart", "missed"]
        assert Counter(sub.rows) == inserted
    finally:
        await c.close()
        await s.stop(signal.SIGKILL)
