"""The client API that in-process components and remote clients share.

``ClientAPI`` is what provider adapters and media workers are written against: call a
reducer, run a query, subscribe. ``voicehub.client.Client`` (over a WebSocket) and
``voicehub.server.local.LocalClient`` (in the server's process) both satisfy it, so a
component never touches storage internals and can be moved out of process unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from voicehub.client.cache import Subscription


class ClientAPI(Protocol):
    async def call(
        self,
        reducer: str,
        args: Any = None,
        *,
        request_id: str | int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a reducer (idempotently by ``request_id``); its return value or ServerError."""
        ...

    async def query(self, sql: str, params: Any = None, *, timeout: float | None = None) -> Any:
        """One read-only query; a ``QueryRows`` (``columns``, ``rows``, ``offset``)."""
        ...

    async def subscribe(
        self,
        sql: str,
        params: Any = None,
        *,
        query_id: str | int | None = None,
        key: Sequence[str] | Literal["auto"] | None = "auto",
        as_dict: bool | None = None,
        on_insert: Callable[[Any], object] | None = None,
        on_delete: Callable[[Any], object] | None = None,
        on_update: Callable[[Any, Any], object] | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """A live query whose cache and callbacks follow every commit, in offset order."""
        ...
