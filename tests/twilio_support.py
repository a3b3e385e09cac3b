"""Twilio's side of the Twilio adapter tests, implemented independently of the adapter.

* ``twilio_signature``: Twilio's request signing written from the security docs
  (https://www.twilio.com/docs/usage/security#validating-requests): HMAC-SHA1 under the auth
  token over the URL followed by every POST parameter sorted by name (repeated names by
  value), name then value with no separators, base64;
* ``FakeTwilio``: the REST API on a loopback uvicorn, speaking the wire format of
  ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` (HTTP Basic auth with the
  account SID and auth token, form-encoded body, a JSON call resource or a JSON error
  ``{code, message, more_info, status}``), recording every request;
* ``TwilioPhone``: posts signed webhooks to a node the way Twilio does (signed for the
  public URL, sent to the loopback address as a reverse proxy would forward them), and
  ``MediaClient`` plays Twilio's part of a Media Stream over a real ``websockets`` client,
  with the documented message shapes (string ``sequenceNumber``/``chunk``/``timestamp``);
* ``ulaw_decode``: G.711 μ-law expansion from the ITU formula, to check the adapter's
  decoder without using it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from voicehub.server import bind

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "twilio-test-auth-token-0123456789"
PUBLIC_WS = "wss://voice.example.test"

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(params: Params) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def twilio_signature(auth_token: str, url: str, params: Params = ()) -> str:
    """``X-Twilio-Signature`` of a request to ``url`` with form ``params``."""
    data = url + "".join(k + v for k, v in sorted(_pairs(params)))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


# ---------------------------------------------------------------- the REST API


@dataclass
class RestRequest:
    method: str
    path: str
    account_sid: str
    call_sid: str
    content_type: str
    auth: tuple[str, str] | None
    form: dict[str, list[str]]


@dataclass
class FakeTwilio:
    """Twilio's REST API for calls, on loopback."""

    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    requests: list[RestRequest] = field(default_factory=list)
    errors: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    """call sid -> (HTTP status, Twilio error code, message) to answer with."""
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def updates(self, call_sid: str | None = None) -> list[RestRequest]:
        return [r for r in self.requests if call_sid is None or r.call_sid == call_sid]

    async def _call(self, request: Request) -> JSONResponse:
        account, call = request.path_params["account"], request.path_params["call"]
        auth = None
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            auth = (user, pw)
        body = (await request.body()).decode()
        form: dict[str, list[str]] = {}
        for k, v in urllib.parse.parse_qsl(body, keep_blank_values=True):
            form.setdefault(k, []).append(v)
        self.requests.append(
            RestRequest(
                request.method,
                request.url.path,
                account,
                call,
                request.headers.get("content-type", ""),
                auth,
                form,
            )
        )
        if auth != (self.account_sid, self.auth_token) or account != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        if call in self.errors:
            return self._error(*self.errors[call])
        status = form.get("Status", ["in-progress"])[0]
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        uri = f"/2010-04-01/Accounts/{account}/Calls/{call}.json"
        return JSONResponse(
            {
                "account_sid": account,
                "annotation": None,
                "answered_by": None,
                "api_version": "2010-04-01",
                "caller_name": None,
                "date_created": now,
                "date_updated": now,
                "direction": "inbound",
                "duration": None,
                "end_time": None,
                "forwarded_from": None,
                "from": "+14155550100",
                "from_formatted": "(415) 555-0100",
                "group_sid": None,
                "parent_call_sid": None,
                "phone_number_sid": "PN" + "0" * 32,
                "price": None,
                "price_unit": "USD",
                "queue_time": "0",
                "sid": call,
                "start_time": now,
                "status": status,
                "subresource_uris": {
                    "notifications": uri.replace(".json", "/Notifications.json"),
                    "recordings": uri.replace(".json", "/Recordings.json"),
                },
                "to": "+12065550199",
                "to_formatted": "(206) 555-0199",
                "trunk_sid": None,
                "uri": uri,
            }
        )

    def _error(self, status: int, code: int, message: str) -> JSONResponse:
        return JSONResponse(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status_code=status,
        )

    def app(self) -> Starlette:
        path = "/2010-04-01/Accounts/{account}/Calls/{call}.json"
        return Starlette(routes=[Route(path, self._call, methods=["POST"])])


@contextlib.asynccontextmanager
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    sock = bind("127.0.0.1", 0)
    fake.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
        sock.close()


# ---------------------------------------------------------------- webhooks


@dataclass
class HttpAnswer:
    status: int
    body: str
    content_type: str


def _post(url: str, body: bytes, headers: dict[str, str]) -> HttpAnswer:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            return HttpAnswer(resp.status, resp.read().decode(), resp.headers["content-type"])
    except urllib.error.HTTPError as e:
        return HttpAnswer(e.code, e.read().decode(), e.headers.get("content-type", ""))


class TwilioPhone:
    """Twilio's webhook requests to a node behind a proxy at ``public_url``."""

    def __init__(self, http_url: str, public_url: str, auth_token: str = AUTH_TOKEN) -> None:
        self.http_url = http_url
        self.public_url = public_url
        self.auth_token = auth_token

    async def post(
        self,
        path: str,
        params: Params,
        *,
        query: str = "",
        signed_url: str | None = None,
        signature: str | None = "auto",
    ) -> HttpAnswer:
        """POST ``params`` form-encoded; signed for ``signed_url`` (default: the public
        URL of ``path``), with an explicit ``signature``, or unsigned (``None``)."""
        pairs = _pairs(params)
        tail = f"?{query}" if query else ""
        url = signed_url if signed_url is not None else self.public_url + path + tail
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature == "auto":
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, url, pairs)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        body = urllib.parse.urlencode(pairs).encode()
        return await asyncio.to_thread(_post, self.http_url + path + tail, body, headers)


def voice_params(call_sid: str, **over: str) -> dict[str, str]:
    """A voice webhook's parameters as Twilio sends them for an inbound call."""
    p = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": "+12065550199",
        "CalledCity": "SEATTLE",
        "CalledCountry": "US",
        "CalledState": "WA",
        "CalledZip": "98101",
        "Caller": "+14155550100",
        "CallerCity": "SAN FRANCISCO",
        "CallerCountry": "US",
        "CallerState": "CA",
        "CallerZip": "94103",
        "Direction": "inbound",
        "From": "+14155550100",
        "FromCity": "SAN FRANCISCO",
        "FromCountry": "US",
        "FromState": "CA",
        "FromZip": "94103",
        "To": "+12065550199",
        "ToCity": "SEATTLE",
        "ToCountry": "US",
        "ToState": "WA",
        "ToZip": "98101",
    }
    p.update(over)
    return p


def status_params(call_sid: str, status: str, seq: int, **over: str) -> dict[str, str]:
    """A call progress callback (``CallbackSource=call-progress-events``)."""
    p = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": status,
        "CallbackSource": "call-progress-events",
        "Direction": "inbound",
        "From": "+14155550100",
        "To": "+12065550199",
        "SequenceNumber": str(seq),
        "Timestamp": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1.8e9 + seq)),
    }
    if status == "completed":
        p["CallDuration"] = "42"
        p["Duration"] = "1"
    p.update(over)
    return p


def stream_of(xml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` of a TwiML answer: its URL and ``<Parameter>``s."""
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, xml
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return stream.get("url", ""), params


# ---------------------------------------------------------------- media streams


class MediaClient:
    """Twilio's end of one Media Stream."""

    def __init__(self, ws: Any, stream_sid: str, call_sid: str) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.seq = 0
        self.chunk = 0

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def send(self, msg: Mapping[str, Any] | str) -> None:
        await self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    async def connected(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, custom: Mapping[str, str], **media_format: Any) -> None:
        fmt = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **media_format}
        await self.send(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": fmt,
                    "customParameters": dict(custom),
                },
                "streamSid": self.stream_sid,
            }
        )

    async def media(self, payload: bytes) -> None:
        self.chunk += 1
        await self.send(
            {
                "event": "media",
                "sequenceNumber": self._next(),
                "media": {
                    "track": "inbound",
                    "chunk": str(self.chunk),
                    "timestamp": str((self.chunk - 1) * 20),
                    "payload": base64.b64encode(payload).decode(),
                },
                "streamSid": self.stream_sid,
            }
        )

    async def dtmf(self, digit: str) -> None:
        await self.send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def mark(self, name: str) -> None:
        await self.send(
            {
                "event": "mark",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    async def stop(self) -> None:
        await self.send(
            {
                "event": "stop",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
            }
        )

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))


@contextlib.asynccontextmanager
async def media_stream(
    ws_base: str,
    call_sid: str,
    *,
    public_ws: str = PUBLIC_WS,
    signature: str | None = "auto",
    auth_token: str = AUTH_TOKEN,
) -> AsyncIterator[MediaClient]:
    """Open ``/providers/twilio/media`` as Twilio does (upgrade signed for the public
    ``wss://`` URL, no parameters)."""
    path = "/providers/twilio/media"
    headers = {}
    if signature == "auto":
        headers["X-Twilio-Signature"] = twilio_signature(auth_token, public_ws + path, {})
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    async with websockets.connect(
        ws_base + path, additional_headers=headers, compression=None, proxy=None
    ) as ws:
        yield MediaClient(ws, sid("MZ"), call_sid)


# ---------------------------------------------------------------- audio


def ulaw_decode(data: bytes) -> list[int]:
    """G.711 μ-law -> 16-bit linear (ITU-T G.711, the bias-33 expansion)."""
    out = []
    for b in data:
        u = ~b & 0xFF
        sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        out.append(-magnitude if sign else magnitude)
    return out


def ulaw_encode(samples: Iterable[int]) -> bytes:
    """16-bit linear -> G.711 μ-law (the inverse of ``ulaw_decode``, for test tones)."""
    out = bytearray()
    for s in samples:
        sign = 0x80 if s < 0 else 0
        m = min(abs(s), 32635) + 0x84
        exponent = 7
        for e in range(7, -1, -1):
            if m & (0x80 << e):
                exponent = e
                break
        mantissa = (m >> (exponent + 3)) & 0x0F
        out.append(~(sign | (exponent << 4) | mantissa) & 0xFF)
    return bytes(out)


def tone(freq: float, ms: int, rate: int = 8000, amplitude: int = 8000) -> list[int]:
    n = rate * ms // 1000
    return [int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)]


def pcm16(samples: Iterable[int]) -> bytes:
    return b"".join(int(s).to_bytes(2, "little", signed=True) for s in samples)


def samples16(pcm: bytes) -> list[int]:
    return [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
