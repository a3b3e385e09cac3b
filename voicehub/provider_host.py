"""Part of the composition root: builds the enabled provider adapters and mounts them.

For each provider whose credentials are configured, the host declares a system identity
(the same one on every start: its Ed25519 key is derived from the server key and the
provider's name, so request ids it used before a restart still deduplicate), gives the
adapter an in-process ``LocalClient`` acting as that identity, a shared
``SessionRegistry`` (where media workers find live calls), stream tokens keyed by the server
key, and the public base URL; then mounts its routes under ``/providers/<name>/``.

Refused provider requests (bad signatures, forged or replayed tokens) are written to the
security audit (``auth_audit``, event ``provider_request_refused``) - at most one row per
provider, reason and address every ``audit_interval_s``, with the number suppressed - so a
flood of forgeries cannot grow the store without bound.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from providers.base import ProviderAdapter
from providers.config import TwilioConfig, VonageConfig
from providers.context import ProviderContext
from providers.session import SessionRegistry
from providers.tokens import StreamTokens
from voicehub.server.hub import Hub
from voicehub.server.local import LocalClient

log = logging.getLogger("voicehub.providers")


def component_key(server_key: Ed25519PrivateKey, name: str) -> Ed25519PrivateKey:
    """A stable Ed25519 key for an in-process component, derived from the server key."""
    raw = server_key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    seed = hmac.new(raw, b"voicehub-component-v1:" + name.encode(), hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


class RefusalAudit:
    """Writes refused provider requests to ``auth_audit``, rate-limited per source."""

    def __init__(self, hub: Hub, interval_s: float = 10.0) -> None:
        self.hub = hub
        self.interval_s = interval_s
        self._last: dict[tuple[str, str, str | None], tuple[float, int]] = {}
        self.refused = 0

    def __call__(
        self, provider: str, reason: str, detail: dict[str, Any], remote: str | None
    ) -> None:
        self.refused += 1
        log.warning("%s: refused a request from %s: %s", provider, remote or "?", reason)
        key = (provider, reason, remote)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        suppressed = last[1] if last is not None else 0
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        info = {"provider": provider, "reason": reason, **detail}
        if suppressed:
            info["suppressed_since_last"] = suppressed
        try:
            self.hub.auth.audit("provider_request_refused", None, provider, False, info, remote)
        except Exception as e:  # the store refusing writes must not turn a 403 into a 500
            log.error("cannot audit a refused %s request: %s", provider, e)


class ProviderHost:
    """The node's provider adapters (possibly none)."""

    def __init__(
        self,
        hub: Hub,
        public_url: str,
        twilio: TwilioConfig | None = None,
        vonage: VonageConfig | None = None,
        *,
        token_ttl_s: float = 300.0,
    ) -> None:
        self.hub = hub
        self.public_url = public_url.rstrip("/")
        self.sessions = SessionRegistry()
        server_key = hub.auth.signer.key
        seed = server_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self.tokens = StreamTokens(seed, ttl_s=token_ttl_s)
        self.audit = RefusalAudit(hub)
        self.clients: dict[str, LocalClient] = {}
        self.adapters: dict[str, ProviderAdapter] = {}
        if twilio is not None:
            from providers.twilio.adapter import TwilioAdapter

            self.adapters["twilio"] = TwilioAdapter(twilio, self._context("twilio"))
        if vonage is not None:
            from providers.vonage.adapter import VonageAdapter

            self.adapters["vonage"] = VonageAdapter(vonage, self._context("vonage"))

    def _context(self, name: str) -> ProviderContext:
        auth = self.hub.auth
        public = (
            component_key(auth.signer.key, name)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        identity = auth.declare_system_identity(f"provider:{name}", public)
        principal = auth.for_identity(identity, "system")
        client = LocalClient(self.hub, principal, name=name)
        self.clients[name] = client
        return ProviderContext(client, self.sessions, self.tokens, self.public_url, self.audit)

    def routes(self) -> list[Any]:
        return [r for a in self.adapters.values() for r in a.routes()]

    def console_urls(self) -> dict[str, dict[str, str]]:
        return {name: a.console_urls() for name, a in self.adapters.items()}

    async def start(self) -> None:
        for name, a in self.adapters.items():
            t0 = time.monotonic()
            await a.start()
            log.info("%s adapter started in %.0f ms", name, (time.monotonic() - t0) * 1000)

    async def stop(self) -> None:
        for a in self.adapters.values():
            try:
                await a.stop()
            except Exception:
                log.exception("stopping the %s adapter failed", a.name)
        await self.sessions.shutdown()
        for c in self.clients.values():
            await c.close()
