"""``AuthService``: the facade the server uses for identities, tokens, principals and audit.

It owns the signing key, the owner bootstrap, the per-method services (``passwords``,
``ed25519``, ``magic``) and a commit listener that reports lifecycle changes. Everything
that reads or writes the store is synchronous and runs on the event loop, like every
commit; only hashing, signature checks and mail leave it (worker threads).

Invariants:

* ``principal`` resolves credentials to the identity *as it is now*: a signed token or
  an owner token or session token of a suspended/revoked identity is refused
  (``identity_not_active``), so a status change takes effect on the next request;
* ``issue_token`` issues only for an active identity, and audits every token it issues;
* the owner (privileges ``admin`` + ``bypass_rls``) is created once, on the first start
  of a store without one, and ``owner.token`` (0600) is written before the commit that
  stores its hash - a crash in between leaves a file that the next start reuses, never
  an owner nobody can log in as;
* ``on_inactive`` hooks run synchronously inside the commit that suspends or revokes an
  identity (a store commit listener), before any later commit, so the server can close
  that identity's connections at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from core.changeset import Changeset
from core.database import Database
from voicehub.auth import identities as ids
from voicehub.auth.ed25519 import Ed25519Auth
from voicehub.auth.magic import MagicLinks
from voicehub.auth.mailer import Mailer
from voicehub.auth.passwords import PasswordAuth
from voicehub.auth.principal import ANONYMOUS, Principal, anonymous
from voicehub.auth.ratelimit import RateLimiter
from voicehub.auth.settings import AuthSettings
from voicehub.auth.tokens import (
    OWNER_PREFIX,
    OWNER_TOKEN_FILE,
    PREFIX,
    TokenError,
    TokenSigner,
    load_or_create_key,
    new_owner_token,
    write_secret_file,
)
from voicehub.server.errors import ApiError

log = logging.getLogger("voicehub.auth")

ANONYMOUS_REST = "f" * 64
"""The caller of REST requests without credentials (``voicehub.server.system``)."""

InactiveHook = Callable[[str, str], None]


async def _no_wait(offset: int) -> None:
    return None


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AuthService:
    """See the module docstring. ``clock`` is wall time in seconds (tests inject one)."""

    def __init__(
        self,
        db: Database,
        settings: AuthSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
        mailer: Mailer | None = None,
        sessions_table: str = "__sessions__",
    ) -> None:
        self.db = db
        self.settings = settings or AuthSettings()
        self.clock = clock
        self.signer = TokenSigner(
            load_or_create_key(self.settings.data_dir), self.settings.token_ttl_s, clock
        )
        self.wait_durable: Callable[[int], Awaitable[None]] = _no_wait
        self.on_inactive: list[InactiveHook] = []
        self.owner_token: str | None = None
        """The owner token when this process created it (None if it was created before)."""
        self.sessions_table = sessions_table
        self.limiter = RateLimiter(
            self.settings.login_rate_burst, self.settings.login_rate_per_s, clock
        )
        self._limited: set[str] = set()
        self.passwords = PasswordAuth(self, hasher)
        self.ed25519 = Ed25519Auth(self)
        self.magic = MagicLinks(self, mailer or Mailer(self.settings))
        self._status_pos = ids.IDENTITIES_TABLE.column_index("status")
        self._id_pos = ids.IDENTITIES_TABLE.column_index("identity")
        db.add_listener(self._on_commit)

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Create the owner if the store has none; prepare the password dummy hash."""
        if ids.owner_identity(self.db) is None:
            token = await asyncio.to_thread(self._owner_token_file)  # file I/O off the loop
            self.bootstrap_owner(token)
            await self.durable()
        await self.passwords.prepare()

    async def stop(self) -> None:
        await self.magic.drain()
        self.db.remove_listener(self._on_commit)

    def now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    async def durable(self) -> None:
        """Wait until everything committed so far is durable (before answering)."""
        await self.wait_durable(self.db.offset)

    def _owner_token_file(self) -> str:
        """The token of an owner about to be created: ``owner.token`` (written 0600 first).

        A file that exists already was left by a bootstrap that did not commit: reuse it.
        """
        data_dir = self.settings.data_dir
        if data_dir is None:
            return new_owner_token()
        path = Path(data_dir) / OWNER_TOKEN_FILE
        if path.exists():
            token = path.read_text().strip()
            if token:
                return token
            path.unlink()
        token = new_owner_token()
        write_secret_file(path, (token + "\n").encode())
        return token

    def bootstrap_owner(self, token: str | None = None) -> bool:
        """Create the owner identity (and ``owner.token``) if there is no owner yet."""
        if ids.owner_identity(self.db) is not None:
            return False
        if token is None:
            token = self._owner_token_file()
        path = self.settings.data_dir and Path(self.settings.data_dir) / OWNER_TOKEN_FILE
        identity = secrets.token_hex(32)
        self.db.execute(
            ids.OWNER_CREATE,
            {"identity": identity, "token_hash": sha256_hex(token), "display_name": "owner"},
        )
        self.owner_token = token
        log.info("created the owner identity %s… (token in %s)", identity[:12], path or "memory")
        return True

    # ---------------------------------------------------------------- identities

    def check_registration(self, by_admin: bool) -> None:
        if self.settings.registration == "closed" and not by_admin:
            raise ApiError("registration_closed", "only an admin can create identities here")

    def register(
        self,
        kind: str,
        display_name: str,
        *,
        email: str | None = None,
        public_key: bytes | None = None,
        password_hash: str | None = None,
        method: str = "api",
        remote: str | None = None,
        by_admin: bool = False,
        privileges: tuple[str, ...] = (),
        activate: bool | None = None,
    ) -> str:
        """Create an identity under the registration policy; returns its identity hex.

        Open registration (or an admin) creates it active, approval leaves it
        registered until an admin activates it, closed refuses unless ``by_admin``.
        The registration and the activation are audited in the same commit.
        """
        if self.settings.registration == "closed" and not by_admin:
            self.audit(
                "registration", None, method, False, {"reason": "registration_closed"}, remote
            )
            raise ApiError("registration_closed", "only an admin can create identities here")
        if activate is None:
            activate = by_admin or self.settings.registration == "open"
        identity = secrets.token_hex(32)
        self.db.execute(
            ids.CREATE,
            {
                "identity": identity,
                "kind": kind,
                "display_name": display_name[:200],
                "email": email,
                "public_key": public_key,
                "privileges": list(privileges),
                "activate": activate,
                "method": method,
                "remote": remote,
                "password_hash": password_hash,
            },
        )
        return identity

    def create_identity(self, kind: str, display_name: str, email: str | None = None) -> str:
        """A new identity of ``kind`` (obeys the registration policy); its identity hex."""
        if email is not None and ids.identity_by_email(self.db, email) is not None:
            raise ApiError("email_taken", "an identity with this email exists already")
        return self.register(kind, display_name, email=email, method="api")

    def declare_system_identity(self, display_name: str, public_key: bytes | None = None) -> str:
        """An active ``system`` identity with ``bypass_rls`` (idempotent by public key).

        For trusted in-process or fleet components (providers, media workers): with a
        public key it logs in by Ed25519 challenge like any machine.
        """
        if public_key is not None:
            row = ids.identity_by_key(self.db, public_key)
            if row is not None:
                if row.kind != "system":
                    raise ApiError("invalid_request", "this key belongs to a non-system identity")
                return str(row.identity)
        return self.register(
            "system",
            display_name,
            public_key=public_key,
            method="system",
            by_admin=True,
            privileges=("bypass_rls",),
        )

    def identity_row(self, identity: str) -> Any:
        """The ``__identities__`` row of ``identity`` as committed now (None if unknown)."""
        return ids.get_identity(self.db, identity)

    def set_status(self, identity: str, status: str, reason: str = "") -> int:
        """Change a status as the system (in-process administration); the commit offset."""
        res = self.db.execute(
            ids.SET_STATUS, {"identity": identity, "status": status, "reason": reason}
        )
        return res.offset

    # ---------------------------------------------------------------- tokens

    def issue_token(self, identity: str, method: str, remote: str | None) -> dict[str, Any]:
        """A signed token for an active identity (``identity_not_active`` otherwise)."""
        row = ids.get_identity(self.db, identity)
        if row is None:
            raise ApiError("identity_not_active", "no such identity")
        if row.status != "active":
            raise ApiError("identity_not_active", f"this identity is {row.status}")
        token, claims = self.signer.issue(identity, method)
        detail = {"jti": claims.jti, "exp": claims.exp}
        self.audit("token_issue", identity, method, True, detail, remote)
        return {"token": token, "identity": identity, "expires_at": claims.exp * 1_000_000}

    async def login_succeeded(
        self,
        identity: str,
        method: str,
        remote: str | None,
        detail: dict[str, Any] | None = None,
        audited: bool = False,
    ) -> dict[str, Any]:
        """Issue the token of a verified login and audit it; answer once durable."""
        try:
            out = self.issue_token(identity, method, remote)
        except ApiError as e:
            self.audit(
                "login", identity, method, False, {**(detail or {}), "reason": e.code}, remote
            )
            await self.durable()
            raise
        if not audited:
            self.audit("login", identity, method, True, detail, remote)
        await self.durable()
        return out

    # ---------------------------------------------------------------- principals

    def _from_row(self, row: Any, method: str) -> Principal:
        p = Principal(
            str(row.identity), row.kind, row.status, frozenset(row.privileges or ()), method
        )
        if not p.active:
            raise ApiError("identity_not_active", f"this identity is {row.status}")
        return p

    def for_identity(self, identity: str, method: str) -> Principal:
        """The principal of a known identity now, or an anonymous one if unknown."""
        row = ids.get_identity(self.db, identity)
        if row is None:
            return self._anonymous(identity)
        return self._from_row(row, method)

    def _anonymous(self, identity: str) -> Principal:
        if not self.settings.allow_anonymous:
            raise ApiError("unauthorized", "this server needs credentials: log in first")
        return anonymous(identity)

    def verify_token(self, token: str) -> Principal:
        """A signed token or the owner token -> its principal; ``unauthorized`` otherwise."""
        if token.startswith(PREFIX):
            try:
                claims = self.signer.verify(token)
            except TokenError as e:
                raise ApiError("unauthorized", f"the token is not valid ({e.reason})") from None
            row = ids.get_identity(self.db, claims.sub)
            if row is None:
                raise ApiError("unauthorized", "the token names no identity")
            return self._from_row(row, "token")
        if token.startswith(OWNER_PREFIX):
            owner = ids.owner_of_token(self.db, sha256_hex(token))
            if owner is not None:
                row = ids.get_identity(self.db, owner)
                if row is not None:
                    return self._from_row(row, "owner_token")
        raise ApiError("unauthorized", "the token is not valid")

    def principal(self, authorization_header: str | None) -> Principal:
        """The caller of an HTTP request, from its ``Authorization`` header.

        No header: the anonymous REST identity (if anonymous access is allowed).
        ``Bearer <token>``: a signed token, the owner token, or a WebSocket session
        token (the session's identity). Anything else is ``unauthorized``.
        """
        if not authorization_header:
            return self._anonymous(ANONYMOUS_REST)
        scheme, _, token = authorization_header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError("unauthorized", "use 'Authorization: Bearer <token>'")
        if token.startswith((PREFIX, OWNER_PREFIX)):
            return self.verify_token(token)
        row: Any = self.db.stores[self.sessions_table].get(sha256_hex(token))
        if row is None:
            raise ApiError("unauthorized", "the bearer token names no session")
        return self.for_identity(str(row.identity), "session")

    def refresh(self, p: Principal) -> Principal:
        """``p`` as it stands now (status and privileges re-read); raises if not active.

        Call right before acting for ``p`` with no ``await`` in between.
        """
        if p.kind == ANONYMOUS:
            return self._anonymous(p.identity)
        row = ids.get_identity(self.db, p.identity)
        if row is None:
            raise ApiError("identity_not_active", "this identity no longer exists")
        return self._from_row(row, p.method)

    # ---------------------------------------------------------------- audit, limits

    def audit(
        self,
        event: str,
        identity: str | None,
        method: str,
        ok: bool,
        detail: dict[str, Any] | None = None,
        remote: str | None = None,
    ) -> None:
        """Append one ``auth_audit`` row (its own commit)."""
        self.db.execute(
            ids.AUDIT,
            {
                "event": event,
                "identity": identity,
                "method": method,
                "ok": ok,
                "detail": detail,
                "remote": remote,
            },
        )

    def rate_limit(self, remote: str | None, method: str) -> None:
        """Take a login attempt from ``remote``'s bucket; ``rate_limited`` when empty.

        The first refusal of a run is audited (not every one, so a flood cannot turn
        into a flood of audit commits).
        """
        key = remote or "?"
        if self.limiter.take(key):
            self._limited.discard(key)
            return
        if key not in self._limited:
            if len(self._limited) > 10_000:
                self._limited.clear()
            self._limited.add(key)
            self.audit("rate_limited", None, method, False, None, remote)
        wait = max(1, round(min(3600.0, self.limiter.retry_after(key))))
        raise ApiError("rate_limited", f"too many attempts from this address; retry in {wait} s")

    # ---------------------------------------------------------------- lifecycle events

    def _on_commit(self, cs: Changeset) -> None:
        ch = cs.tables.get(ids.IDENTITIES)
        if ch is None:
            return
        ip, sp = self._id_pos, self._status_pos
        before = {r[ip]: r[sp] for r in ch.deletes}
        for r in ch.inserts:
            status = r[sp]
            if status in ("suspended", "revoked") and before.get(r[ip]) != status:
                for hook in list(self.on_inactive):
                    try:
                        hook(str(r[ip]), status)
                    except Exception:
                        log.exception("lifecycle hook %r failed", hook)
