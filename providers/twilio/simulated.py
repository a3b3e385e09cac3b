"""The Twilio simulator's call control: what "Twilio's REST API" does when the caller is
``voicehub simulate-call`` instead of a phone.

With no Twilio credentials configured, a node mounts the Twilio routes in simulator mode:
webhooks and media streams must be signed with a development auth token that only the
data directory's owner can read (``<data-dir>/simulator.json``, 0600), so nothing outside
can drive them. Commands are performed locally and reported like Twilio's answers:
hangup closes the call's media stream (the simulated caller hears the line drop) and ends
the call, as Twilio's ``completed`` status callback would; transfer is recorded as done;
the re-attach redirect has nobody to redirect, so in-progress simulated calls are ended.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from providers.commands import ProviderError
from providers.context import ProviderContext
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.providers.twilio")


class SimulatedTwilioControl:
    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx

    async def _end(self, provider_call_id: str, reason: str) -> int | None:
        res = await self.ctx.client.query(
            "SELECT id FROM calls WHERE provider = 'twilio' AND provider_call_id = $1",
            [provider_call_id],
        )
        if not res.rows:
            raise ProviderError(f"20404: no simulated call {provider_call_id}")
        call_id = int(res.rows[0][0])
        session = self.ctx.sessions.get(call_id)
        if session is not None:
            ws: Any = getattr(session.transport, "ws", None)
            self.ctx.sessions.close(session, reason)
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close(1000)
        with contextlib.suppress(ServerError):  # already ended: nothing to do
            await self.ctx.client.call(
                "call_ended",
                {"call_id": call_id, "reason": "completed"},
                request_id=f"twilio-sim:end:{provider_call_id}",
            )
        return call_id

    async def hangup(self, provider_call_id: str) -> dict[str, Any]:
        await self._end(provider_call_id, "hangup")
        return {"sid": provider_call_id, "status": "completed", "simulated": True}

    async def transfer(self, provider_call_id: str, target: str) -> dict[str, Any]:
        log.info("simulated call %s: transfer to %s (nobody to dial)", provider_call_id, target)
        return {"sid": provider_call_id, "target": target, "simulated": True}

    async def redirect(self, provider_call_id: str, document: str) -> dict[str, Any]:
        await self._end(provider_call_id, "restart")
        raise ProviderError("the simulated caller went away with the restart; call ended")
