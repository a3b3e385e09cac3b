"""Harness for the end-to-end call tests: a node with the call worker, the offline speech
engines and the example agent; simulated callers over Twilio (``voicehub.simulate``) and
Vonage (answer webhook signed as Vonage signs it, the WebSocket audio protocol with 640-byte
L16 frames paced in real time); a recognizer for what the caller heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from provider_support import PUBLIC_URL, ProviderNode, provider_node
from twilio_support import ACCOUNT_SID, AUTH_TOKEN
from vonage_support import CALLER, VIRTUAL_NUMBER, fake_vonage, request, sign, vonage_config

from media.speech.registry import Engines, SpeechConfig, build_engines
from providers.config import TwilioConfig
from voicehub.app import MediaPlan
from voicehub.simulate import PacedCaller, TwilioCallSim

FRAME = 640

_ENGINES: Engines | None = None


def engines() -> Engines:
    """The test process's own speech engines (the synthetic caller's voice and ears)."""
    global _ENGINES
    if _ENGINES is None:
        _ENGINES = build_engines(SpeechConfig(vad=None, stt_partial=None, stt_final="whisper"))
    return _ENGINES


def speak(text: str) -> bytes:
    tts = engines().tts
    assert tts is not None
    return tts.synthesize(text)


def transcribe(pcm: bytes) -> str:
    """Whisper over canonical PCM (at most ~28 s)."""
    stt = engines().stt_final
    assert stt is not None
    s = stt.open()
    try:
        s.start_utterance(0)
        for i in range(0, len(pcm) - FRAME + 1, FRAME):
            s.feed(pcm[i : i + FRAME])
        return s.end_utterance().text
    finally:
        s.close()


def words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c in " '").split())


@contextlib.asynccontextmanager
async def voice_node(data_dir: Path, **kw: Any) -> AsyncIterator[ProviderNode]:
    media = MediaPlan(enabled=True, speech=SpeechConfig(), agent=True)
    async with provider_node(data_dir, media=media, **kw) as srv:
        assert srv.node.media is not None
        await asyncio.wait_for(srv.node.media.ready(), 120)
        yield srv


def twilio_config() -> TwilioConfig:
    return TwilioConfig(ACCOUNT_SID, AUTH_TOKEN)


def twilio_caller(srv: ProviderNode) -> TwilioCallSim:
    return TwilioCallSim(srv.http_url, PUBLIC_URL, AUTH_TOKEN, ACCOUNT_SID)


class VonageCallSim(PacedCaller):
    """Vonage's part of a call: the signed answer webhook, then the media WebSocket."""

    def __init__(self, http_url: str, uuid: str) -> None:
        self.http_url = http_url
        self.uuid = uuid
        self.call_id: int | None = None
        self.received = bytearray()
        self.last_received = 0.0
        self.closed = False
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._endpoint: dict[str, Any] = {}

    async def dial(self) -> int:
        q = {"to": VIRTUAL_NUMBER, "from": CALLER, "uuid": self.uuid}
        q["conversation_uuid"] = f"CON-{self.uuid}"
        url = f"{self.http_url}/providers/vonage/answer?{urllib.parse.urlencode(q)}"
        reply = await request("GET", url, headers={"Authorization": sign(q)})
        assert reply.status == 200, reply.body
        ncco = reply.json()
        (connect,) = [a for a in ncco if a["action"] == "connect"]
        (self._endpoint,) = connect["endpoint"]
        self.call_id = int(self._endpoint["headers"]["voicehub_call_id"])
        return self.call_id

    async def connect(self) -> None:
        path = urllib.parse.urlsplit(self._endpoint["uri"]).path
        ws_url = self.http_url.replace("http://", "ws://") + path
        self._ws = await websockets.connect(ws_url, compression=None, max_size=None)
        hello = {
            "event": "websocket:connected",
            "content-type": self._endpoint["content-type"],
            **self._endpoint["headers"],
        }
        await self._ws.send(json.dumps(hello))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for msg in self._ws:
                if isinstance(msg, bytes):
                    self.received += msg
                    self.last_received = time.monotonic()
                else:
                    m = json.loads(msg)
                    if m.get("action") == "notify":  # no buffer here: reached at once
                        ev = {"event": "websocket:notify", "payload": m.get("payload")}
                        await self._ws.send(json.dumps(ev))
        self.closed = True

    async def _send_frame(self, frame: bytes) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._ws.send(frame)  # binary L16 16 kHz: canonical already

    async def hangup(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@contextlib.asynccontextmanager
async def vonage_voice_node(data_dir: Path) -> AsyncIterator[ProviderNode]:
    async with fake_vonage() as fake, voice_node(data_dir, vonage=vonage_config(fake.port)) as srv:
        yield srv


async def until(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)
