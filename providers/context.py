"""What the composition root hands every provider adapter: its client, the session
registry, stream tokens, the public base URL and the audit hook for refused requests.

Adapters are clients like any other: ``client`` is a ``ClientAPI`` acting as the adapter's
declared system identity (an in-process ``LocalClient`` when mounted in ``serve``), so an
adapter never touches storage. ``refused`` records a rejected request (bad signature,
forged/expired/replayed token) as a security audit entry - and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from providers.session import SessionRegistry
from providers.tokens import StreamTokens
from voicehub.client.api import ClientAPI

RefusedHook = Callable[[str, str, dict[str, Any], str | None], None]
"""``refused(provider, reason, detail, remote_address)``."""


@dataclass
class ProviderContext:
    client: ClientAPI
    sessions: SessionRegistry
    tokens: StreamTokens
    public_url: str
    """The base URL the provider reaches voicehub at, e.g. ``https://voice.example.com``
    (no trailing slash); what providers sign and what media stream URLs are built from."""
    refused: RefusedHook

    def url(self, path: str) -> str:
        return self.public_url.rstrip("/") + path

    def ws_url(self, path: str) -> str:
        base = self.public_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + path
