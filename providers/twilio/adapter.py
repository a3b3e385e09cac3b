"""The Twilio adapter: what the composition root mounts under ``/providers/twilio/``.

Routes: ``POST voice`` (answer a call with ``<Connect><Stream>`` TwiML), ``WS media``
(Media Streams), ``POST status`` (call progress), ``POST recording`` (recording status),
``POST stream-status`` (``<Stream statusCallback>``). ``start()`` runs the command executor
(hangup/transfer through the REST API, clear on the live session) and re-attaches calls
that were in progress when voicehub stopped, by replacing their TwiML with a fresh
``<Connect><Stream>`` (new token) so Twilio reconnects the stream to this process.

Invariants: every request is checked against ``X-Twilio-Signature`` for the *public* URL
before anything else; a refused request is answered 403 (a WebSocket: closed 1008 before
the upgrade completes, which the server sends as HTTP 403) and leaves nothing but the
audit entry from ``ctx.refused``. Every reducer call carries a request id derived from
Twilio's ids, so Twilio's retries never apply twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from providers.commands import CommandExecutor, ProviderControl, ProviderError
from providers.config import TwilioConfig
from providers.context import ProviderContext
from providers.twilio import twiml
from providers.twilio import webhooks as wh
from providers.twilio.media import POLICY_VIOLATION, MediaStream
from providers.twilio.rest import TwilioControl
from providers.twilio.signing import SIGNATURE_HEADER, SignatureCheck
from providers.twilio.simulated import SimulatedTwilioControl
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.providers.twilio")

BASE = "/providers/twilio"
VOICE_PATH = f"{BASE}/voice"
MEDIA_PATH = f"{BASE}/media"
STATUS_PATH = f"{BASE}/status"
RECORDING_PATH = f"{BASE}/recording"
STREAM_STATUS_PATH = f"{BASE}/stream-status"

STATUS_SEEN_SQL = (
    "SELECT kind, payload FROM call_events WHERE provider = 'twilio' AND provider_call_id = $1"
)
IN_PROGRESS_SQL = (
    "SELECT id, provider_call_id FROM calls WHERE provider = 'twilio' AND status = 'in_progress'"
)


REDIRECT_WINDOW_S = 60.0
"""How long after voicehub redirected a call a stream ``stop`` counts as that redirect's."""


class _Redirects:
    """The REST control, noting each call voicehub redirects (transfer, re-attach) before
    the request goes out, so the stream ``stop`` it causes does not end the call."""

    def __init__(self, inner: Any, note: Callable[[str], None]) -> None:
        self.inner = inner
        self._note = note

    async def hangup(self, provider_call_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self.inner.hangup(provider_call_id)
        return out

    async def transfer(self, provider_call_id: str, target: str) -> dict[str, Any]:
        self._note(provider_call_id)
        out: dict[str, Any] = await self.inner.transfer(provider_call_id, target)
        return out

    async def redirect(self, provider_call_id: str, document: str) -> dict[str, Any]:
        self._note(provider_call_id)
        out: dict[str, Any] = await self.inner.redirect(provider_call_id, document)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _remote(conn: Request | WebSocket) -> str | None:
    return conn.client.host if conn.client is not None else None


class TwilioAdapter:
    name = "twilio"

    def __init__(
        self,
        config: TwilioConfig,
        ctx: ProviderContext,
        *,
        control: Any = None,
        hold_s: int = 120,
    ) -> None:
        self.config = config
        self.ctx = ctx
        self.check = SignatureCheck(config.auth_token, ctx.public_url)
        if control is None:
            control = SimulatedTwilioControl(ctx) if config.simulated else TwilioControl(config)
        self.control: Any = _Redirects(control, self._redirected)
        self._redirects: dict[str, float] = {}
        self.hold_s = hold_s
        """Seconds Twilio holds the call (``<Pause>``) after its stream dropped, e.g. while
        voicehub restarts; the re-attach replaces the TwiML before that runs out."""
        self.executor: CommandExecutor | None = None
        self.streams: set[MediaStream] = set()
        self.reattached: dict[int, dict[str, Any]] = {}
        self._reattach: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- redirects

    def _redirected(self, call_sid: str) -> None:
        self._redirects[call_sid] = time.monotonic()

    def is_redirecting(self, call_sid: str) -> bool:
        """Whether voicehub replaced this call's TwiML lately (its stream's ``stop`` is
        then the redirect's, not a hang-up)."""
        t = self._redirects.get(call_sid)
        return t is not None and time.monotonic() - t < REDIRECT_WINDOW_S

    # ---------------------------------------------------------------- composition root

    def routes(self) -> list[BaseRoute]:
        return [
            Route(VOICE_PATH, self.voice, methods=["POST"]),
            Route(STATUS_PATH, self.status, methods=["POST"]),
            Route(RECORDING_PATH, self.recording, methods=["POST"]),
            Route(STREAM_STATUS_PATH, self.stream_status, methods=["POST"]),
            WebSocketRoute(MEDIA_PATH, self.media),
        ]

    def console_urls(self) -> dict[str, str]:
        return {
            "Voice webhook (POST)": self.ctx.url(VOICE_PATH),
            "Status callback (POST)": self.ctx.url(STATUS_PATH),
            "Recording status callback (POST)": self.ctx.url(RECORDING_PATH),
        }

    async def start(self) -> None:
        control: ProviderControl = self.control
        self.executor = CommandExecutor(self.ctx.client, self.name, control, self.ctx.sessions)
        await self.executor.start()
        self._reattach = asyncio.get_running_loop().create_task(
            self.reattach(), name="voicehub-twilio-reattach"
        )

    async def stop(self) -> None:
        if self._reattach is not None and not self._reattach.done():
            self._reattach.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reattach
        if self.executor is not None:
            await self.executor.stop()

    async def reattached_all(self) -> dict[int, dict[str, Any]]:
        """Wait for the start-up re-attach; call id -> its outcome."""
        if self._reattach is not None:
            await asyncio.shield(self._reattach)
        return self.reattached

    # ---------------------------------------------------------------- TwiML

    def stream_twiml(self, call_id: int) -> str:
        """``<Connect><Stream>`` for ``call_id`` with a fresh single-use token."""
        return twiml.connect_stream(
            self.ctx.ws_url(MEDIA_PATH),
            call_id,
            self.ctx.tokens.issue(call_id),
            status_callback=self.ctx.url(STREAM_STATUS_PATH),
            hold_s=self.hold_s,
        )

    async def reattach(self) -> None:
        """Point every Twilio call voicehub believes in progress back at this process."""
        try:
            res = await self.ctx.client.query(IN_PROGRESS_SQL)
        except ServerError as e:
            log.error("twilio re-attach: cannot list in-progress calls: %s", e)
            return
        calls = res.dicts()
        if calls:
            log.info("twilio re-attach: %d call(s) were in progress", len(calls))
        for c in calls:
            call_id, sid = int(c["id"]), str(c["provider_call_id"])
            try:
                out = await self.control.redirect(sid, self.stream_twiml(call_id))
            except ProviderError as e:
                # e.g. the call ended at Twilio while voicehub was down; its status callback
                # (completed) ends it here once delivered
                log.warning("twilio re-attach: call %s (%s) not re-attached: %s", call_id, sid, e)
                self.reattached[call_id] = {"ok": False, "error": str(e)}
                continue
            log.info("twilio re-attach: call %s (%s) redirected to a new stream", call_id, sid)
            self.reattached[call_id] = {"ok": True, **out}

    # ---------------------------------------------------------------- HTTP callbacks

    async def _signed_form(self, request: Request, path: str) -> wh.Form | Response:
        """The request's form, or the 403 answer (audited) when its signature fails."""
        body = await request.body()
        try:
            form = wh.Form.parse(body)
        except wh.WebhookError:
            form = wh.Form([])
        url = self.check.signed_url(path, request.url.query)
        reason = self.check.verify(url, form, request.headers.get(SIGNATURE_HEADER))
        if reason is not None:
            code = "signature_missing" if reason.startswith("missing") else "signature_invalid"
            detail = {"path": path, "error": reason, "call_sid": form.get("CallSid", "")}
            self.ctx.refused(self.name, code, detail, _remote(request))
            return PlainTextResponse("forbidden", status_code=403)
        return form

    async def _call(self, reducer: str, args: dict[str, Any], request_id: str) -> Any:
        return await self.ctx.client.call(reducer, args, request_id=request_id)

    async def voice(self, request: Request) -> Response:
        form = await self._signed_form(request, VOICE_PATH)
        if isinstance(form, Response):
            return form
        try:
            args = wh.call_started_args(form)
            started = await self._call("call_started", args, f"twilio:start:{form['CallSid']}")
        except wh.WebhookError as e:
            return PlainTextResponse(str(e), status_code=400)
        except ServerError as e:
            log.error("twilio voice webhook %s: %s", form.get("CallSid"), e)
            return PlainTextResponse("cannot record the call", status_code=500)
        call_id = int(started["call_id"])
        log.info(
            "twilio call %s (%s, %s) -> call %s%s",
            args["provider_call_id"],
            args["direction"],
            form.get("Direction", "inbound"),
            call_id,
            " (retry)" if started.get("duplicate") else "",
        )
        return Response(self.stream_twiml(call_id), media_type="text/xml")

    async def _event(self, args: dict[str, Any]) -> Response:
        try:
            await self._call("provider_event", args, f"twilio:event:{args['provider_event_id']}")
        except ServerError as e:
            log.error("twilio event %s: %s", args["provider_event_id"], e)
            return PlainTextResponse("cannot record the event", status_code=500)
        return Response(status_code=204)

    async def status(self, request: Request) -> Response:
        form = await self._signed_form(request, STATUS_PATH)
        if isinstance(form, Response):
            return form
        try:
            ev = wh.status_event(form)
        except wh.WebhookError as e:
            return PlainTextResponse(str(e), status_code=400)
        try:
            res = await self.ctx.client.query(STATUS_SEEN_SQL, [ev.call_sid])
            seen = [
                r["payload"]
                for r in res.dicts()
                if isinstance(r["payload"], dict) and "CallStatus" in r["payload"]
            ]
            if not seen and ev.status in ("queued", "initiated", "ringing", "in-progress"):
                await self._start_from_status(form)
        except ServerError as e:
            log.error("twilio status %s: %s", ev.event_id, e)
            return PlainTextResponse("cannot record the event", status_code=500)
        stale = ev.is_stale(seen)
        if stale:
            log.info("twilio status %s is stale (a later callback was recorded)", ev.event_id)
        return await self._event(
            {
                "provider": wh.PROVIDER,
                "provider_event_id": ev.event_id,
                "provider_call_id": ev.call_sid,
                "kind": ev.kind(stale),
                "payload": ev.payload,
            }
        )

    async def _start_from_status(self, form: wh.Form) -> None:
        """An outbound call's first callbacks (initiated, ringing) come before its voice
        webhook: record the call from them, idempotently by ``CallSid``."""
        if not form.get("From") and not form.get("To"):
            return
        args = wh.call_started_args(form)
        await self._call("call_started", args, f"twilio:start:{form['CallSid']}")

    async def recording(self, request: Request) -> Response:
        form = await self._signed_form(request, RECORDING_PATH)
        if isinstance(form, Response):
            return form
        try:
            args = wh.recording_event(form)
        except wh.WebhookError as e:
            return PlainTextResponse(str(e), status_code=400)
        return await self._event(args)

    async def stream_status(self, request: Request) -> Response:
        form = await self._signed_form(request, STREAM_STATUS_PATH)
        if isinstance(form, Response):
            return form
        try:
            args = wh.stream_event(form)
        except wh.WebhookError as e:
            return PlainTextResponse(str(e), status_code=400)
        return await self._event(args)

    # ---------------------------------------------------------------- media

    async def media(self, ws: WebSocket) -> None:
        """The Media Streams socket. Twilio signs the upgrade (a GET without a body): the
        signature is checked over the public ``wss://`` URL with no parameters."""
        url = self.check.signed_url(MEDIA_PATH, ws.url.query, websocket=True)
        reason = self.check.verify(url, {}, ws.headers.get(SIGNATURE_HEADER))
        if reason is not None:
            code = "signature_missing" if reason.startswith("missing") else "signature_invalid"
            self.ctx.refused(self.name, code, {"path": MEDIA_PATH, "error": reason}, _remote(ws))
            await ws.close(POLICY_VIOLATION)
            return
        await ws.accept()
        stream = MediaStream(ws, self.ctx, _remote(ws), self.is_redirecting)
        self.streams.add(stream)
        try:
            # in a task of its own: every frame resumes the stream's few coroutine frames,
            # not the whole ASGI middleware stack above this handler (50 frames a second)
            await asyncio.get_running_loop().create_task(stream.run(), name="twilio-media")
        finally:
            self.streams.discard(stream)
