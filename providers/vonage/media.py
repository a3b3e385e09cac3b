"""The Vonage media WebSocket: Vonage's audio protocol <-> a provider-neutral CallSession.

Vonage opens the socket our NCCO ``connect`` names. Its first message is text,
``{"event":"websocket:connected","content-type":"audio/l16;rate=16000", <our headers>}``
(the endpoint's headers merged at the top level); then binary messages are 20 ms of
16-bit little-endian linear PCM (640 bytes at 16 kHz), interleaved with text events:
``websocket:dtmf`` (``digit``, ``duration``), ``websocket:notify`` (the ``payload`` of a
``notify`` we sent, once playback reached it) and ``websocket:cleared``. We send binary
PCM of the same format, ``{"action":"notify","payload":{...}}`` for marks and
``{"action":"clear"}`` on barge-in.

Invariants: no session exists for a socket whose stream token does not redeem (forged,
expired, already used, another call) - it is closed 1008 and the refusal audited, nothing
else; inbound audio reaches the session as canonical frames, byte for byte at 16 kHz,
timestamped frames x 20 ms, whatever the message boundaries (odd-sized and partial
messages are re-framed, never dropped); a malformed text message is logged and skipped,
never ends the stream; closing the socket ends the session but not the call (a restart
re-attaches it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from providers.codecs import FRAME_MS, Decoder, Encoder
from providers.context import ProviderContext
from providers.session import CallSession
from providers.tokens import TokenError
from providers.vonage.ncco import CALL_ID_HEADER, TOKEN_HEADER
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.providers.vonage")

PROVIDER = "vonage"
RATES = {f"audio/l16;rate={r}": r for r in (8000, 16000, 24000)}
DTMF_DIGITS = frozenset("0123456789*#ABCD")
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001


class MediaProtocolError(ValueError):
    """The first message is not a usable ``websocket:connected``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Connected:
    content_type: str
    rate: int
    token: str
    call_id_header: str
    fields: dict[str, Any]


def parse_connected(text: str) -> Connected:
    """The ``websocket:connected`` message, with our headers (pure)."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise MediaProtocolError("malformed_start", "first message is not JSON") from None
    if not isinstance(msg, dict) or msg.get("event") != "websocket:connected":
        raise MediaProtocolError("malformed_start", "first message is not websocket:connected")
    ctype = str(msg.get("content-type", "")).replace(" ", "").lower()
    rate = RATES.get(ctype)
    if rate is None:
        raise MediaProtocolError("unsupported_audio", f"content-type {ctype!r}")
    token = msg.get(TOKEN_HEADER)
    if not isinstance(token, str) or not token:
        raise MediaProtocolError("missing_token", "no stream token header")
    return Connected(ctype, rate, token, str(msg.get(CALL_ID_HEADER, "")), msg)


class InboundAudio:
    """Binary messages -> canonical 20 ms frames with media timestamps (pure).

    A message of odd length leaves its last byte for the next one (a 16-bit sample split
    across messages); partial frames wait for the rest. Timestamp of frame n = n x 20 ms.
    """

    def __init__(self, rate: int) -> None:
        self._decoder = Decoder("l16", rate)
        self._carry = b""
        self.frames = 0
        self.bytes_in = 0

    def push(self, data: bytes) -> list[tuple[bytes, int]]:
        self.bytes_in += len(data)
        buf = self._carry + data
        even = len(buf) - (len(buf) % 2)
        self._carry = buf[even:]
        out = []
        for frame in self._decoder.decode(buf[:even]):
            out.append((frame, self.frames * FRAME_MS))
            self.frames += 1
        return out

    @property
    def offset_ms(self) -> int:
        return self.frames * FRAME_MS


class VonageTransport:
    """A session's output on a Vonage socket: binary PCM, notify marks, clear."""

    def __init__(self, ws: WebSocket, rate: int) -> None:
        self.ws = ws
        self.rate = rate
        self._encoder = Encoder("l16", rate) if rate != 16000 else None
        self.frames_out = 0

    async def send_audio(self, pcm: bytes) -> None:
        frames = [pcm] if self._encoder is None else self._encoder.encode(pcm)
        for f in frames:
            await self.ws.send_bytes(f)
            self.frames_out += 1

    async def send_mark(self, name: str) -> None:
        await self.ws.send_text(json.dumps({"action": "notify", "payload": {"mark": name}}))

    async def send_clear(self) -> None:
        await self.ws.send_text(json.dumps({"action": "clear"}))


@dataclass
class MediaStats:
    connected: int = 0
    refused: int = 0
    malformed: int = 0
    dtmf: int = 0
    live: set[WebSocket] = field(default_factory=set)


class VonageMedia:
    """The ``/providers/vonage/media`` endpoint."""

    def __init__(self, ctx: ProviderContext, connect_timeout_s: float = 10.0) -> None:
        self.ctx = ctx
        self.connect_timeout_s = connect_timeout_s
        self.stats = MediaStats()

    def _refuse(self, ws: WebSocket, reason: str, detail: str, **extra: Any) -> None:
        self.stats.refused += 1
        remote = f"{ws.client.host}:{ws.client.port}" if ws.client else None
        log.warning("vonage media socket refused: %s (%s)", reason, detail)
        self.ctx.refused(PROVIDER, reason, {"where": "media", "detail": detail, **extra}, remote)

    async def endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        self.stats.live.add(ws)
        try:
            await self._serve(ws)
        except WebSocketDisconnect:
            pass
        finally:
            self.stats.live.discard(ws)
            if ws.application_state != WebSocketState.DISCONNECTED:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _first_text(self, ws: WebSocket) -> str | None:
        while True:
            msg = await asyncio.wait_for(ws.receive(), self.connect_timeout_s)
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            text = msg.get("text")
            if text is not None:
                return str(text)
            return None  # audio before websocket:connected: not a Vonage stream

    async def _serve(self, ws: WebSocket) -> None:
        try:
            first = await self._first_text(ws)
        except TimeoutError:
            self._refuse(ws, "no_start", "no websocket:connected in time")
            await ws.close(CLOSE_POLICY)
            return
        try:
            if first is None:
                raise MediaProtocolError("malformed_start", "binary before websocket:connected")
            start = parse_connected(first)
            call_id = self.ctx.tokens.redeem(start.token)
            if start.call_id_header and start.call_id_header != str(call_id):
                raise MediaProtocolError("token_mismatch", "token is for another call")
        except MediaProtocolError as e:
            self._refuse(ws, e.reason, e.detail)
            await ws.close(CLOSE_POLICY)
            return
        except TokenError as e:
            self._refuse(ws, "bad_stream_token", str(e))
            await ws.close(CLOSE_POLICY)
            return
        res = await self.ctx.client.query(
            "SELECT id, status, provider, provider_call_id FROM calls WHERE id = $1", [call_id]
        )
        rows = res.dicts()
        call = rows[0] if rows else None
        if call is None or call["provider"] != PROVIDER or call["status"] == "ended":
            state = "missing" if call is None else f"{call['provider']}/{call['status']}"
            self._refuse(ws, "call_not_live", f"call {call_id} is {state}", call_id=call_id)
            await ws.close(CLOSE_POLICY)
            return
        if call["status"] == "ringing":
            try:
                await self.ctx.client.call(
                    "call_answered", {"call_id": call_id}, request_id=f"vonage:answered:{call_id}"
                )
            except ServerError as e:  # answered meanwhile by the 'answered' event
                log.info("call %s: call_answered: %s", call_id, e.message)
        await self._stream(ws, start, call_id, str(call["provider_call_id"]))

    async def _stream(self, ws: WebSocket, start: Connected, call_id: int, uuid: str) -> None:
        transport = VonageTransport(ws, start.rate)
        session = CallSession(call_id, PROVIDER, uuid, transport)
        self.ctx.sessions.open(session)
        self.stats.connected += 1
        audio = InboundAudio(start.rate)
        stream_id = start.token.split(".")[3]  # the token's nonce: unique per socket
        dtmf_seq = 0
        reason = "disconnected"
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is not None:
                    for pcm, ts in audio.push(data):
                        session.push_audio(pcm, ts)
                    continue
                ev = self._parse_text(call_id, msg.get("text"))
                if ev is None:
                    continue
                kind = ev.get("event")
                if kind == "websocket:dtmf":
                    digit = ev.get("digit")
                    if digit is None and isinstance(ev.get("dtmf"), dict):
                        digit = ev["dtmf"].get("digit")
                    digit = str(digit) if digit is not None else ""
                    if len(digit) != 1 or digit not in DTMF_DIGITS:
                        self.stats.malformed += 1
                        log.warning("call %s: bad dtmf event %r", call_id, ev)
                        continue
                    dtmf_seq += 1
                    await self._dtmf(session, digit, audio.offset_ms, f"{stream_id}:{dtmf_seq}")
                elif kind == "websocket:notify":
                    payload = ev.get("payload")
                    mark = payload.get("mark") if isinstance(payload, dict) else None
                    if isinstance(mark, str):
                        session.mark_reached(mark)
                elif kind == "websocket:cleared":
                    log.debug("call %s: vonage cleared its playback buffer", call_id)
                else:
                    log.debug("call %s: vonage event %r ignored", call_id, kind)
        except WebSocketDisconnect:
            pass
        except Exception:
            reason = "error"
            log.exception("call %s: vonage media stream failed", call_id)
        finally:
            self.ctx.sessions.close(session, reason)
            log.info(
                "call %s: vonage media closed (%d frames in, %d out)",
                call_id,
                audio.frames,
                transport.frames_out,
            )

    def _parse_text(self, call_id: int, text: Any) -> dict[str, Any] | None:
        try:
            ev = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            ev = None
        if not isinstance(ev, dict):
            self.stats.malformed += 1
            log.warning("call %s: malformed vonage text message skipped", call_id)
            return None
        return ev

    async def _dtmf(self, session: CallSession, digit: str, offset_ms: int, key: str) -> None:
        self.stats.dtmf += 1
        session.push_dtmf(digit, offset_ms)
        args = {"call_id": session.call_id, "digits": digit, "audio_offset_ms": offset_ms}
        try:
            await self.ctx.client.call("dtmf", args, request_id=f"vonage:dtmf:{key}")
        except ServerError as e:  # e.g. the transcript is paused (PCI): the digit stays out
            log.info("call %s: dtmf not recorded: %s", session.call_id, e.message)

    async def close_all(self) -> None:
        for ws in list(self.stats.live):
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_GOING_AWAY)
