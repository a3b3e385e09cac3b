"""The Vonage ingress adapter: answer and event webhooks, the media socket, commands.

``VonageAdapter(config, ctx)`` mounts ``/providers/vonage/answer`` (GET or POST: a call
arrives -> ``call_started`` -> an NCCO connecting it to our media socket),
``/providers/vonage/event`` (POST: call-status events -> ``provider_event``; the media
connect's synchronous events - a ``disconnected`` socket is answered with a fresh connect,
which re-attaches the call after a restart) and ``/providers/vonage/media`` (the
WebSocket, see ``media.py``). ``start()`` runs the command executor (hangup, transfer) and
transfers calls left in progress without a live stream back to a fresh connect.

Invariants: every webhook must carry a valid Vonage signature (``signing.py``); a rejected
request answers 401/400 and records ``ctx.refused`` - its only effect; every reducer call
has a request id derived from Vonage's ids (call uuid, event id), so a retried webhook
never applies twice; the adapter only talks to the store through ``ctx.client``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from providers.commands import CommandExecutor, ProviderError
from providers.config import VonageConfig
from providers.context import ProviderContext
from providers.vonage import ncco
from providers.vonage.control import VonageControl
from providers.vonage.events import VonageEvent, parse_event
from providers.vonage.media import PROVIDER, VonageMedia
from providers.vonage.signing import MAX_AGE_S, SigningKeys, WebhookRejected, verify_webhook
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.providers.vonage")

ANSWER_PATH = "/providers/vonage/answer"
EVENT_PATH = "/providers/vonage/event"
MEDIA_PATH = "/providers/vonage/media"
LIVE = ("ringing", "in_progress")
CONNECT_FAILED = frozenset({"failed", "unanswered", "rejected", "timeout", "busy"})
CALL_SQL = "SELECT id, status, provider, provider_call_id, from_number FROM calls"


def e164(number: Any) -> str:
    """Vonage's ``447700900000`` as ``+447700900000``; anything else unchanged."""
    s = str(number or "").strip()
    return f"+{s}" if s.isdigit() else s


class VonageAdapter:
    name = PROVIDER

    def __init__(
        self,
        config: VonageConfig,
        ctx: ProviderContext,
        *,
        greeting: str = "",
        hold_s: float = ncco.HOLD_S,
        business_jurisdiction: str = "",
        max_reattach: int = 10,
        clock: Callable[[], float] = time.time,
        control: VonageControl | None = None,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.greeting = greeting
        self.hold_s = hold_s
        self.business_jurisdiction = business_jurisdiction
        self.max_reattach = max_reattach
        self.clock = clock
        self.keys = SigningKeys(config.signature_secret, config.api_key, config.application_id)
        self.control = control or VonageControl(config)
        self.media = VonageMedia(ctx)
        self.executor: CommandExecutor | None = None
        self.reattaches: dict[int, int] = {}
        """Call id -> fresh connects handed out for it by this process."""
        self.restart_transfers: dict[int, str] = {}
        """Call id -> outcome of the transfer ``start()`` made for it ("ok" or the error)."""
        self._answer_jtis: dict[str, float] = {}
        """``jti`` of answer webhooks already honoured -> when it may be forgotten."""

    # ---------------------------------------------------------------- ProviderAdapter

    def routes(self) -> list[BaseRoute]:
        return [
            Route(ANSWER_PATH, self.answer, methods=["GET", "POST"]),
            Route(EVENT_PATH, self.event, methods=["POST"]),
            WebSocketRoute(MEDIA_PATH, self.media.endpoint),
        ]

    def console_urls(self) -> dict[str, str]:
        return {
            "Answer URL (GET)": self.ctx.url(ANSWER_PATH),
            "Event URL (POST)": self.ctx.url(EVENT_PATH),
        }

    async def start(self) -> None:
        self.executor = CommandExecutor(self.ctx.client, PROVIDER, self.control, self.ctx.sessions)
        await self.executor.start()
        await self.reattach_in_progress()

    async def stop(self) -> None:
        if self.executor is not None:
            await self.executor.stop()
        await self.media.close_all()

    # ---------------------------------------------------------------- helpers

    def _reject(self, request: Request, reason: str, detail: str, status: int = 401) -> Response:
        remote = request.client.host if request.client else None
        log.warning("vonage %s refused: %s (%s)", request.url.path, reason, detail)
        self.ctx.refused(PROVIDER, reason, {"where": request.url.path, "detail": detail}, remote)
        return JSONResponse({"error": reason}, status_code=status)

    async def _verified(
        self, request: Request, params: dict[str, str] | None
    ) -> tuple[bytes, dict[str, Any]]:
        body = await request.body()
        claims = verify_webhook(
            request.headers.get("authorization"), body, self.keys, now=self.clock(), params=params
        )
        return body, claims

    def _once(self, claims: dict[str, Any]) -> None:
        """An answer webhook's token is single-use: replaying a captured one (within the
        ``iat`` window) would hand out a fresh media token for a live call."""
        jti = claims.get("jti")
        if not isinstance(jti, str):
            return
        now = self.clock()
        if len(self._answer_jtis) > 1000:
            self._answer_jtis = {j: t for j, t in self._answer_jtis.items() if t > now}
        if self._answer_jtis.get(jti, 0.0) > now:
            raise WebhookRejected("replayed_signature", "this answer webhook was already used")
        self._answer_jtis[jti] = now + 2 * MAX_AGE_S

    def _connect(self, call_id: int, from_number: str, uuid: str, conv: str = "") -> Any:
        return ncco.media_connect(
            self.ctx.ws_url(MEDIA_PATH),
            call_id,
            self.ctx.tokens.issue(call_id),
            self.ctx.url(EVENT_PATH),
            from_number=from_number,
            uuid=uuid,
            conversation_uuid=conv,
        )

    async def _call(self, *, call_id: int | None = None, uuid: str = "") -> dict[str, Any] | None:
        if call_id is not None:
            res = await self.ctx.client.query(f"{CALL_SQL} WHERE id = $1", [call_id])
        else:
            res = await self.ctx.client.query(
                f"{CALL_SQL} WHERE provider = $1 AND provider_call_id = $2", [PROVIDER, uuid]
            )
        rows = res.dicts()
        if not rows or rows[0]["provider"] != PROVIDER:
            return None
        return dict(rows[0])

    # ---------------------------------------------------------------- answer webhook

    async def answer(self, request: Request) -> Response:
        params = dict(request.query_params)
        try:
            body, claims = await self._verified(
                request, params if request.method == "GET" else None
            )
            self._once(claims)
        except WebhookRejected as e:
            return self._reject(request, e.reason, e.detail)
        data: Any = params
        if request.method == "POST" and body:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        if not isinstance(data, dict) or not isinstance(data.get("uuid"), str) or not data["uuid"]:
            return self._reject(request, "malformed_request", "answer without a uuid", 400)
        uuid = data["uuid"]
        from_number = str(data.get("from") or data.get("from_user") or "")
        direction = data.get("direction") if data.get("direction") == "outbound" else "inbound"
        args = {
            "provider": PROVIDER,
            "provider_call_id": uuid,
            "direction": direction,
            "from_number": e164(from_number),
            "to_number": e164(data.get("to")),
            "from_jurisdiction": "" if direction == "inbound" else self.business_jurisdiction,
            "to_jurisdiction": self.business_jurisdiction if direction == "inbound" else "",
        }
        try:
            started = await self.ctx.client.call(
                "call_started", args, request_id=f"vonage:answer:{uuid}"
            )
        except ServerError as e:
            log.error("vonage answer %s: call_started failed: %s", uuid, e)
            return JSONResponse({"error": e.code}, status_code=500)
        call_id = int(started["call_id"])
        conv = str(data.get("conversation_uuid") or "")
        connect = self._connect(call_id, from_number, uuid, conv)
        return JSONResponse(ncco.answer_ncco(connect, self.greeting, self.hold_s))

    # ---------------------------------------------------------------- event webhook

    async def event(self, request: Request) -> Response:
        try:
            body, _ = await self._verified(request, None)
        except WebhookRejected as e:
            return self._reject(request, e.reason, e.detail)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return self._reject(request, "malformed_request", "event body is not JSON", 400)
        ev = parse_event(data)
        if ev is None:
            log.info("vonage event without a call uuid ignored: %s", data.get("type"))
            return Response(status_code=200)
        call = await self._event_call(ev)
        pcid = str(call["provider_call_id"]) if call is not None else ev.uuid
        args = {
            "provider": PROVIDER,
            "provider_event_id": ev.event_id,
            "provider_call_id": pcid,
            "kind": ev.kind,
            "payload": ev.payload,
        }
        try:
            await self.ctx.client.call(
                "provider_event", args, request_id=f"vonage:event:{ev.event_id}"
            )
        except ServerError as e:
            log.error("vonage event %s: provider_event failed: %s", ev.event_id, e)
            return JSONResponse({"error": e.code}, status_code=500)
        return await self._synchronous_answer(ev, call)

    async def _event_call(self, ev: VonageEvent) -> dict[str, Any] | None:
        cid = ev.call_id_header
        if cid is not None:
            call = await self._call(call_id=cid)
            if call is not None:
                return call
        return await self._call(uuid=ev.uuid)

    async def _synchronous_answer(self, ev: VonageEvent, call: dict[str, Any] | None) -> Response:
        """The reply to an event: an NCCO for the media connect's synchronous events that
        need one, else an empty 200 (no NCCO: the current one goes on)."""
        if ev.status == "disconnected":
            if call is None or call["status"] not in LIVE:
                return JSONResponse(ncco.goodbye_ncco())
            call_id = int(call["id"])
            n = self.reattaches.get(call_id, 0)
            if n >= self.max_reattach:
                log.error("call %s: media socket dropped %d times: giving up", call_id, n)
                return JSONResponse(ncco.goodbye_ncco())
            self.reattaches[call_id] = n + 1
            log.info("call %s: media socket disconnected: reconnecting", call_id)
            connect = self._connect(
                call_id, str(call["from_number"] or ""), str(call["provider_call_id"])
            )
            return JSONResponse(ncco.dump(ncco.reconnect_actions(connect, self.hold_s)))
        if ev.websocket_leg and ev.status in CONNECT_FAILED:
            log.error("vonage could not open the media socket (%s)", ev.status)
            return JSONResponse(
                ncco.goodbye_ncco("Sorry, we cannot take your call right now. Goodbye.")
            )
        return Response(status_code=200)

    # ---------------------------------------------------------------- restart re-attach

    async def reattach_in_progress(self) -> None:
        """Calls in progress with no live stream (voicehub was down when their socket
        dropped): transfer each to a fresh media connect through the REST API."""
        res = await self.ctx.client.query(
            f"{CALL_SQL} WHERE provider = $1 AND status = 'in_progress'", [PROVIDER]
        )
        for call in res.dicts():
            call_id = int(call["id"])
            if self.ctx.sessions.get(call_id) is not None:
                continue
            uuid = str(call["provider_call_id"])
            connect = self._connect(call_id, str(call["from_number"] or ""), uuid)
            try:
                await self.control.transfer_ncco(uuid, ncco.reconnect_actions(connect, self.hold_s))
            except ProviderError as e:  # the call is gone at Vonage; its events will say so
                log.warning("call %s: re-attach transfer failed: %s", call_id, e)
                self.restart_transfers[call_id] = str(e)
            else:
                log.info("call %s: re-attached after restart (transfer to a new connect)", call_id)
                self.restart_transfers[call_id] = "ok"
