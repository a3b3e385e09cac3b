"""Email + password against a real server: register, login, refusals, lockout, rate limit.

Invariants under test: a wrong password and an unknown email get the same answer; the
lockout after ``password_max_failures`` is durable (it survives a restart) and ends after
``password_lockout_s`` (driven by an injected clock); every attempt is audited.
"""

from __future__ import annotations

import time
from pathlib import Path

from auth_support import PASSWORD, Clock, audit, login, owner_token, register, user
from server_support import http, running


async def test_register_then_login_and_me(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        reg = await user(srv, "Alice@Example.com")
        status, body = await login(srv, "alice@example.com")
        assert status == 200, body
        assert body["identity"] == reg["identity"] and body["token"].startswith("vh1.")
        assert body["expires_at"] > time.time() * 1e6
        status, me = await http(
            "GET", srv.http_url + "/v1/auth/me", None, {"Authorization": f"Bearer {body['token']}"}
        )
        assert status == 200, me
        assert me["identity"] == reg["identity"] and me["kind"] == "human"
        assert me["email"] == "alice@example.com" and me["status"] == "active"
        assert me["method"] == "token" and me["privileges"] == []
        events = [(r.event, r.method, r.ok) for r in audit(srv) if r.identity == reg["identity"]]
        assert events == [
            ("registration", "password", True),
            ("lifecycle", "admin", True),  # registered -> active (open registration)
            ("token_issue", "password", True),
            ("login", "password", True),
            ("token_issue", "password", True),
        ]
        life = audit(srv, "lifecycle")[-1]
        assert (life.detail["from"], life.detail["to"]) == ("registered", "active")


async def test_wrong_password_and_unknown_email_look_the_same(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        await user(srv, "bob@example.com")
        t0 = time.perf_counter()
        wrong = await login(srv, "bob@example.com", "not the password at all")
        t1 = time.perf_counter()
        unknown = await login(srv, "nobody@example.com", "not the password at all")
        t2 = time.perf_counter()
        assert wrong == unknown
        assert wrong[0] == 401 and wrong[1]["error"]["code"] == "invalid_credentials"
        # both ran one argon2 verification: same order of magnitude (generous bound)
        assert 0.2 < (t1 - t0) / (t2 - t1) < 5
        fails = [(r.identity is None, r.detail["reason"]) for r in audit(srv, "login")]
        assert fails[-2:] == [(False, "wrong_password"), (True, "unknown_email")]


async def test_registration_input_is_checked(tmp_path: Path) -> None:
    async with running(None) as srv:
        cases = [
            (await register(srv, "x@example.com", "short"), 400, "invalid_request"),
            (await register(srv, "x@example.com", "x" * 1025), 400, "invalid_request"),
            (await register(srv, "not-an-email"), 400, "invalid_request"),
            (await register(srv, "x@example.com", nickname="x"), 400, "invalid_request"),
        ]
        for (status, body), want_status, want_code in cases:
            assert (status, body["error"]["code"]) == (want_status, want_code), body
        await user(srv, "x@example.com")
        status, body = await register(srv, "X@example.com")
        assert status == 409 and body["error"]["code"] == "email_taken"


async def test_lockout_is_durable_and_ends(tmp_path: Path) -> None:
    clock = Clock()
    auth = {"password_max_failures": 5, "password_lockout_s": 900}
    async with running(tmp_path, auth=auth, clock=clock) as srv:
        reg = await user(srv, "carol@example.com")
        for _ in range(5):
            status, body = await login(srv, "carol@example.com", "wrong password!!")
            assert status == 401 and body["error"]["code"] == "invalid_credentials"
        locked = await login(srv, "carol@example.com")  # the right password, but locked
        assert locked[0] == 401 and locked[1]["error"]["code"] == "invalid_credentials"
        lock = audit(srv, "lockout")
        assert len(lock) == 1 and lock[0].identity == reg["identity"]
        assert audit(srv, "login")[-1].detail["reason"] == "locked"
    async with running(tmp_path, auth=auth, clock=clock) as srv:  # a restart
        status, body = await login(srv, "carol@example.com")
        assert status == 401, "the lockout survived the restart"
        clock.advance(901)
        status, body = await login(srv, "carol@example.com")
        assert status == 200 and body["identity"] == reg["identity"]
        row = srv.node.db.stores["__auth_passwords__"].get(reg["identity"])
        assert row.failed_count == 0 and row.locked_until is None


async def test_success_resets_the_failure_count(tmp_path: Path) -> None:
    async with running(None, auth={"password_max_failures": 3}) as srv:
        await user(srv, "dan@example.com")
        for _ in range(2):
            assert (await login(srv, "dan@example.com", "wrong password!!"))[0] == 401
        assert (await login(srv, "dan@example.com"))[0] == 200
        for _ in range(2):
            assert (await login(srv, "dan@example.com", "wrong password!!"))[0] == 401
        assert (await login(srv, "dan@example.com"))[0] == 200, "not locked: count was reset"
        assert audit(srv, "lockout") == []


async def test_rate_limit_per_address(tmp_path: Path) -> None:
    clock = Clock()
    async with running(None, auth={"login_rate_burst": 3}, clock=clock) as srv:
        for _ in range(3):
            assert (await login(srv, "eve@example.com", "guess guess guess"))[0] == 401
        status, body = await login(srv, "eve@example.com", "guess guess guess")
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert (await login(srv, "eve@example.com", "guess guess guess"))[0] == 429
        assert len(audit(srv, "rate_limited")) == 1, "audited once per run of refusals"
        clock.advance(60)
        assert (await login(srv, "eve@example.com", "guess guess guess"))[0] == 401


async def test_approval_and_closed_registration(tmp_path: Path) -> None:
    async with running(None, auth={"registration": "approval"}) as srv:
        status, body = await register(srv, "fay@example.com")
        assert status == 201 and body == {"identity": body["identity"], "status": "registered"}
        status, err = await login(srv, "fay@example.com")
        assert status == 403 and err["error"]["code"] == "identity_not_active"
        owner = owner_token(srv)
        status, res = await http(
            "POST",
            srv.http_url + "/v1/reducers/identity_activate",
            {"identity": body["identity"], "reason": "approved"},
            {"Authorization": f"Bearer {owner}"},
        )
        assert status == 200 and res["value"] == "active", res
        assert (await login(srv, "fay@example.com"))[0] == 200
    async with running(None, auth={"registration": "closed"}) as srv:
        status, body = await register(srv, "gus@example.com")
        assert status == 403 and body["error"]["code"] == "registration_closed"
        status, body = await register(srv, "gus@example.com", token=owner_token(srv))
        assert status == 201 and body["status"] == "active" and "token" not in body
        assert (await login(srv, "gus@example.com", PASSWORD))[0] == 200


async def test_tokens_expire_and_cannot_be_forged(tmp_path: Path) -> None:
    clock = Clock()
    async with running(None, clock=clock, auth={"token_ttl_s": 60}) as srv:
        token = (await user(srv, "tess@example.com"))["token"]
        me = srv.http_url + "/v1/auth/me"
        assert (await http("GET", me, None, {"Authorization": f"Bearer {token}"}))[0] == 200
        head, payload, sig = token.split(".")
        forged = f"{head}.{payload[:-2]}xx.{sig}"
        for bad in (forged, token + "x", "vho1.not-the-owner", "Basic abc"):
            header = bad if bad.startswith("Basic") else f"Bearer {bad}"
            status, body = await http("GET", me, None, {"Authorization": header})
            assert status == 401 and body["error"]["code"] == "unauthorized", bad
        clock.advance(61)
        status, body = await http("GET", me, None, {"Authorization": f"Bearer {token}"})
        assert status == 401 and "expired" in body["error"]["message"]


def test_auth_settings_resolve_from_flags_env_and_file(tmp_path: Path) -> None:
    from voicehub.app import auth_settings
    from voicehub.config import resolve

    cfg = tmp_path / "voicehub.toml"
    cfg.write_text('registration = "approval"\nsmtp_port = 2525\ntoken_ttl_s = 120\n')
    env = {"VOICEHUB_ALLOW_ANONYMOUS": "false", "VOICEHUB_TOKEN_TTL_S": "300"}
    s = resolve({"config": str(cfg), "password_max_failures": 3}, env)
    assert (s.registration, s.smtp_port, s.token_ttl_s) == ("approval", 2525, 300.0)
    assert s.allow_anonymous is False and s.password_max_failures == 3
    a = auth_settings(s)
    assert a.public_url == "http://127.0.0.1:8765" and a.rp_id == "127.0.0.1"
    assert a.rp_origin == "http://127.0.0.1:8765"
    for bad in ({"VOICEHUB_REGISTRATION": "maybe"}, {"VOICEHUB_ALLOW_ANONYMOUS": "perhaps"}):
        try:
            resolve({}, bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
