"""One Twilio Media Stream: the WebSocket from Twilio, turned into a ``CallSession``.

The adapter checks the upgrade's ``X-Twilio-Signature`` before accepting; this module then
reads the stream: ``start`` must carry a valid single-use stream token (in
``customParameters``) bound to a live Twilio call with the same ``callSid``, or the socket
is closed with 1008 (policy violation), the refusal audited, and no session created.
After a valid ``start``: ``call_answered`` if the call still rings, a ``CallSession`` in
the registry, μ-law decoded to canonical frames timestamped from ``media.timestamp``,
``dtmf`` to the session and the ``dtmf`` reducer, ``mark`` to ``mark_reached``.

``stop`` ends the session, and the call too - unless voicehub itself is redirecting the
call (a transfer, or the restart re-attach replacing the TwiML: Twilio stops the stream
then as well), which the adapter tells through ``redirecting(call_sid)``. A socket that
just drops (no ``stop``: a network failure, or voicehub killed) ends only the session: the
call's fate then comes from its status callback, or the re-attach.

Invariant: malformed frames (bad JSON, unknown event, bad base64, missing fields) are
logged and counted, and the stream and the call keep their state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from providers.codecs import FRAME_MS, Decoder, Encoder
from providers.context import ProviderContext
from providers.session import CallSession
from providers.tokens import TokenError
from providers.twilio import protocol as p
from providers.twilio.twiml import CALL_ID_PARAM, TOKEN_PARAM
from providers.twilio.webhooks import PROVIDER
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.providers.twilio")

POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
RESYNC_MS = 100
"""A jump in ``media.timestamp`` beyond this re-anchors the frame timestamps."""


class TwilioTransport:
    """``MediaTransport`` over a Twilio bidirectional stream: μ-law 8 kHz out."""

    def __init__(self, ws: WebSocket, stream_sid: str) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self._encoder = Encoder("mulaw", 8000)
        self._lock = asyncio.Lock()
        self.sent_frames = 0

    async def _send(self, text: str) -> None:
        async with self._lock:
            await self.ws.send_text(text)

    async def send_audio(self, pcm: bytes) -> None:
        for frame in self._encoder.encode(pcm):
            await self._send(p.media_message(self.stream_sid, frame))
            self.sent_frames += 1

    async def send_mark(self, name: str) -> None:
        await self._send(p.mark_message(self.stream_sid, name))

    async def send_clear(self) -> None:
        await self._send(p.clear_message(self.stream_sid))


class MediaStream:
    """Reads one accepted Twilio media WebSocket until it stops or closes."""

    def __init__(
        self,
        ws: WebSocket,
        ctx: ProviderContext,
        remote: str | None,
        redirecting: Callable[[str], bool] = lambda _sid: False,
    ) -> None:
        self.ws = ws
        self.redirecting = redirecting
        self.ctx = ctx
        self.remote = remote
        self.session: CallSession | None = None
        self.start: p.Start | None = None
        self.decoder: Decoder | None = None
        self.malformed = 0
        self.refused: str | None = None
        self._t0: int | None = None
        """Media time of the first canonical frame; frame n is at t0 + n*20 ms (the
        decoder holds back up to one frame, so a frame leaves with the next payload)."""
        self._frames_out = 0

    async def run(self) -> None:
        receive, fast = self.ws.receive, p.media_fast
        try:
            while True:
                frame = await receive()
                text = frame.get("text")
                if text is None:
                    if frame["type"] == "websocket.disconnect":
                        return
                    self._malformed(p.Malformed("binary frame"))  # not Twilio's protocol
                    continue
                # the common case (50 a second per call): one of this stream's media frames
                m = fast(text) if self.session is not None else None
                if m is not None and self.start is not None and m[0] == self.start.stream_sid:
                    if m[1] in ("inbound", "inbound_track"):
                        self._on_payload(m[2], m[3])
                    continue
                if not await self._handle(p.parse(text)):
                    return
        except WebSocketDisconnect:
            pass
        finally:
            if self.session is not None and self.session.ended is None:
                self.ctx.sessions.close(self.session, "disconnected")

    def _malformed(self, m: p.Malformed) -> None:
        self.malformed += 1
        sid = self.start.stream_sid if self.start else "-"
        log.warning("twilio stream %s: ignored a malformed frame (%s): %s", sid, m.event, m.reason)

    async def _handle(self, msg: p.Message) -> bool:
        """Process one message; False when the stream is over."""
        if isinstance(msg, p.Malformed):
            self._malformed(msg)
        elif isinstance(msg, p.Connected):
            log.debug("twilio stream connected (%s %s)", msg.protocol, msg.version)
        elif isinstance(msg, p.Start):
            if self.start is not None:
                self._malformed(p.Malformed("a second start on one stream", "start"))
            else:
                return await self._on_start(msg)
        elif self.start is None or self.session is None:
            self._malformed(p.Malformed("a message before start", type(msg).__name__.lower()))
        elif getattr(msg, "stream_sid", self.start.stream_sid) != self.start.stream_sid:
            self._malformed(p.Malformed("another stream's streamSid", type(msg).__name__))
        elif isinstance(msg, p.Media):
            self._on_media(msg)
        elif isinstance(msg, p.DtmfDigit):
            await self._on_dtmf(msg)
        elif isinstance(msg, p.Mark):
            self.session.mark_reached(msg.name)
        elif isinstance(msg, p.Stop):
            session = self.session
            log.info("twilio stream %s stopped (call %s)", msg.stream_sid, session.call_id)
            self.ctx.sessions.close(session, "stopped")
            if not self.redirecting(session.provider_call_id):
                await self._end_call(session)
            return False
        return True

    async def _end_call(self, session: CallSession) -> None:
        """The caller hung up (a ``stop`` voicehub did not cause): end the call now; the
        ``completed`` status callback that follows finds it ended."""
        try:
            await self.ctx.client.call(
                "call_ended",
                {"call_id": session.call_id, "reason": "completed"},
                request_id=f"twilio:stop:{session.provider_call_id}",
            )
        except ServerError as e:  # ended meanwhile (a status callback, a hangup)
            log.info("call %s: call_ended on stop: %s", session.call_id, e.message)

    async def _refuse(self, reason: str, detail: dict[str, Any]) -> bool:
        self.refused = reason
        self.ctx.refused(PROVIDER, reason, detail, self.remote)
        await self.ws.close(POLICY_VIOLATION)
        return False

    async def _on_start(self, st: p.Start) -> bool:
        detail = {"stream_sid": st.stream_sid, "call_sid": st.call_sid, "path": "media"}
        token = st.custom.get(TOKEN_PARAM, "")
        try:
            call_id = self.ctx.tokens.redeem(token)
        except TokenError as e:
            return await self._refuse("stream_token_invalid", {**detail, "error": str(e)})
        claimed = st.custom.get(CALL_ID_PARAM)
        if claimed is not None and claimed != str(call_id):
            return await self._refuse("stream_token_mismatch", {**detail, "call_id": call_id})
        try:
            res = await self.ctx.client.query(
                "SELECT id, provider, provider_call_id, status FROM calls WHERE id = $1",
                [call_id],
            )
        except ServerError as e:  # the store is unavailable: not a refusal, a failure
            log.error("twilio stream %s: cannot look up call %s: %s", st.stream_sid, call_id, e)
            await self.ws.close(INTERNAL_ERROR)
            return False
        rows = res.dicts()
        call = rows[0] if rows else None
        if call is None or call["provider"] != PROVIDER or call["provider_call_id"] != st.call_sid:
            return await self._refuse("stream_call_mismatch", {**detail, "call_id": call_id})
        if call["status"] == "ended":
            return await self._refuse("stream_call_ended", {**detail, "call_id": call_id})
        if call["status"] == "ringing":
            try:
                await self.ctx.client.call(
                    "call_answered", {"call_id": call_id}, request_id=f"twilio:answer:{st.call_sid}"
                )
            except ServerError as e:  # answered meanwhile by a status callback: fine
                log.info("call %s: call_answered on stream start: %s", call_id, e.message)
        try:
            self.decoder = Decoder(st.encoding, st.sample_rate)
        except ValueError as e:
            return await self._refuse("stream_format_unsupported", {**detail, "error": str(e)})
        self.start = st
        transport = TwilioTransport(self.ws, st.stream_sid)
        self.session = CallSession(call_id, PROVIDER, st.call_sid, transport)
        self.ctx.sessions.open(self.session)
        log.info("twilio stream %s attached to call %s (%s)", st.stream_sid, call_id, st.call_sid)
        return True

    def _on_media(self, m: p.Media) -> None:
        if m.track not in ("inbound", "inbound_track"):
            return  # <Connect><Stream> only sends the caller's track; ignore anything else
        self._on_payload(m.payload, m.timestamp_ms)

    def _on_payload(self, payload: bytes, timestamp_ms: int) -> None:
        """The caller's μ-law payload at ``media.timestamp``: decoded, timestamped, pushed."""
        session, decoder = self.session, self.decoder
        assert session is not None and decoder is not None
        try:
            frames = decoder.decode(payload)
        except ValueError as e:
            self._malformed(p.Malformed(str(e), "media"))
            return
        t0 = self._t0
        if t0 is None:
            self._t0 = t0 = timestamp_ms
        n = self._frames_out
        if abs(timestamp_ms - FRAME_MS - (t0 + n * FRAME_MS)) > RESYNC_MS:
            # Twilio skipped media (a gap in media.timestamp): follow its clock again
            self._t0 = t0 = timestamp_ms - FRAME_MS - n * FRAME_MS
        for frame in frames:
            ts = t0 + n * FRAME_MS
            n += 1
            session.push_audio(frame, ts if ts > 0 else 0)
        self._frames_out = n

    async def _on_dtmf(self, d: p.DtmfDigit) -> None:
        assert self.session is not None and self.start is not None
        digit = d.digit.upper()
        offset = self.session.last_inbound_ms
        self.session.push_dtmf(digit, offset)
        args = {"call_id": self.session.call_id, "digits": digit, "audio_offset_ms": offset}
        try:
            await self.ctx.client.call(
                "dtmf", args, request_id=f"twilio:dtmf:{d.stream_sid}:{d.sequence}"
            )
        except ServerError as e:  # e.g. a PCI pause refuses DTMF capture: by design
            log.info("call %s: dtmf not recorded: %s", self.session.call_id, e.message)
