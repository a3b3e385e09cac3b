"""Signed session tokens (Ed25519) and the server's secret files (signing key, owner token).

A token is ``vh1.<b64url(payload JSON)>.<b64url(Ed25519 signature over "vh1.<payload>")>``
with payload ``{"sub", "iat", "exp", "jti", "amr"}`` (times in Unix seconds). The signing
key lives in ``<data-dir>/server.key`` (PKCS#8 PEM, mode 0600, created on first start);
a store without a data directory gets a random key per process, so its tokens die with it.

Invariants:

* ``TokenSigner.verify`` accepts a token only if its signature is this server's, over
  exactly the bytes presented, and ``iat <= now < exp``; anything else raises
  ``TokenError`` (the caller then checks that the identity is active *now*);
* secret files are created with mode 0600 and never overwritten: ``load_or_create_key``
  and ``write_secret_file`` create them exclusively (``O_EXCL``) and fsync them before
  they are used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PREFIX: Final = "vh1."
OWNER_PREFIX: Final = "vho1."
KEY_FILE: Final = "server.key"
OWNER_TOKEN_FILE: Final = "owner.token"
MAX_TOKEN = 4096


class TokenError(Exception):
    """A token that is malformed, not ours, or expired (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding; raises ``ValueError`` on anything else."""
    if not isinstance(text, str) or len(text) > 1 << 16:
        raise ValueError("not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not a base64url string") from None


@dataclass(frozen=True)
class Claims:
    sub: str
    iat: int
    exp: int
    jti: str
    amr: str


class TokenSigner:
    """Issues and verifies ``vh1`` tokens with one Ed25519 key."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.public = key.public_key()
        self.ttl_s = ttl_s
        self.clock = clock

    def issue(self, sub: str, amr: str) -> tuple[str, Claims]:
        now = int(self.clock())
        claims = Claims(sub, now, now + max(1, round(self.ttl_s)), secrets.token_hex(12), amr)
        payload = json.dumps(claims.__dict__, separators=(",", ":"), sort_keys=True).encode()
        signed = PREFIX + b64url(payload)
        sig = self.key.sign(signed.encode())
        return f"{signed}.{b64url(sig)}", claims

    def verify(self, token: str) -> Claims:
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN:
            raise TokenError("malformed")
        signed, dot, sig_text = token.rpartition(".")
        if not dot or signed.count(".") != 1:
            raise TokenError("malformed")
        try:
            sig = b64url_decode(sig_text)
            self.public.verify(sig, signed.encode())
        except (ValueError, InvalidSignature):
            raise TokenError("bad_signature") from None
        try:
            raw: Any = json.loads(b64url_decode(signed[len(PREFIX) :]))
            claims = Claims(
                str(raw["sub"]), int(raw["iat"]), int(raw["exp"]), str(raw["jti"]), str(raw["amr"])
            )
        except (ValueError, KeyError, TypeError):
            raise TokenError("malformed") from None
        now = self.clock()
        if now >= claims.exp:
            raise TokenError("expired")
        if claims.iat > now + 60:  # a token from the future: a clock step or a forgery
            raise TokenError("not_yet_valid")
        return claims


# ---------------------------------------------------------------- secret files


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never overwriting), write and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_or_create_key(data_dir: Path | None) -> Ed25519PrivateKey:
    """The server's signing key: ``<data_dir>/server.key``, created on first use."""
    if data_dir is None:
        return Ed25519PrivateKey.generate()
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_secret_file(path, pem)
            return key
        except FileExistsError:
            pass  # created meanwhile: use that one
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


def new_owner_token() -> str:
    return OWNER_PREFIX + secrets.token_urlsafe(32)
