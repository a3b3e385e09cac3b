"""Identity lifecycle and principals on live connections: revoke, suspend, authenticate.

Invariants under test: the commit that revokes or suspends an identity closes its live
WebSocket connections with 4003 and makes its next call fail with
``identity_not_active``, both within 100 ms (measured); revocation deletes its sessions;
only admins change a status; an ``authenticate`` re-creates the session's subscriptions
under the new identity, so row-level security applies from then on; a session token is
refused with another identity's auth token; anonymous access can be turned off.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from auth_support import audit, bearer, call, notes, owner_token, sql, user
from server_support import Running, connect, eventually, http, running

from voicehub.auth.principal import Principal
from voicehub.client import Client, IdentityNotActive
from voicehub.server.errors import ApiError


def commit_times(srv: Running, reducer: str) -> list[float]:
    """perf_counter() of every commit of ``reducer`` from now on."""
    times: list[float] = []
    srv.node.db.add_listener(
        lambda cs: times.append(time.perf_counter()) if cs.reducer == reducer else None
    )
    return times


async def closed_code(ws: Any, timeout: float = 2.0) -> int:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed:
        return int(ws.close_code)


async def test_revocation_closes_connections_and_rejects_calls_within_100ms(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as srv:
        victim = await user(srv, "victim@example.com")
        owner = owner_token(srv)
        async with connect(srv.ws_url) as c:
            await c.send(type="hello", auth_token=victim["token"])
            s = await c.expect("session")
            assert s["identity"] == victim["identity"] and s["kind"] == "human"
            await c.subscribe("t", "SELECT name, value FROM tally")
            assert (await call(srv, "bump", {"name": "x"}, victim["token"]))[0] == 200
            await c.expect("tx_update")
            assert srv.node.hub.mgr.subscription_count == 1
            committed = commit_times(srv, "identity_revoke")
            revoke = asyncio.create_task(
                call(srv, "identity_revoke", {"identity": victim["identity"], "reason": "t"}, owner)
            )
            code = await closed_code(c.ws)
            t_closed = time.perf_counter()
            status, body = await call(srv, "bump", {"name": "x"}, victim["token"])
            t_rejected = time.perf_counter()
            assert code == 4003
            assert status == 403 and body["error"]["code"] == "identity_not_active"
            assert len(committed) == 1
            closed_after, rejected_after = t_closed - committed[0], t_rejected - committed[0]
            assert closed_after < 0.1, f"closed {closed_after:.3f} s after the commit"
            assert rejected_after < 0.1, f"call rejected {rejected_after:.3f} s after the commit"
            assert (await revoke)[0] == 200
        assert srv.node.hub.mgr.subscription_count == 0
        assert srv.node.hub.sessions.load(s["session_token"]) is None, "sessions deleted"
        sessions = list(srv.node.db.stores["__sessions__"].rows())
        assert all(r.identity != victim["identity"] for r in sessions)
        status, body = await call(srv, "identity_activate", {"identity": victim["identity"]}, owner)
        assert status == 422 and "final" in body["error"]["message"]
        status, _ = await http(
            "POST",
            srv.http_url + "/v1/auth/password/login",
            {"email": "victim@example.com", "password": "correct horse battery staple"},
        )
        assert status == 403
        [life] = [r for r in audit(srv, "lifecycle") if r.detail["to"] == "revoked"]
        assert life.identity == victim["identity"] and life.detail["reason"] == "t"
        assert life.detail["by"] == srv.node.auth.identity_row(life.detail["by"]).identity


async def test_pending_calls_of_a_suspended_principal_are_rejected(tmp_path: Path) -> None:
    async with running(None) as srv:
        u = await user(srv, "pending@example.com")
        p = srv.node.auth.principal(f"Bearer {u['token']}")
        assert isinstance(p, Principal) and p.active and not p.bypass_rls
        srv.node.auth.set_status(u["identity"], "suspended", "test")
        with pytest.raises(ApiError) as e:
            srv.node.hub.calls.call(p, "bump", {"name": "x"}, None)  # resolved before
        assert e.value.code == "identity_not_active"
        assert srv.node.db.stores["tally"].get("x") is None


async def test_suspend_then_activate(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        u = await user(srv, "sus@example.com")
        owner = owner_token(srv)
        async with await Client.connect(srv.ws_url, token=u["token"]) as c:
            sub = await c.subscribe("SELECT name, value FROM tally")
            committed = commit_times(srv, "identity_suspend")
            status, body = await call(srv, "identity_suspend", {"identity": u["identity"]}, owner)
            assert status == 200 and body["value"] == "suspended"
            with pytest.raises(IdentityNotActive):
                await c.call("bump", {"name": "y"}, timeout=2)
            assert c.closed and c.reconnects == 0, "no reconnect after 4003"
            assert isinstance(sub.error, IdentityNotActive) and not sub.active
            assert committed
        status, body = await call(srv, "bump", {"name": "y"}, u["token"])
        assert status == 403 and body["error"]["code"] == "identity_not_active"
        status, _ = await http("GET", srv.http_url + "/v1/auth/me", None, bearer(u["token"]))
        assert status == 403
        status, body = await call(srv, "identity_activate", {"identity": u["identity"]}, owner)
        assert status == 200 and body["value"] == "active"
        assert (await call(srv, "bump", {"name": "y"}, u["token"]))[0] == 200, "token valid again"
        async with await Client.connect(srv.ws_url, token=u["token"]) as c:
            assert await c.call("bump", {"name": "y"}) == 2
        changes = [(r.detail["from"], r.detail["to"]) for r in audit(srv, "lifecycle")]
        assert changes[-2:] == [("active", "suspended"), ("suspended", "active")]


async def test_only_admins_change_a_status(tmp_path: Path) -> None:
    async with running(None) as srv:
        a = await user(srv, "a@example.com")
        b = await user(srv, "b@example.com")
        for token in (None, a["token"]):
            status, body = await call(srv, "identity_suspend", {"identity": b["identity"]}, token)
            assert status == 403 and body["error"]["code"] == "permission_denied", body
        owner_id = next(
            r.identity for r in srv.node.db.stores["__identities__"].rows() if r.kind == "owner"
        )
        status, body = await call(srv, "identity_revoke", {"identity": owner_id}, owner_token(srv))
        assert status == 422 and "owner" in body["error"]["message"]
        assert srv.node.db.stores["__identities__"].get(b["identity"]).status == "active"


async def test_authenticate_rebinds_subscriptions_under_rls(tmp_path: Path) -> None:
    async with running(tmp_path, modules=[notes]) as srv:
        alice, bob = await user(srv, "alice@example.com"), await user(srv, "bob@example.com")
        assert (await call(srv, "add_note", {"text": "alice's"}, alice["token"]))[0] == 200
        assert (await call(srv, "add_note", {"text": "bob's"}, bob["token"]))[0] == 200
        _, everything = await sql(srv, "SELECT text FROM note", owner_token(srv))
        assert sorted(r[0] for r in everything["rows"]) == ["alice's", "bob's"]
        _, mine = await sql(srv, "SELECT text FROM note", alice["token"])
        assert mine["rows"] == [["alice's"]]
        async with connect(srv.ws_url) as c:
            s = await c.hello()
            assert s["kind"] == "anonymous"
            first = await c.subscribe("n", "SELECT text FROM note")
            assert first["rows"] == [], "anonymous sees no notes"
            await c.send(type="authenticate", token=alice["token"])
            auth = await c.expect("authenticated")
            assert auth["identity"] == alice["identity"] and auth["subscriptions"] == ["n"]
            again = await c.expect("subscribed")
            assert again["query_id"] == "n" and again["rows"] == [["alice's"]]
            assert again["offset"] > auth["offset"]
            await call(srv, "add_note", {"text": "bob again"}, bob["token"])
            await c.nothing(0.2)
            await c.call(1, "add_note", {"text": "alice again"})
            upd = await c.expect("tx_update")
            assert upd["updates"][0]["inserts"] == [["alice again"]]
            await c.expect("call_result")
            [session_hash] = srv.node.hub.attached
            row = srv.node.db.stores["__sessions__"].get(session_hash)
            assert row.identity == alice["identity"], "the session moved to alice"
            token = s["session_token"]
            last = upd["offset"]
        await call(srv, "add_note", {"text": "bob meanwhile"}, bob["token"])
        await call(srv, "add_note", {"text": "alice meanwhile"}, alice["token"])
        async with connect(srv.ws_url) as c:
            await c.send(type="hello", session_token=token, auth_token=bob["token"])
            err = await c.expect("error")
            assert err["code"] == "session_identity_mismatch"
            await c.send(type="hello", session_token=token, last_offset=last)
            back = await c.expect("session")
            assert back["resumed"] and back["identity"] == alice["identity"]
            catch = await c.expect("tx_update")
            assert catch["catch_up"] and catch["updates"][0]["inserts"] == [["alice meanwhile"]]


async def test_anonymous_access_can_be_turned_off(tmp_path: Path) -> None:
    async with running(None, auth={"allow_anonymous": False}) as srv:
        status, body = await sql(srv, "SELECT * FROM tally")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert (await call(srv, "bump", {"name": "z"}))[0] == 401
        assert (await http("GET", srv.http_url + "/v1/schema"))[0] == 401
        u = await user(srv, "only@example.com")
        assert (await sql(srv, "SELECT * FROM tally", u["token"]))[0] == 200
        async with connect(srv.ws_url) as c:
            await c.send(type="hello")
            assert (await c.expect("error"))["code"] == "unauthorized"
            await c.send(type="subscribe", query_id="q", sql="SELECT * FROM tally")
            assert (await c.expect("error"))["code"] == "unauthorized"
            await c.send(type="hello", auth_token="vh1.forged.token")
            assert (await c.expect("error"))["code"] == "unauthorized"
            await c.send(type="hello", auth_token=u["token"])
            s = await c.expect("session")
            assert s["identity"] == u["identity"] and s["kind"] == "human"
        async with connect(srv.ws_url, additional_headers=bearer(u["token"])) as c:
            s = await c.hello()
            assert s["identity"] == u["identity"], "a bearer header on the upgrade works too"
        await eventually(lambda: not srv.node.hub.connections)


async def test_sdk_authenticate_after_connecting_anonymously(tmp_path: Path) -> None:
    async with running(tmp_path, modules=[notes]) as srv:
        alice = await user(srv, "alice@example.com")
        await call(srv, "add_note", {"text": "hers"}, alice["token"])
        async with await Client.connect(srv.ws_url) as c:
            assert c.kind == "anonymous"
            sub = await c.subscribe("SELECT id, text FROM note")
            assert sub.rows == []
            await c.authenticate(alice["token"])
            assert c.identity == alice["identity"] and c.kind == "human"
            await sub.wait_for(lambda s: [r[1] for r in s.rows] == ["hers"], 5)
            await c.call("add_note", {"text": "mine now"})
            assert sorted(r[1] for r in sub.rows) == ["hers", "mine now"]
            # a reconnect resumes the session as alice (the token is presented again)
            conn = next(x for x in srv.node.hub.connections if x.identity == alice["identity"])
            conn.outbox.abort(4000, "test")
            await eventually(lambda: c.reconnects == 1 and c.connected)
            assert c.resumed and c.identity == alice["identity"]
            with pytest.raises(Exception) as e:
                await c.authenticate("vh1.bad.token")
            assert getattr(e.value, "code", None) == "unauthorized"
