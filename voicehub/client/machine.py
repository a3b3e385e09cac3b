"""Machine login for the SDK: an Ed25519 key pair on disk and the challenge/response login.

``load_or_create_key(path)`` reads the private key at ``path`` (PKCS#8 PEM) or creates
it there, mode 0600, on first use; ``login(ws_url, key)`` asks the server for a
challenge (``POST /v1/auth/challenge``), signs ``challenge_message(challenge)`` and
exchanges the signature for a session token (``POST /v1/auth/ed25519``). The first login
of a key registers its machine identity on the server.

Invariant: the private key never leaves this process (only the public key and
signatures are sent), and a key file is created exclusively (``O_EXCL``) with mode 0600
so an existing key is never overwritten. The functions block; the client runs them on a
worker thread. This module is the only part of the SDK that needs ``cryptography``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voicehub.client.errors import ServerError

MESSAGE_PREFIX = b"voicehub-ed25519-login-v1\n"
"""Must equal ``voicehub.auth.ed25519.MESSAGE_PREFIX`` (the SDK does not import the server)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_or_create_key(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    if not p.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it meanwhile: use that one
        else:
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            return key
    data = p.read_bytes()
    if len(data) == 32:  # a raw private key
        return Ed25519PrivateKey.from_private_bytes(data)
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{p} does not hold an Ed25519 private key")
    return loaded


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url(raw)


def http_base(ws_url: str) -> str:
    """``ws://host:port/v1/ws`` -> ``http://host:port`` (wss -> https)."""
    u = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme, u.scheme)
    return urllib.parse.urlunsplit((scheme, u.netloc, "", "", ""))


def _post(url: str, body: dict[str, Any], timeout: float) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"HTTP {e.code}"
        raise ServerError(code, message) from None


def login(
    ws_url: str, key: Ed25519PrivateKey, timeout: float = 10.0, display_name: str | None = None
) -> dict[str, Any]:
    """``{"token", "identity", "expires_at"}`` for ``key``; raises ``ServerError``/``OSError``."""
    base = http_base(ws_url)
    pub = public_key_b64(key)
    ch = _post(f"{base}/v1/auth/challenge", {"public_key": pub}, timeout)
    challenge = str(ch["challenge"])
    sig = key.sign(MESSAGE_PREFIX + challenge.encode("ascii"))
    body: dict[str, Any] = {"public_key": pub, "challenge": challenge, "signature": b64url(sig)}
    if display_name:
        body["display_name"] = display_name
    out: dict[str, Any] = _post(f"{base}/v1/auth/ed25519", body, timeout)
    return out
