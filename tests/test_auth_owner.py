"""The owner bootstrap, private auth tables, and the CLI's remote commands.

Invariants under test: the first start of a data directory creates the owner and writes
``owner.token`` (0600) and ``server.key`` (0600); later starts rewrite neither; only the
owner (``bypass_rls``) sees the private auth tables, over SQL and in the schema; the
``voicehub sql/call/identity`` commands work with the owner token file.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

from auth_support import audit, bearer, call, sql, user
from server_support import ROOT, http, running


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def test_owner_token_is_created_once(tmp_path: Path) -> None:
    token_file, key_file = tmp_path / "owner.token", tmp_path / "server.key"
    async with running(tmp_path) as srv:
        assert mode(token_file) == 0o600 and mode(key_file) == 0o600
        token = token_file.read_text().strip()
        assert token.startswith("vho1.") and srv.node.auth.owner_token == token
        owners = [r for r in srv.node.db.stores["__identities__"].rows() if r.kind == "owner"]
        assert len(owners) == 1 and owners[0].privileges == ["admin", "bypass_rls"]
        assert [r.event for r in audit(srv, "owner_bootstrap")] == ["owner_bootstrap"]
        assert token not in repr(list(srv.node.db.stores["__owner_tokens__"].rows()))
        status, me = await http("GET", srv.http_url + "/v1/auth/me", None, bearer(token))
        assert status == 200 and me["kind"] == "owner" and me["method"] == "owner_token"
        first = (token_file.stat().st_mtime_ns, token_file.read_bytes(), key_file.read_bytes())
        signed = (await user(srv, "kept@example.com"))["token"]
    async with running(tmp_path) as srv:
        assert srv.node.auth.owner_token is None, "nothing was created on the second start"
        again = (token_file.stat().st_mtime_ns, token_file.read_bytes(), key_file.read_bytes())
        assert again == first
        owners = [r for r in srv.node.db.stores["__identities__"].rows() if r.kind == "owner"]
        assert len(owners) == 1
        status, _ = await sql(srv, "SELECT * FROM auth_audit", token)
        assert status == 200
        status, _ = await http("GET", srv.http_url + "/v1/auth/me", None, bearer(signed))
        assert status == 200, "a token signed before the restart is still valid (same key)"


async def test_private_auth_tables(tmp_path: Path) -> None:
    async with running(None) as srv:
        owner = srv.node.auth.owner_token
        assert owner is not None
        alice = (await user(srv, "alice@example.com"))["token"]
        for who in (None, alice):
            for table in ("auth_audit", "auth_outbox", "__identities__", "__auth_passwords__"):
                status, body = await sql(srv, f"SELECT * FROM {table}", who)
                assert status == 400, (table, body)
        status, body = await sql(srv, "SELECT event, ok FROM auth_audit ORDER BY seq", owner)
        assert status == 200 and ["owner_bootstrap", True] in body["rows"]
        status, body = await sql(srv, "SELECT * FROM __auth_passwords__", owner)
        assert status == 400, "system tables are invisible even to the owner"
        _, anon_schema = await http("GET", srv.http_url + "/v1/schema")
        _, owner_schema = await http("GET", srv.http_url + "/v1/schema", None, bearer(owner))
        anon_tables = {t["name"] for t in anon_schema["tables"]}
        owner_tables = {t["name"] for t in owner_schema["tables"]}
        assert {"segment", "tally", "blob", "calls"} <= anon_tables  # app + voice module
        assert not anon_tables & {"auth_audit", "auth_outbox", "__identities__", "audit_log"}
        assert {"auth_audit", "auth_outbox", "__identities__"} <= owner_tables
        assert set(anon_schema["modules"]) == {"app", "voice"}
        reducers = {r["name"] for r in anon_schema["reducers"]}
        assert "identity_revoke" in reducers and "auth_audit_append" not in reducers
        status, body = await call(srv, "auth_audit_append", ["x", None, "m", True], owner)
        assert status == 404, "hidden reducers cannot be called, not even by the owner"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from voicehub.cli import main; main()", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_remote_commands(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        bob = await user(srv, "bob@example.com")
        base = ("--url", srv.http_url, "--data-dir", str(tmp_path))

        async def run(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(cli, *args)

        out = await run("identity", "list", *base)
        assert out.returncode == 0, out.stderr
        assert bob["identity"] in out.stdout and "owner" in out.stdout
        out = await run("identity", "suspend", bob["identity"], "--reason", "test", *base)
        assert out.returncode == 0 and "suspended" in out.stdout, out.stderr
        assert srv.node.db.stores["__identities__"].get(bob["identity"]).status == "suspended"
        out = await run("call", "identity_activate", f'{{"identity": "{bob["identity"]}"}}', *base)
        assert out.returncode == 0 and '"value": "active"' in out.stdout, out.stderr
        out = await run("sql", "SELECT event FROM auth_audit WHERE event = 'lifecycle'", *base)
        assert out.returncode == 0 and out.stdout.count("lifecycle") == 3, out.stdout
        out = await run("call", "shout", '{"call_id": "c", "text": "from the cli"}', *base)
        assert out.returncode == 0 and '"value": 1' in out.stdout, out.stderr
        # errors: a non-admin token, a bad state change, no token file
        out = await run("identity", "revoke", bob["identity"], *base[:2], "--token", bob["token"])
        assert out.returncode == 1 and "permission_denied" in out.stderr
        out = await run("identity", "activate", bob["identity"], *base)
        assert out.returncode == 1 and "already active" in out.stderr
        out = await run("identity", "list", "--url", srv.http_url, "--data-dir", "/nonexistent")
        assert out.returncode == 2 and "token file" in out.stderr
