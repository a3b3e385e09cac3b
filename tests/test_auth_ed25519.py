"""Machine identities by Ed25519 challenge against a real server, and the SDK's key login.

Invariants under test: a challenge is single use, expires, and answers only for the key
it was issued to; a bad signature is refused; every refusal is ``401 ed25519_invalid``
and audited; the first login of a key registers a machine identity (per policy); the
SDK creates its key file 0600 once and logs in before every connection.
"""

from __future__ import annotations

import stat
from pathlib import Path

from auth_support import (
    Clock,
    audit,
    challenge,
    machine,
    new_key,
    owner_token,
    post,
    public_b64,
    sign,
)
from server_support import eventually, running

from voicehub.client import Client

ED = "/v1/auth/ed25519"


async def test_first_login_registers_a_machine_identity(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key = new_key()
        status, first = await machine(srv, key)
        assert status == 200, first
        row = srv.node.db.stores["__identities__"].get(first["identity"])
        assert row.kind == "machine" and row.status == "active"
        assert row.public_key == key.public_key().public_bytes_raw()
        status, again = await machine(srv, key)
        assert status == 200 and again["identity"] == first["identity"]
        assert again["token"] != first["token"]
        status, me = await post(srv, "/v1/sql", {"sql": "SELECT * FROM tally"}, again["token"])
        assert status == 200, me
        logins = [r for r in audit(srv, "login") if r.method == "ed25519"]
        assert [r.ok for r in logins] == [True, True]


async def test_wrong_key_reused_and_expired_challenges_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    async with running(None, clock=clock, auth={"challenge_ttl_s": 30}) as srv:
        key, other = new_key(), new_key()

        async def answer(k_pub: str, ch: str, sig: str) -> tuple[int, dict]:
            body = {"public_key": k_pub, "challenge": ch, "signature": sig}
            return await post(srv, ED, body)

        # signed by another key than the one presented
        ch = await challenge(srv, key)
        refused = [await answer(public_b64(key), ch, sign(other, ch))]
        # a challenge issued for another key, answered correctly by that other key
        ch = await challenge(srv, key)
        refused.append(await answer(public_b64(other), ch, sign(other, ch)))
        # reused: the first answer succeeds, the replay is refused
        ch = await challenge(srv, key)
        ok = await answer(public_b64(key), ch, sign(key, ch))
        assert ok[0] == 200, ok
        refused.append(await answer(public_b64(key), ch, sign(key, ch)))
        # expired
        ch = await challenge(srv, key)
        clock.advance(31)
        refused.append(await answer(public_b64(key), ch, sign(key, ch)))
        # never issued; malformed signature
        refused.append(await answer(public_b64(key), "made-up", sign(key, "made-up")))
        ch = await challenge(srv, key)
        refused.append(await answer(public_b64(key), ch, "AAAA"))
        for status, body in refused:
            assert status == 401 and body["error"]["code"] == "ed25519_invalid", body
        reasons = [r.detail["reason"] for r in audit(srv, "login") if not r.ok]
        assert reasons == [
            "bad_signature",
            "wrong_key",
            "unknown_challenge",
            "expired_challenge",
            "unknown_challenge",
            "bad_signature",
        ]
        status, body = await post(srv, "/v1/auth/challenge", {"public_key": "c2hvcnQ"})
        assert status == 400 and body["error"]["code"] == "invalid_request"


async def test_approval_policy_keeps_new_machines_waiting(tmp_path: Path) -> None:
    async with running(None, auth={"registration": "approval"}) as srv:
        key = new_key()
        status, body = await machine(srv, key)
        assert status == 403 and body["error"]["code"] == "identity_not_active"
        rows = [r for r in srv.node.db.stores["__identities__"].rows() if r.kind == "machine"]
        assert len(rows) == 1 and rows[0].status == "registered"
        status, res = await post(
            srv, "/v1/reducers/identity_activate", {"identity": rows[0].identity}, owner_token(srv)
        )
        assert status == 200, res
        status, body = await machine(srv, key)
        assert status == 200 and body["identity"] == rows[0].identity


async def test_sdk_key_login(tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "agent.key"
    async with running(tmp_path / "data") as srv:
        async with await Client.connect(srv.ws_url, key_path=key_path, display_name="agent") as c:
            assert c.kind == "machine" and c.token is not None
            assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
            first_identity = c.identity
            row = srv.node.db.stores["__identities__"].get(c.identity)
            assert row.display_name == "agent"
            assert await c.call("shout", {"call_id": "m", "text": "hi"}) >= 1
            # a reconnect logs in again (a fresh token) and resumes the same session
            token, session = c.token, c.session_token
            conn = next(x for x in srv.node.hub.connections if x.identity == c.identity)
            conn.outbox.abort(4000, "test")
            await eventually(lambda: c.reconnects == 1 and c.connected)
            assert c.session_token == session and c.resumed
            assert c.token != token
        key_bytes = key_path.read_bytes()
        async with await Client.connect(srv.ws_url, key_path=key_path) as c2:
            assert c2.identity == first_identity, "the same key is the same identity"
        assert key_path.read_bytes() == key_bytes, "the key file was not rewritten"
