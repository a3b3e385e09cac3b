"""Helpers for the authentication tests: a settable clock, logins, audit rows, keys.

Invariant kept: every helper that acts goes through the real HTTP API of a server
started with ``server_support.running`` (urllib on a worker thread), so the tests see
what a client sees; only ``audit``/``outbox`` read the store directly, to check what was
committed. ``notes`` is a user module with a read policy, for row-level security tests.
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from server_support import Running, http

from core import Module, ReducerContext, column
from core.module import read_policy
from voicehub.auth.ed25519 import challenge_message
from voicehub.auth.tokens import b64url

PASSWORD = "correct horse battery staple"


class Clock:
    """Wall time in seconds that only moves when told to (``advance``)."""

    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def owner_token(srv: Running) -> str:
    token = srv.node.auth.owner_token
    if token is None:
        token = (srv.node.db.config.data_dir / "owner.token").read_text().strip()  # type: ignore[operator]
    return token


async def post(
    srv: Running, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    return await http("POST", srv.http_url + path, body, bearer(token) if token else {})


async def register(
    srv: Running, email: str, password: str = PASSWORD, token: str | None = None, **extra: Any
) -> tuple[int, Any]:
    body = {"email": email, "password": password, **extra}
    return await post(srv, "/v1/auth/password/register", body, token)


async def login(srv: Running, email: str, password: str = PASSWORD) -> tuple[int, Any]:
    return await post(srv, "/v1/auth/password/login", {"email": email, "password": password})


async def user(srv: Running, email: str) -> dict[str, Any]:
    """Register ``email`` (open registration) and return its token answer."""
    status, body = await register(srv, email)
    assert status == 201, body
    assert body["status"] == "active" and body["token"].startswith("vh1."), body
    return dict(body)


async def sql(srv: Running, query: str, token: str | None = None) -> tuple[int, Any]:
    return await post(srv, "/v1/sql", {"sql": query}, token)


async def call(
    srv: Running, reducer: str, args: Any = None, token: str | None = None
) -> tuple[int, Any]:
    return await post(srv, f"/v1/reducers/{reducer}", args, token)


def audit(srv: Running, event: str | None = None) -> list[Any]:
    rows = sorted(srv.node.db.stores["auth_audit"].rows(), key=lambda r: r.seq)
    return [r for r in rows if event is None or r.event == event]


def outbox(srv: Running) -> list[Any]:
    return sorted(srv.node.db.stores["auth_outbox"].rows(), key=lambda r: r.id)


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url(raw)


def sign(key: Ed25519PrivateKey, challenge: str) -> str:
    return b64url(key.sign(challenge_message(challenge)))


async def challenge(srv: Running, key: Ed25519PrivateKey) -> str:
    status, body = await post(srv, "/v1/auth/challenge", {"public_key": public_b64(key)})
    assert status == 200, body
    return str(body["challenge"])


async def machine(srv: Running, key: Ed25519PrivateKey) -> tuple[int, Any]:
    """A full Ed25519 login of ``key``."""
    ch = await challenge(srv, key)
    body = {"public_key": public_b64(key), "challenge": ch, "signature": sign(key, ch)}
    return await post(srv, "/v1/auth/ed25519", body)


# ---------------------------------------------------------------- a policed user module

notes = Module("notes")


@notes.table(primary_key="id", policies=[read_policy("own", "owner = :sender")])
class Note:
    id: int = column(auto_inc=True)
    owner: str
    text: str


@notes.reducer
def add_note(ctx: ReducerContext, text: str) -> int:
    return int(ctx.db.note.insert(owner=ctx.sender, text=text).id)
