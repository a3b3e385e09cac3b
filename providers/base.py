"""The shape of a provider adapter, as the composition root sees it.

An adapter is built from its configuration and a ``ProviderContext``; it contributes
Starlette routes under ``/providers/<name>/``, starts its background work (the command
executor, re-attaching calls that were in progress when voicehub last stopped) once the
node runs, and names the URLs to paste into the provider's console.
"""

from __future__ import annotations

from typing import Protocol

from starlette.routing import BaseRoute


class ProviderAdapter(Protocol):
    name: str

    def routes(self) -> list[BaseRoute]:
        """Every HTTP and WebSocket route of this provider (paths under /providers/<name>/)."""
        ...

    def console_urls(self) -> dict[str, str]:
        """What to configure at the provider, e.g. {"Voice webhook (POST)": "https://..."}."""
        ...

    async def start(self) -> None:
        """After the node started (``ctx.client`` is usable): executor, re-attach."""
        ...

    async def stop(self) -> None:
        """Before the node stops: end live streams, stop background tasks."""
        ...
