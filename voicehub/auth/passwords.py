"""Email + password login: argon2id hashes, a durable lockout, a per-address rate limit.

``register(email, password)`` creates a human identity with an argon2id hash (open or
approval registration, or any registration by an admin bearer); ``login(email,
password)`` returns a session token. Hashing and verification run on a worker thread.

Invariants:

* no user enumeration: a wrong password, an unknown email, an identity without a
  password and a locked account all cost one argon2 verification (against a dummy hash
  when there is no real one) and one audit commit, and all answer ``401
  invalid_credentials`` with the same message;
* after ``password_max_failures`` consecutive wrong passwords the account is locked for
  ``password_lockout_s``; the counter and the lock are columns of
  ``__auth_passwords__``, changed by the same commit that audits the failure, so a
  restart does not unlock anything;
* state read before a hashing ``await`` is read again after it, and nothing awaits
  between that read and the commit that acts on it.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from voicehub.auth.identities import (
    PASSWORD_FAILURE,
    PASSWORD_SUCCESS,
    get_identity,
    identity_by_email,
    password_row,
)
from voicehub.auth.principal import Principal
from voicehub.server.errors import ApiError

if TYPE_CHECKING:
    from voicehub.auth.service import AuthService

METHOD: Final = "password"
MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 1024
INVALID: Final = "invalid_credentials"
INVALID_MESSAGE: Final = (
    "wrong email or password (after repeated failures the account is locked for a while)"
)


def normalize_email(value: Any) -> str:
    """Trimmed, lower-cased address; ``invalid_request`` unless it looks like one."""
    if not isinstance(value, str):
        raise ApiError("invalid_request", "email must be a string")
    email = value.strip().lower()
    local, at, domain = email.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain
        or len(email) > 320
        or any(c.isspace() for c in email)
    ):
        raise ApiError("invalid_request", "email is not a valid address")
    return email


def check_password(value: Any) -> str:
    if not isinstance(value, str):
        raise ApiError("invalid_request", "password must be a string")
    if len(value) < MIN_LENGTH:
        raise ApiError("invalid_request", f"a password needs at least {MIN_LENGTH} characters")
    if len(value) > MAX_LENGTH:
        raise ApiError("invalid_request", f"a password has at most {MAX_LENGTH} characters")
    return value


def _verify(hasher: PasswordHasher, hashed: str, password: str) -> bool:
    try:
        return hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


class PasswordAuth:
    def __init__(self, auth: AuthService, hasher: PasswordHasher | None = None) -> None:
        self.auth = auth
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        self._dummy: str | None = None

    async def prepare(self) -> None:
        """Compute the dummy hash unknown emails are verified against (once, at start)."""
        if self._dummy is None:
            self._dummy = await asyncio.to_thread(self.hasher.hash, secrets.token_urlsafe(24))

    async def register(
        self,
        email: Any,
        password: Any,
        display_name: Any = None,
        by: Principal | None = None,
        remote: str | None = None,
    ) -> dict[str, Any]:
        auth = self.auth
        address = normalize_email(email)
        secret = check_password(password)
        if display_name is not None and (
            not isinstance(display_name, str) or len(display_name) > 200
        ):
            raise ApiError("invalid_request", "display_name must be a string of at most 200")
        admin = by is not None and by.admin
        if not admin:
            auth.rate_limit(remote, METHOD)
        auth.check_registration(admin)
        if identity_by_email(auth.db, address) is not None:
            raise ApiError("email_taken", "an identity with this email exists already")
        hashed = await asyncio.to_thread(self.hasher.hash, secret)
        # After the await: check again; from here to the commit nothing awaits.
        if identity_by_email(auth.db, address) is not None:
            raise ApiError("email_taken", "an identity with this email exists already")
        identity = auth.register(
            "human",
            (display_name or "").strip() or address,
            email=address,
            password_hash=hashed,
            method=METHOD,
            remote=remote,
            by_admin=admin,
        )
        row = get_identity(auth.db, identity)
        out: dict[str, Any] = {"identity": identity, "status": row.status}
        if row.status == "active" and not admin:
            out.update(auth.issue_token(identity, METHOD, remote))
        await auth.durable()
        return out

    async def login(self, email: Any, password: Any, remote: str | None = None) -> dict[str, Any]:
        auth = self.auth
        if not isinstance(password, str) or len(password) > MAX_LENGTH:
            raise ApiError("invalid_request", f"password must be a string of at most {MAX_LENGTH}")
        address = normalize_email(email)
        auth.rate_limit(remote, METHOD)
        await self.prepare()
        row = identity_by_email(auth.db, address)
        pw = None if row is None else password_row(auth.db, row.identity)
        target = pw.hash if pw is not None else self._dummy
        assert target is not None
        ok = await asyncio.to_thread(_verify, self.hasher, target, password)
        new_hash = None
        if ok and pw is not None and self.hasher.check_needs_rehash(pw.hash):
            new_hash = await asyncio.to_thread(self.hasher.hash, password)
        # Read again after the awaits; nothing awaits from here to the commit.
        row = identity_by_email(auth.db, address)
        identity = None if row is None else str(row.identity)
        pw = None if identity is None else password_row(auth.db, identity)
        now = auth.now_us()
        if pw is None:
            reason = "unknown_email" if row is None else "no_password"
        elif pw.locked_until is not None and pw.locked_until > now:
            reason = "locked"
        elif not ok or pw.hash != target:
            reason = "wrong_password"
        elif row.status != "active":
            reason = "identity_not_active"
        else:
            reason = None
        if reason is not None:
            s = auth.settings
            auth.db.execute(
                PASSWORD_FAILURE,
                {
                    "identity": identity,
                    "now": now,
                    "max_failures": s.password_max_failures,
                    "lockout_us": int(s.password_lockout_s * 1_000_000),
                    "reason": reason,
                    "remote": remote,
                },
            )
            await auth.durable()
            if reason == "identity_not_active":
                raise ApiError("identity_not_active", f"this identity is {row.status}")
            raise ApiError(INVALID, INVALID_MESSAGE)
        assert identity is not None
        auth.db.execute(
            PASSWORD_SUCCESS, {"identity": identity, "remote": remote, "new_hash": new_hash}
        )
        return await auth.login_succeeded(identity, METHOD, remote, audited=True)
