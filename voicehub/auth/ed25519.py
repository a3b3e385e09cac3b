"""Machine login with an Ed25519 key: a single-use challenge, signed by the machine's key.

``POST /v1/auth/challenge {"public_key"}`` -> ``{"challenge", "expires_at"}``, then
``POST /v1/auth/ed25519 {"public_key", "challenge", "signature"}`` -> a session token.
The machine signs ``challenge_message(challenge)``: the ASCII bytes of
``"voicehub-ed25519-login-v1\\n" + challenge`` (domain separation: a signature made for
this server's login is never a signature over anything else). The first login of a key
registers a machine identity under the registration policy.

Invariants:

* a challenge is answered at most once: ``ChallengeStore.take`` removes it before it is
  checked, so a replayed, expired, or foreign (issued for another key) challenge fails;
* a token is issued only after the signature verified under the key the challenge was
  issued for; every refusal is audited and answered ``401 ed25519_invalid``.

Pending challenges live in memory (bounded, oldest dropped first) and are lost on
restart; a machine simply asks for a new one. Signature checks run on a worker thread.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from voicehub.auth.identities import identity_by_key
from voicehub.auth.tokens import b64url, b64url_decode
from voicehub.server.errors import ApiError

if TYPE_CHECKING:
    from voicehub.auth.service import AuthService

METHOD: Final = "ed25519"
INVALID: Final = "ed25519_invalid"
MESSAGE_PREFIX: Final = b"voicehub-ed25519-login-v1\n"


def challenge_message(challenge: str) -> bytes:
    """The bytes a machine signs to answer ``challenge``."""
    return MESSAGE_PREFIX + challenge.encode("ascii")


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def decode_public_key(value: Any) -> bytes:
    """A raw 32-byte Ed25519 public key from base64url; ``invalid_request`` otherwise."""
    try:
        raw = b64url_decode(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ApiError("invalid_request", "public_key must be a raw Ed25519 key (32 bytes, b64url)")
    return raw


@dataclass(frozen=True)
class Pending:
    public_key: bytes
    expires_at: float


class ChallengeError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChallengeStore:
    """Pending challenges by value, single use, expiring ``ttl_s`` after issue."""

    def __init__(
        self, ttl_s: float, clock: Callable[[], float] = time.time, max_pending: int = 10_000
    ) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_pending = max_pending
        self._pending: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, public_key: bytes) -> tuple[str, float]:
        now = self.clock()
        while self._pending:  # one ttl for all: expired ones are in front
            first = next(iter(self._pending.values()))
            if first.expires_at > now and len(self._pending) < self.max_pending:
                break
            self._pending.popitem(last=False)
        challenge = secrets.token_urlsafe(32)
        p = Pending(public_key, now + self.ttl_s)
        self._pending[challenge] = p
        return challenge, p.expires_at

    def take(self, challenge: str, public_key: bytes) -> Pending:
        """Remove and return the challenge; raises ``ChallengeError`` (it is gone either way)."""
        p = self._pending.pop(challenge, None)
        if p is None:
            raise ChallengeError("unknown_challenge")
        if p.expires_at <= self.clock():
            raise ChallengeError("expired_challenge")
        if not secrets.compare_digest(p.public_key, public_key):
            raise ChallengeError("wrong_key")
        return p


class Ed25519Auth:
    """The two steps of an Ed25519 login, on top of the auth service."""

    def __init__(self, auth: AuthService) -> None:
        self.auth = auth
        self.challenges = ChallengeStore(auth.settings.challenge_ttl_s, auth.clock)

    def challenge(self, public_key: Any) -> dict[str, Any]:
        key = decode_public_key(public_key)
        challenge, expires_at = self.challenges.put(key)
        return {"challenge": challenge, "expires_at": int(expires_at * 1_000_000)}

    def _refuse(
        self, reason: str, key: bytes, identity: str | None, remote: str | None
    ) -> ApiError:
        detail = {"reason": reason, "public_key": b64url(key)}
        self.auth.audit("login", identity, METHOD, False, detail, remote)
        return ApiError(INVALID, "the challenge or its signature is not valid; ask for a new one")

    async def login(
        self,
        public_key: Any,
        challenge: Any,
        signature: Any,
        display_name: str | None = None,
        remote: str | None = None,
    ) -> dict[str, Any]:
        key = decode_public_key(public_key)
        if not isinstance(challenge, str) or not isinstance(signature, str):
            raise ApiError("invalid_request", "challenge and signature must be strings")
        try:
            self.challenges.take(challenge, key)
        except ChallengeError as e:
            raise self._refuse(e.reason, key, None, remote) from None
        try:
            sig = b64url_decode(signature)
        except ValueError:
            sig = b""
        ok = len(sig) == 64 and await asyncio.to_thread(
            verify_signature, key, challenge_message(challenge), sig
        )
        row = identity_by_key(self.auth.db, key)
        if not ok:
            raise self._refuse("bad_signature", key, None if row is None else row.identity, remote)
        # From here to the commits there is no await: the key lookup holds.
        if row is None:
            name = display_name or f"machine {b64url(key)[:10]}"
            identity = self.auth.register(
                "machine", name, public_key=key, method=METHOD, remote=remote
            )
        else:
            identity = str(row.identity)
        return await self.auth.login_succeeded(
            identity, METHOD, remote, {"public_key": b64url(key)}
        )
