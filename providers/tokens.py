"""Signed, single-use, short-lived tokens that bind a provider media stream to its call.

The webhook that answers a call puts a token in the TwiML ``<Parameter>`` / NCCO header;
the media WebSocket must present it. A token is ``v1.<call_id>.<expires>.<nonce>.<mac>``
with an HMAC-SHA256 over the rest under a key derived from the server key, so it cannot
be forged, altered (another call id) or used after it expires, and ``StreamTokens.redeem``
accepts each nonce once (a replayed stream start is refused). Nonces are remembered until
their token expires; after a restart the re-attach issues fresh tokens anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable


class TokenError(ValueError):
    """A stream token is malformed, forged, expired or already used."""


class StreamTokens:
    def __init__(
        self, key: bytes, ttl_s: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        if len(key) < 16:
            raise ValueError("the stream token key must have at least 16 bytes")
        self._key = hashlib.sha256(b"voicehub-stream-token-v1\n" + key).digest()
        self.ttl_s = ttl_s
        self._clock = clock
        self._used: dict[str, float] = {}

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, call_id: int) -> str:
        expires = int(self._clock() + self.ttl_s)
        body = f"v1.{call_id}.{expires}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(body)}"

    def check(self, token: str) -> int:
        """The call id of a valid, unexpired token (not consumed)."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 5 or parts[0] != "v1":
            raise TokenError("malformed stream token")
        body = ".".join(parts[:4])
        if not hmac.compare_digest(self._mac(body), parts[4]):
            raise TokenError("stream token signature does not match")
        try:
            call_id, expires = int(parts[1]), int(parts[2])
        except ValueError:
            raise TokenError("malformed stream token") from None
        if self._clock() > expires:
            raise TokenError("stream token expired")
        return call_id

    def redeem(self, token: str) -> int:
        """Check and consume ``token``: its call id; a second use raises."""
        call_id = self.check(token)
        now = self._clock()
        self._used = {n: e for n, e in self._used.items() if e >= now}
        nonce = token.split(".")[3]
        if nonce in self._used:
            raise TokenError("stream token already used")
        self._used[nonce] = now + self.ttl_s
        return call_id
