"""Passkeys: WebAuthn registration and login against a real store and a software authenticator.

``PasskeyService`` runs on a real in-memory ``Database`` carrying the passkey tables and
hidden reducers, with a small fake auth service (identities, tokens, audit, principals)
that implements ``AuthServiceProtocol``. Every credential comes from
``soft_authenticator.SoftAuthenticator``, so py_webauthn checks real CBOR, COSE keys and
signatures. Invariant under test: a token is issued only for a fresh, untampered response
from the registered key for the right RP id and origin, with an advancing counter, and
every refusal is ``passkey_invalid`` and audited.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from soft_authenticator import EDDSA, SoftAuthenticator, b64
from starlette.applications import Starlette
from starlette.requests import Request

from core import Database, Module, ReducerError
from voicehub.auth.passkey_store import (
    ADD,
    PASSKEY_REDUCERS,
    PASSKEYS,
    CeremonyError,
    CeremonyStore,
    add_passkey_reducers,
    counter_regressed,
    passkey_tables,
)
from voicehub.auth.passkeys import (
    PASSKEY_INVALID,
    AuthServiceProtocol,
    PasskeyService,
    passkey_routes,
)
from voicehub.server.errors import ApiError

RP_ID = "voice.example.com"
ORIGIN = "https://voice.example.com"
ANON = "f" * 64

# ---------------------------------------------------------------- the fake auth service


@dataclass(frozen=True)
class Principal:
    identity: str
    kind: str


@dataclass(frozen=True)
class RpSettings:
    rp_id: str = RP_ID
    rp_name: str = "Voice Example"
    rp_origin: str = ORIGIN


@dataclass
class FakeAuth:
    """Identities and tokens in dicts; every audit call recorded."""

    settings: RpSettings = field(default_factory=RpSettings)
    identities: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    audits: list[dict[str, Any]] = field(default_factory=list)
    suspended: set[str] = field(default_factory=set)

    def create_identity(self, kind: str, display_name: str, email: str | None = None) -> str:
        ident = secrets.token_hex(32)
        self.identities[ident] = {"kind": kind, "display_name": display_name, "email": email}
        return ident

    def issue_token(self, identity: str, method: str, remote: str | None) -> dict[str, Any]:
        if identity in self.suspended:
            raise ApiError("identity_not_active", "this identity is suspended")
        token = secrets.token_urlsafe(16)
        self.tokens[token] = identity
        return {"token": token, "identity": identity, "expires_at": 1_900_000_000_000_000}

    def audit(
        self,
        event: str,
        identity: str | None,
        method: str,
        ok: bool,
        detail: dict[str, Any] | None = None,
        remote: str | None = None,
    ) -> None:
        self.audits.append(
            {
                "event": event,
                "identity": identity,
                "method": method,
                "ok": ok,
                "detail": detail or {},
                "remote": remote,
            }
        )

    def principal(self, authorization_header: str | None) -> Principal:
        scheme, _, token = (authorization_header or "").partition(" ")
        ident = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if ident is None:
            return Principal(ANON, "anonymous")
        return Principal(ident, self.identities[ident]["kind"])

    def last(self) -> dict[str, Any]:
        return self.audits[-1]


def _typed(auth: FakeAuth) -> AuthServiceProtocol:
    return auth  # checks (under mypy) that the fake satisfies the protocol


# ---------------------------------------------------------------- fixtures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    db: Database
    auth: FakeAuth
    svc: PasskeyService
    clock: Clock
    durable_waits: list[int]

    def rows(self) -> list[Any]:
        return list(self.db.stores[PASSKEYS].rows())


def passkey_module() -> Module:
    m = Module("authtest")
    for t in passkey_tables():
        m.add_table(t)
    add_passkey_reducers(m)
    return m


@pytest.fixture
def env() -> Iterator[Env]:
    db = Database.open([passkey_module()])
    auth = FakeAuth()
    clock = Clock()
    waits: list[int] = []

    async def wait_durable(offset: int) -> None:
        waits.append(offset)

    svc = PasskeyService(_typed(auth), db, wait_durable=wait_durable, clock=clock)
    try:
        yield Env(db, auth, svc, clock, waits)
    finally:
        db.close()


async def register(
    env: Env, authn: SoftAuthenticator, bearer: str | None = None, **body: Any
) -> dict[str, Any]:
    started = env.svc.register_options(bearer and f"Bearer {bearer}", **body)
    cred = authn.create(started["options"])
    return await env.svc.register_verify(
        started["ceremony"], cred, bearer and f"Bearer {bearer}", "10.0.0.1"
    )


async def login(
    env: Env, authn: SoftAuthenticator, identity: str | None = None, **fault: Any
) -> dict[str, Any]:
    started = env.svc.login_options(identity)
    cred = authn.get(started["options"], **fault)
    return await env.svc.login_verify(started["ceremony"], cred, "10.0.0.2")


async def refused(coro: Any, reason: str, env: Env) -> ApiError:
    with pytest.raises(ApiError) as info:
        await coro
    assert info.value.code == PASSKEY_INVALID, info.value.message
    last = env.auth.last()
    assert last["ok"] is False and last["detail"]["reason"] == reason, last
    return info.value


# ---------------------------------------------------------------- registration and login


@pytest.mark.parametrize("fmt", ["packed", "none"])
async def test_register_then_login(env: Env, fmt: str) -> None:
    authn = SoftAuthenticator(ORIGIN, fmt=fmt)  # type: ignore[arg-type]
    reg = await register(env, authn, display_name="Ada", email="ada@example.com")
    ident = reg["identity"]
    assert env.auth.identities[ident] == {
        "kind": "human",
        "display_name": "Ada",
        "email": "ada@example.com",
    }
    assert env.auth.tokens[reg["token"]] == ident and reg["expires_at"] > 0
    (row,) = env.rows()
    assert b64(row.credential_id) == reg["credential_id"]
    assert row.identity == ident and row.sign_count == 0 and row.last_used_at is None
    assert row.transports == ["internal", "hybrid"] and row.aaguid.startswith("5f0f7e1a")
    (cred,) = authn.credentials.values()
    assert row.public_key == cred.cose_public_key() and row.user_handle == cred.user_handle
    assert env.auth.last()["event"] == "passkey_register" and env.auth.last()["ok"] is True
    assert env.auth.last()["detail"]["fmt"] == fmt

    out = await login(env, authn)  # discoverable: no identity given
    assert out["identity"] == ident and env.auth.tokens[out["token"]] == ident
    (row,) = env.rows()
    assert row.sign_count == 1 and row.last_used_at is not None
    out = await login(env, authn, ident)  # limited to the identity's passkeys
    assert out["identity"] == ident and env.rows()[0].sign_count == 2
    last = env.auth.last()
    assert last["event"] == "passkey_login" and last["ok"] and last["remote"] == "10.0.0.2"
    assert env.durable_waits and env.durable_waits[-1] == env.db.offset


async def test_options_shape(env: Env) -> None:
    reg = env.svc.register_options(display_name="Bo")
    opts = reg["options"]
    assert opts["rp"] == {"name": "Voice Example", "id": RP_ID}
    assert opts["user"]["name"] == "Bo" and opts["user"]["displayName"] == "Bo"
    assert [p["alg"] for p in opts["pubKeyCredParams"]] == [-7, -8, -257]
    sel = opts["authenticatorSelection"]
    assert sel["residentKey"] == "preferred" and sel["userVerification"] == "preferred"
    assert opts["excludeCredentials"] == [] and opts["timeout"] == 300_000
    json.dumps(reg)  # plain JSON
    log = env.svc.login_options()
    assert log["options"]["rpId"] == RP_ID and log["options"]["allowCredentials"] == []
    assert log["options"]["userVerification"] == "preferred"
    assert log["ceremony"] != reg["ceremony"]


async def test_eddsa_passkey(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN, alg=EDDSA)
    reg = await register(env, authn)
    assert (await login(env, authn))["identity"] == reg["identity"]


async def test_add_passkey_to_logged_in_identity(env: Env) -> None:
    phone, laptop = SoftAuthenticator(ORIGIN), SoftAuthenticator(ORIGIN, fmt="none")
    first = await register(env, phone, display_name="Cy")
    started = env.svc.register_options(f"Bearer {first['token']}")
    excluded = started["options"]["excludeCredentials"]
    assert [d["id"] for d in excluded] == [first["credential_id"]]
    assert excluded[0]["transports"] == ["internal", "hybrid"]
    with pytest.raises(ValueError, match="InvalidStateError"):
        phone.create(started["options"])  # an already registered authenticator refuses
    second = await env.svc.register_verify(
        started["ceremony"], laptop.create(started["options"]), f"Bearer {first['token']}"
    )
    assert second["identity"] == first["identity"] and len(env.auth.identities) == 1
    handles = {r.user_handle for r in env.rows()}
    assert len(env.rows()) == 2 and len(handles) == 1  # one user handle per identity
    allow = env.svc.login_options(first["identity"])["options"]["allowCredentials"]
    assert len(allow) == 2
    assert (await login(env, laptop, first["identity"]))["identity"] == first["identity"]
    listed = env.svc.list_passkeys(f"Bearer {first['token']}")
    assert [p["credential_id"] for p in listed] == [first["credential_id"], second["credential_id"]]
    assert "public_key" not in listed[0]


async def test_adding_needs_the_session_that_started(env: Env) -> None:
    first = await register(env, SoftAuthenticator(ORIGIN))
    started = env.svc.register_options(f"Bearer {first['token']}")
    cred = SoftAuthenticator(ORIGIN).create(started["options"])
    await refused(env.svc.register_verify(started["ceremony"], cred, None), "other_session", env)
    assert len(env.rows()) == 1
    with pytest.raises(ApiError) as info:
        env.svc.register_options("Bearer not-a-token")
    assert info.value.code == "unauthorized"


# ---------------------------------------------------------------- refusals


async def test_wrong_origin_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    started = env.svc.register_options()
    phished = authn.create(started["options"], origin="https://voice-example.evil")
    err = await refused(
        env.svc.register_verify(started["ceremony"], phished), "verification_failed", env
    )
    assert "origin" in err.message and env.rows() == []
    reg = await register(env, authn)
    await refused(login(env, authn, origin="https://evil.example"), "verification_failed", env)
    assert env.rows()[0].sign_count == 0 and reg["identity"] not in env.auth.suspended


async def test_wrong_rp_id_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    started = env.svc.register_options()
    cred = authn.create(started["options"], rp_id="example.org")
    err = await refused(
        env.svc.register_verify(started["ceremony"], cred), "verification_failed", env
    )
    assert "RP ID" in err.message and env.rows() == []
    await register(env, authn)
    await refused(login(env, authn, rp_id="evil.example.com"), "verification_failed", env)


@pytest.mark.parametrize("tamper", ["signature", "authenticator_data", "client_data"])
async def test_tampered_assertion_refused(env: Env, tamper: str) -> None:
    authn = SoftAuthenticator(ORIGIN)
    await register(env, authn)
    err = await refused(login(env, authn, tamper=tamper), "verification_failed", env)
    assert "signature" in err.message
    assert env.rows()[0].sign_count == 0 and env.rows()[0].last_used_at is None
    await login(env, authn)  # the genuine authenticator still works


@pytest.mark.parametrize("tamper", ["signature", "authenticator_data", "client_data"])
async def test_tampered_packed_attestation_refused(env: Env, tamper: str) -> None:
    started = env.svc.register_options()
    cred = SoftAuthenticator(ORIGIN).create(started["options"], tamper=tamper)  # type: ignore[arg-type]
    err = await refused(
        env.svc.register_verify(started["ceremony"], cred), "verification_failed", env
    )
    assert "signature" in err.message
    assert env.rows() == [] and env.auth.identities == {}


async def test_replayed_ceremony_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    started = env.svc.register_options()
    cred = authn.create(started["options"])
    await env.svc.register_verify(started["ceremony"], cred)
    await refused(env.svc.register_verify(started["ceremony"], cred), "unknown", env)
    assert len(env.rows()) == 1 and len(env.auth.identities) == 1

    opts = env.svc.login_options()
    assertion = authn.get(opts["options"])
    await env.svc.login_verify(opts["ceremony"], assertion)
    await refused(env.svc.login_verify(opts["ceremony"], assertion), "unknown", env)
    # a failed attempt consumes the ceremony too
    opts = env.svc.login_options()
    bad = authn.get(opts["options"], tamper="signature")
    await refused(env.svc.login_verify(opts["ceremony"], bad), "verification_failed", env)
    good = authn.get(opts["options"])
    await refused(env.svc.login_verify(opts["ceremony"], good), "unknown", env)
    await refused(env.svc.login_verify("no-such-ceremony", good), "unknown", env)


async def test_expired_ceremony_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    started = env.svc.register_options()
    cred = authn.create(started["options"])
    env.clock.now += 301
    await refused(env.svc.register_verify(started["ceremony"], cred), "expired", env)
    await register(env, authn)
    opts = env.svc.login_options()
    env.clock.now += 299  # still inside the 5 minutes
    await env.svc.login_verify(opts["ceremony"], authn.get(opts["options"]))
    opts = env.svc.login_options()
    env.clock.now += 300
    await refused(
        env.svc.login_verify(opts["ceremony"], authn.get(opts["options"])), "expired", env
    )


async def test_ceremony_of_the_other_kind_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    await register(env, authn)
    started = env.svc.register_options()
    cred = authn.get(started["options"] | {"rpId": RP_ID})
    await refused(env.svc.login_verify(started["ceremony"], cred), "wrong_kind", env)


async def test_counter_regression_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    reg = await register(env, authn)
    await login(env, authn)  # counter 1
    stolen = authn.clone()  # an extracted copy at counter 1
    await login(env, authn)  # the owner goes on: counter 2
    err = await refused(login(env, stolen), "counter_regression", env)  # the copy says 2
    assert "cloned" in err.message
    last = env.auth.last()
    assert last["identity"] == reg["identity"]
    assert last["detail"]["stored_count"] == 2 and last["detail"]["presented_count"] == 2
    assert env.rows()[0].sign_count == 2
    await refused(login(env, authn, sign_count=1), "counter_regression", env)
    assert (await login(env, authn))["identity"] == reg["identity"]  # counter 3 is fine
    assert env.rows()[0].sign_count == 3


async def test_authenticator_without_counter_allowed(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN, counter=False)
    reg = await register(env, authn)
    for _ in range(3):
        assert (await login(env, authn))["identity"] == reg["identity"]
    assert env.rows()[0].sign_count == 0
    assert counter_regressed(0, 0) is False and counter_regressed(5, 0) is True


async def test_unknown_credential_refused(env: Env) -> None:
    await register(env, SoftAuthenticator(ORIGIN))
    stranger = SoftAuthenticator(ORIGIN)
    stranger.create(env.svc.register_options()["options"])  # made, never verified
    await refused(login(env, stranger), "unknown_credential", env)


async def test_credential_of_another_identity_refused(env: Env) -> None:
    alice, bob = SoftAuthenticator(ORIGIN), SoftAuthenticator(ORIGIN)
    a = await register(env, alice)
    await register(env, bob)
    opts = env.svc.login_options(a["identity"])
    bobs = next(iter(bob.credentials))
    cred = bob.get(opts["options"], credential_id=bobs)
    await refused(env.svc.login_verify(opts["ceremony"], cred), "not_allowed", env)
    # an identity without passkeys (or no such identity) gets the same shape of options
    opts = env.svc.login_options("0" * 63 + "1")
    assert opts["options"]["allowCredentials"] == []
    cred = bob.get(opts["options"], credential_id=bobs)
    await refused(env.svc.login_verify(opts["ceremony"], cred), "not_allowed", env)
    assert env.svc.login_options("not an identity")["options"]["allowCredentials"] == []


async def test_user_handle_mismatch_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    await register(env, authn)
    next(iter(authn.credentials.values())).user_handle = b"\x01" * 32
    await refused(login(env, authn), "user_handle_mismatch", env)
    assert (await login(env, authn, user_handle=False))["identity"]  # absent is allowed


async def test_suspended_identity_refused(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    reg = await register(env, authn)
    env.auth.suspended.add(reg["identity"])
    with pytest.raises(ApiError) as info:
        await login(env, authn)
    assert info.value.code == "identity_not_active"
    last = env.auth.last()
    assert last["ok"] is False and last["detail"]["reason"] == "identity_not_active"
    assert last["identity"] == reg["identity"]


async def test_malformed_credential_refused(env: Env) -> None:
    opts = env.svc.login_options()
    await refused(env.svc.login_verify(opts["ceremony"], {"id": 1}), "malformed", env)
    started = env.svc.register_options()
    junk = {"id": "AA", "rawId": "AA", "type": "public-key", "response": {}}
    await refused(env.svc.register_verify(started["ceremony"], junk), "malformed", env)


# ---------------------------------------------------------------- storage and ceremonies


async def test_store_refuses_duplicates_and_regressions(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    reg = await register(env, authn)
    row = env.rows()[0]
    args = {
        "credential_id": row.credential_id,
        "identity": "a" * 64,
        "user_handle": b"u",
        "public_key": b"k",
        "sign_count": 0,
        "transports": [],
        "aaguid": "x",
    }
    with pytest.raises(ReducerError, match="already registered"):
        env.db.execute(ADD, args)
    env.svc.store.used(row.credential_id, 7)
    with pytest.raises(ReducerError, match="did not increase"):
        env.svc.store.used(row.credential_id, 7)
    assert env.rows()[0].identity == reg["identity"] and env.rows()[0].sign_count == 7
    assert {"voicehub_passkey_add", "voicehub_passkey_used", "voicehub_passkey_remove"} == (
        PASSKEY_REDUCERS
    )
    assert passkey_tables()[0].system and not passkey_tables()[0].public


async def test_remove_passkey(env: Env) -> None:
    authn = SoftAuthenticator(ORIGIN)
    reg = await register(env, authn)
    other = await register(env, SoftAuthenticator(ORIGIN))
    with pytest.raises(ApiError) as info:
        await env.svc.remove_passkey(f"Bearer {other['token']}", reg["credential_id"])
    assert info.value.code == "not_found"
    out = await env.svc.remove_passkey(f"Bearer {reg['token']}", reg["credential_id"])
    assert out["removed"] is True and len(env.rows()) == 1
    assert env.auth.last()["event"] == "passkey_remove"
    await refused(login(env, authn), "unknown_credential", env)


def test_ceremony_store_is_bounded_and_single_use() -> None:
    clock = Clock()
    store = CeremonyStore(ttl_s=10, max_pending=3, clock=clock)
    ids = [store.put("login", b"c%d" % i, None) for i in range(5)]
    assert len(store) == 3  # the two oldest were dropped
    with pytest.raises(CeremonyError) as info:
        store.take(ids[0], "login")
    assert info.value.reason == "unknown"
    assert store.take(ids[4], "login").challenge == b"c4"
    clock.now += 10
    store.put("register", b"new", None)
    assert len(store) == 1  # the expired ones are purged on the next put


# ---------------------------------------------------------------- the HTTP routes


async def asgi(
    app: Starlette, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request through the ASGI app, in process."""
    raw = b"" if body is None else json.dumps(body).encode()
    hdrs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    hdrs.append((b"content-length", str(len(raw)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": hdrs,
        "client": ("127.0.0.9", 5000),
        "server": ("testserver", 80),
        "root_path": "",
    }
    sent: list[MutableMapping[str, Any]] = []
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        done = True
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(data) if data else None


@pytest.fixture
async def app(env: Env) -> AsyncIterator[Starlette]:
    def get_service(request: Request) -> PasskeyService:
        return env.svc

    yield Starlette(routes=passkey_routes(get_service))


async def test_routes_register_login_and_errors(env: Env, app: Starlette) -> None:
    authn = SoftAuthenticator(ORIGIN)
    p = "/v1/auth/passkey"
    status, started = await asgi(app, "POST", f"{p}/register/options", {"display_name": "Di"})
    assert status == 200 and set(started) == {"ceremony", "options"}
    cred = authn.create(started["options"])
    body = {"ceremony": started["ceremony"], "credential": cred}
    status, reg = await asgi(app, "POST", f"{p}/register/verify", body)
    assert status == 200 and {"identity", "token", "expires_at", "credential_id"} <= set(reg)
    assert env.auth.last()["remote"] == "127.0.0.9"
    status, again = await asgi(app, "POST", f"{p}/register/verify", body)
    assert status == 401 and again["error"]["code"] == PASSKEY_INVALID

    status, opts = await asgi(app, "POST", f"{p}/login/options", None)  # empty body
    assert status == 200
    cred = authn.get(opts["options"])
    status, out = await asgi(
        app, "POST", f"{p}/login/verify", {"ceremony": opts["ceremony"], "credential": cred}
    )
    assert status == 200 and out["identity"] == reg["identity"]
    status, opts = await asgi(app, "POST", f"{p}/login/options", {"identity": reg["identity"]})
    cred = authn.get(opts["options"], tamper="signature")
    status, err = await asgi(
        app, "POST", f"{p}/login/verify", {"ceremony": opts["ceremony"], "credential": cred}
    )
    assert status == 401 and err["error"]["code"] == PASSKEY_INVALID

    auth = {"Authorization": f"Bearer {reg['token']}"}
    status, listed = await asgi(app, "GET", f"{p}/credentials", headers=auth)
    assert status == 200 and [x["credential_id"] for x in listed["passkeys"]] == [
        reg["credential_id"]
    ]
    status, err = await asgi(app, "GET", f"{p}/credentials")
    assert status == 401 and err["error"]["code"] == "unauthorized"
    status, gone = await asgi(
        app, "DELETE", f"{p}/credentials/{reg['credential_id']}", headers=auth
    )
    assert status == 200 and gone["removed"] is True

    for bad in ({"nope": 1}, {"ceremony": "x"}, {"ceremony": "x", "credential": "y"}, [1]):
        status, err = await asgi(app, "POST", f"{p}/login/verify", bad)
        assert status == 400 and err["error"]["code"] == "invalid_request", bad
    status, err = await asgi(app, "POST", f"{p}/register/options", {"display_name": 5})
    assert status == 400
