"""Test harness for the Vonage adapter: a real node with the adapter mounted by the
composition root (``ProviderHost``), a fake Vonage Voice API on loopback, Vonage's signed
webhooks produced independently of the adapter, and a client speaking Vonage's WebSocket
audio protocol.

The fake Voice API speaks the documented wire format: ``PUT /v1/calls/{uuid}`` with
``{"action":"hangup"}`` or ``{"action":"transfer","destination":{"type":"ncco","ncco":[..]}}``
and an RS256 application JWT, which it verifies with the application's public key (a bad
token is a 401, as at Vonage); it answers 204, or an error a test scripts per uuid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.sql.query import run_query
from providers.config import VonageConfig
from voicehub.app import MediaPlan, Node, ProviderPlan, Settings, open_node
from voicehub.server import ServerConfig, bind, make_server

API_KEY = "abcd1234"
SIGNATURE_SECRET = "s3cr3t-signature-secret-for-tests-0123456789"
APPLICATION_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
VIRTUAL_NUMBER = "442079460000"
CALLER = "447700900000"


def rsa_keypair() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


_KEYS: tuple[str, Any] | None = None


def app_keys() -> tuple[str, Any]:
    """The application's key pair (generated once per test process: RSA is slow)."""
    global _KEYS
    if _KEYS is None:
        _KEYS = rsa_keypair()
    return _KEYS


# ---------------------------------------------------------------- signed webhooks


def sign(
    payload: bytes | dict[str, str],
    *,
    secret: str = SIGNATURE_SECRET,
    iat: float | None = None,
    payload_hash: str | None = None,
    omit_hash: bool = False,
    api_key: str = API_KEY,
    application_id: str = APPLICATION_ID,
    **claims: Any,
) -> str:
    """``Bearer <jwt>`` as Vonage signs a webhook: HS256 under the signature secret, with
    ``payload_hash`` = SHA-256 hex of the body (POST) or of the query parameters as a
    compact JSON object (GET)."""
    raw = payload if isinstance(payload, bytes) else compact(payload)
    body: dict[str, Any] = {
        "iat": int(time.time() if iat is None else iat),
        "jti": str(uuidlib.uuid4()),
        "iss": "Vonage",
        "api_key": api_key,
        "application_id": application_id,
        **claims,
    }
    if not omit_hash:
        body["payload_hash"] = payload_hash or hashlib.sha256(raw).hexdigest()
    return "Bearer " + jwt.encode(body, secret, algorithm="HS256")


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def status_event(uuid: str, status: str, ts: str, **extra: Any) -> dict[str, Any]:
    """An event webhook body as the Voice API documents it."""
    return {
        "from": CALLER,
        "to": VIRTUAL_NUMBER,
        "uuid": uuid,
        "conversation_uuid": f"CON-{uuid}",
        "status": status,
        "direction": "inbound",
        "timestamp": ts,
        **extra,
    }


# ---------------------------------------------------------------- raw HTTP


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.read(), dict(e.headers))


async def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    return await asyncio.to_thread(_request, method, url, body, headers or {})


# ---------------------------------------------------------------- fake Vonage Voice API


@dataclass
class ApiCall:
    uuid: str
    body: dict[str, Any]
    claims: dict[str, Any]


@dataclass
class FakeVonage:
    public_key: Any
    application_id: str = APPLICATION_ID
    calls: list[ApiCall] = field(default_factory=list)
    rejected_auth: int = 0
    errors: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    """uuid -> (status, body) to answer instead of 204."""
    port: int = 0

    async def modify(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        try:
            scheme, _, token = auth.partition(" ")
            assert scheme == "Bearer"
            claims = jwt.decode(token, self.public_key, algorithms=["RS256"])
            assert claims["application_id"] == self.application_id
            assert claims["exp"] > time.time() and "jti" in claims
        except Exception:
            self.rejected_auth += 1
            return JSONResponse({"title": "Unauthorized"}, status_code=401)
        uuid = request.path_params["uuid"]
        body = json.loads(await request.body())
        self.calls.append(ApiCall(uuid, body, claims))
        if uuid in self.errors:
            status, err = self.errors[uuid]
            return JSONResponse(err, status_code=status)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/calls/{uuid}", self.modify, methods=["PUT"])])


@contextlib.asynccontextmanager
async def fake_vonage() -> AsyncIterator[FakeVonage]:
    import uvicorn

    _, public = app_keys()
    fake = FakeVonage(public)
    sock = bind("127.0.0.1", 0)
    fake.port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), lifespan="off", log_level="warning", access_log=False)
    )
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


# ---------------------------------------------------------------- the node


def vonage_config(api_port: int) -> VonageConfig:
    pem, _ = app_keys()
    return VonageConfig(
        api_key=API_KEY,
        api_secret="api-secret",
        application_id=APPLICATION_ID,
        private_key=pem,
        signature_secret=SIGNATURE_SECRET,
        api_host=f"http://127.0.0.1:{api_port}",
    )


@dataclass
class VonageNode:
    node: Node
    port: int
    fake: FakeVonage
    refusals: list[tuple[str, dict[str, Any]]]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> Any:
        assert self.node.providers is not None
        return self.node.providers

    @property
    def adapter(self) -> Any:
        return self.host.adapters["vonage"]

    @property
    def sessions(self) -> Any:
        return self.host.sessions

    @property
    def client(self) -> Any:
        return self.host.clients["vonage"]

    def rows(self, sql: str, params: Any = None) -> list[tuple]:
        return run_query(self.node.db, sql, params).rows

    def call_row(self, call_id: int) -> dict[str, Any]:
        res = run_query(self.node.db, "SELECT * FROM calls WHERE id = $1", [call_id])
        return dict(zip(res.columns, res.rows[0], strict=True))

    def audit_rows(self) -> list[tuple]:
        return self.rows(
            "SELECT event, detail FROM auth_audit WHERE event = 'provider_request_refused'"
        )

    def state(self) -> dict[str, list[tuple]]:
        """Every row of every non-system table but the security audit (refusals' only mark)."""
        db = self.node.db
        with db.snapshot() as snap:
            return {
                name: sorted(snap.table(name).rows(), key=repr)
                for name, store in db.stores.items()
                if not store.tdef.system and name != "auth_audit"
            }

    async def answer(self, uuid: str, **params: str) -> Reply:
        q = {"to": VIRTUAL_NUMBER, "from": CALLER, "uuid": uuid, "conversation_uuid": f"CON-{uuid}"}
        q.update(params)
        url = f"{self.http_url}/providers/vonage/answer?{urllib.parse.urlencode(q)}"
        return await request("GET", url, headers={"Authorization": sign(q)})

    async def event(
        self, body: dict[str, Any], auth: str | None = None, raw: bytes | None = None
    ) -> Reply:
        data = raw if raw is not None else compact(body)
        headers = {"Content-Type": "application/json"}
        headers["Authorization"] = auth if auth is not None else sign(data)
        if auth == "":
            del headers["Authorization"]
        return await request("POST", f"{self.http_url}/providers/vonage/event", data, headers)

    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/providers/vonage/media"


@contextlib.asynccontextmanager
async def vonage_node(data_dir: Path | None, fake: FakeVonage) -> AsyncIterator[VonageNode]:
    """A node on a free loopback port with the Vonage adapter mounted and started."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    settings = Settings(durability="durable" if data_dir is not None else "none")
    settings.data_dir = data_dir  # type: ignore[assignment]
    plan = ProviderPlan(f"http://127.0.0.1:{port}", None, vonage_config(fake.port))
    node = open_node(settings, cfg=ServerConfig(), providers=plan, media=MediaPlan(enabled=False))
    assert node.providers is not None
    refusals: list[tuple[str, dict[str, Any]]] = []
    ctx = node.providers.adapters["vonage"].ctx
    audit = ctx.refused

    def recording(provider: str, reason: str, detail: dict[str, Any], remote: str | None) -> None:
        refusals.append((reason, detail))
        audit(provider, reason, detail, remote)

    ctx.refused = recording
    await node.start()
    server = make_server(node.app, node.hub, "warning")
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    srv = VonageNode(node, port, fake, refusals)
    try:
        yield srv
    finally:
        if not task.done():
            server.should_exit = True
            await task
            await node.stop()
        sock.close()


# ---------------------------------------------------------------- Vonage's media client


class MediaClient:
    """What Vonage does on the media socket: connected, binary audio, text events."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.audio: list[tuple[float, bytes]] = []
        self.texts: list[dict[str, Any]] = []
        self.log: list[bytes | dict[str, Any]] = []
        """Everything received, in order (binary frames and decoded text messages)."""
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def connected(
        self, headers: dict[str, Any], content_type: str = "audio/l16;rate=16000"
    ) -> None:
        await self.ws.send(
            json.dumps({"event": "websocket:connected", "content-type": content_type, **headers})
        )

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for msg in self.ws:
                if isinstance(msg, bytes):
                    self.audio.append((loop.time(), msg))
                    self.log.append(msg)
                else:
                    self.texts.append(json.loads(msg))
                    self.log.append(self.texts[-1])
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def dtmf(self, digit: str, duration: int = 260) -> None:
        await self.ws.send(
            json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": duration})
        )

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def media(url: str) -> AsyncIterator[MediaClient]:
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        c = MediaClient(ws)
        try:
            yield c
        finally:
            if c._reader is not None:
                c._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await c._reader


def websocket_endpoint(ncco: list[dict[str, Any]]) -> dict[str, Any]:
    """The websocket endpoint of an NCCO's connect action."""
    (connect,) = [a for a in ncco if a["action"] == "connect"]
    (ep,) = connect["endpoint"]
    assert ep["type"] == "websocket"
    return ep


async def eventually(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
