"""Verification of Vonage's signed webhooks (pure, no I/O).

Vonage signs every Voice API webhook with a JWT in ``Authorization: Bearer <jwt>``: HS256
under the account's signature secret, with ``iat``, ``jti``, ``iss`` ("Vonage"),
``api_key``, ``application_id`` and ``payload_hash`` (SHA-256 hex of the request payload)
among its claims. The SDK (``vonage_jwt.verify_signature``) checks the signature only; this
module adds what it leaves out: the payload hash (a tampered body), ``iat`` freshness (a
stale or replayed-late token), and that the token is for our api key and application.

Invariant: ``verify_webhook`` returns the claims only when every check passed; anything
else - no header, a malformed header or token, a forged signature, a stale ``iat``, a body
that does not hash to ``payload_hash`` - raises ``WebhookRejected`` with a stable
``reason`` (what the caller records in the security audit), never another exception.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from vonage_jwt.errors import VonageVerifyJwtError  # type: ignore[import-untyped]
from vonage_jwt.verify_jwt import verify_signature  # type: ignore[import-untyped]

MAX_AGE_S = 300.0
"""How far ``iat`` may be from our clock, either way (Vonage's tokens are fresh per request)."""


class WebhookRejected(Exception):
    """A webhook failed verification; ``reason`` is a stable code for the audit."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SigningKeys:
    signature_secret: str
    api_key: str = ""
    application_id: str = ""


def bearer_token(authorization: str | None) -> str:
    """The JWT of an ``Authorization: Bearer <jwt>`` header."""
    if not authorization:
        raise WebhookRejected("missing_signature", "no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or token.count(".") != 2:
        raise WebhookRejected("malformed_signature", "not a Bearer JWT")
    return token


def compact_json(obj: Any) -> bytes:
    """JSON without whitespace, keys in their given order (how Vonage hashes a payload)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def payload_hashes(body: bytes, params: dict[str, str] | None = None) -> set[str]:
    """The SHA-256 hex digests a genuine ``payload_hash`` may have for this request: of the
    raw body, of its compact JSON re-serialization, or (GET) of the query parameters as a
    compact JSON object in their order."""
    variants: list[bytes] = []
    if body:
        variants.append(body)
        try:
            variants.append(compact_json(json.loads(body)))
        except ValueError:
            pass
    if params:
        variants.append(compact_json(params))
    return {hashlib.sha256(v).hexdigest() for v in variants}


def _any_equal(expected: str, candidates: Iterable[str]) -> bool:
    ok = False
    for c in candidates:
        ok |= hmac.compare_digest(expected.lower(), c)
    return ok


def verify_webhook(
    authorization: str | None,
    body: bytes,
    keys: SigningKeys,
    *,
    now: float,
    params: dict[str, str] | None = None,
    max_age_s: float = MAX_AGE_S,
) -> dict[str, Any]:
    """The verified claims of a signed Vonage webhook, or ``WebhookRejected``."""
    token = bearer_token(authorization)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise WebhookRejected("malformed_signature", type(e).__name__) from None
    if header.get("alg") != "HS256":
        raise WebhookRejected("malformed_signature", f"unexpected alg {header.get('alg')!r}")
    try:
        valid = verify_signature(token, keys.signature_secret)
    except VonageVerifyJwtError as e:  # malformed, expired (exp), immature ...
        raise WebhookRejected("invalid_signature", str(e)[:200]) from None
    if not valid:
        raise WebhookRejected("forged_signature", "signature does not match the secret")
    try:  # the signature is good: read the claims (exp was checked by the SDK)
        claims: dict[str, Any] = jwt.decode(
            token,
            keys.signature_secret,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError as e:
        raise WebhookRejected("invalid_signature", type(e).__name__) from None
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise WebhookRejected("invalid_signature", "no iat claim")
    if abs(now - float(iat)) > max_age_s:
        raise WebhookRejected("stale_signature", f"iat is {now - float(iat):.0f} s away")
    api_key = claims.get("api_key")
    if keys.api_key and api_key is not None and api_key != keys.api_key:
        raise WebhookRejected("wrong_account", "api_key claim is another account's")
    app_id = claims.get("application_id")
    if keys.application_id and app_id is not None and app_id != keys.application_id:
        raise WebhookRejected("wrong_account", "application_id claim is another application's")
    expected = claims.get("payload_hash")
    candidates = payload_hashes(body, params)
    if expected is None:
        if body:  # a body the token does not vouch for
            raise WebhookRejected("payload_mismatch", "no payload_hash claim")
    elif (body or params) and (
        not isinstance(expected, str) or not _any_equal(expected, candidates)
    ):
        raise WebhookRejected("payload_mismatch", "payload_hash does not match")
    return claims
