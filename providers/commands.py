"""The provider side of the ``call_commands`` outbox: hang up, transfer, clear.

Reducers never do I/O: ``hangup``/``transfer``/``interrupt`` write a ``call_commands`` row.
Each adapter runs one ``CommandExecutor`` that subscribes to the pending commands of its
provider's calls, performs each through the adapter's ``ProviderControl`` (the provider's
REST API) or the live ``CallSession`` (``clear``), and reports through ``command_result``:
``sent`` before the request goes out, then ``done`` or ``failed`` with the provider's answer.
Reports carry request ids derived from the command id, so a report retried after a crash
is not applied twice, and a command is performed at most once per process; a command left
``sent`` by a crash is performed again on the next start (hangup and transfer of a call
that already moved answer with a provider error, recorded as ``failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from providers.session import SessionRegistry
from voicehub.client.api import ClientAPI
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.providers")

PENDING_SQL = (
    "SELECT c.id, c.call_id, c.kind, c.args, c.status, k.provider_call_id"
    " FROM call_commands AS c JOIN calls AS k ON k.id = c.call_id"
    " WHERE k.provider = $1 AND c.status IN ('pending', 'sent')"
)


class ProviderError(Exception):
    """The provider refused or failed a request (its message is recorded on the command)."""


class ProviderControl(Protocol):
    """One provider's call-control API (blocking SDK calls run in a thread by the caller)."""

    async def hangup(self, provider_call_id: str) -> dict[str, Any]: ...

    async def transfer(self, provider_call_id: str, target: str) -> dict[str, Any]: ...


class CommandExecutor:
    def __init__(
        self,
        client: ClientAPI,
        provider: str,
        control: ProviderControl,
        sessions: SessionRegistry,
    ) -> None:
        self.client = client
        self.provider = provider
        self.control = control
        self.sessions = sessions
        self._started: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.performed = 0

    async def start(self) -> None:
        await self.client.subscribe(
            PENDING_SQL,
            [self.provider],
            key=["id"],
            as_dict=True,
            on_insert=self._on_row,
            on_update=lambda _old, new: self._on_row(new),
        )

    def _on_row(self, row: dict[str, Any]) -> None:
        cid = int(row["id"])
        if cid in self._started:
            return
        self._started.add(cid)
        t = asyncio.get_running_loop().create_task(self._perform(row))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _report(self, cid: int, status: str, result: Any = None, error: str = "") -> None:
        args = {"command_id": cid, "status": status, "result": result, "error": error}
        try:
            await self.client.call("command_result", args, request_id=f"cmd:{cid}:{status}")
        except ServerError as e:
            log.warning("command %d: cannot record %s: %s", cid, status, e)

    async def _perform(self, row: dict[str, Any]) -> None:
        cid, kind, sid = int(row["id"]), str(row["kind"]), str(row["provider_call_id"])
        args = row.get("args") or {}
        if row["status"] == "pending":
            await self._report(cid, "sent")
        try:
            if kind == "hangup":
                result = await self.control.hangup(sid)
            elif kind == "transfer":
                result = await self.control.transfer(sid, str(args.get("target", "")))
            elif kind == "clear":
                session = self.sessions.get(int(row["call_id"]))
                if session is not None:
                    await session.clear()
                result = {"live_stream": session is not None}
            else:
                raise ProviderError(f"{self.provider} cannot perform {kind!r} commands")
        except ProviderError as e:
            log.warning("command %d (%s %s) failed: %s", cid, kind, sid, e)
            await self._report(cid, "failed", None, str(e))
            return
        except Exception as e:  # a bug or an SDK surprise: recorded, never silent
            log.exception("command %d (%s %s) failed", cid, kind, sid)
            await self._report(cid, "failed", None, f"{type(e).__name__}: {e}")
            return
        self.performed += 1
        await self._report(cid, "done", result)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
