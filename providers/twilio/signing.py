"""Twilio request signatures, checked against the public URL Twilio signed.

Twilio signs ``URL + (sorted POST params, key then value)`` with HMAC-SHA1 under the
account auth token (https://www.twilio.com/docs/usage/security#validating-requests). Behind
a reverse proxy the URL the server sees is not what Twilio signed, so the signed URL is
rebuilt from the configured public base URL, the request path and its raw query string.
``twilio.request_validator.RequestValidator.validate`` accepts the URL with and without an
explicit default port (Twilio's own signing is inconsistent about it).

Invariant: ``SignatureCheck.verify`` is pure (no I/O, no state) and returns a reason string
for every refusal - a missing header is a refusal, never a pass.
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

SIGNATURE_HEADER = "X-Twilio-Signature"


class SignatureCheck:
    """Validates ``X-Twilio-Signature`` for URLs under one public base URL."""

    def __init__(self, auth_token: str, public_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self.public_url = public_url.rstrip("/")

    def signed_url(self, path: str, query: str = "", *, websocket: bool = False) -> str:
        """The URL Twilio signed for a request to ``path`` (``wss://`` for media streams)."""
        base = self.public_url
        if websocket:
            if base.startswith("https://"):
                base = "wss://" + base[len("https://") :]
            elif base.startswith("http://"):
                base = "ws://" + base[len("http://") :]
        url = base + path
        return f"{url}?{query}" if query else url

    def verify(self, url: str, params: Mapping[str, str], signature: str | None) -> str | None:
        """None when ``signature`` is Twilio's for ``url`` + ``params``; else why not.

        ``params`` may be a multi-dict with ``getlist`` (Starlette's ``FormData``): a
        repeated form field is signed value by value, as Twilio does."""
        if not signature:
            return "missing X-Twilio-Signature"
        ok = self._validator.validate(url, params, signature)
        return None if ok else "X-Twilio-Signature does not match"

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """The signature Twilio would send (used by tools and the docs' examples)."""
        return str(self._validator.compute_signature(url, dict(params)))
