"""``voicehub simulate-call``: a phone call without a phone - the way a new user first
talks to voicehub.

``TwilioCallSim`` plays Twilio's part against a running server exactly as Twilio would:
a signed voice webhook, then a Media Stream over a WebSocket (signed upgrade, ``connected``,
``start`` with the TwiML's parameters, μ-law 8 kHz ``media`` frames paced in real time,
``mark`` echoes, ``stop``). It collects the audio voicehub plays back (decoded to canonical
16 kHz PCM). The command wraps it: the caller's lines are synthesized (or read from a WAV
file), each said once the agent has finished speaking, and the live transcript is printed
from a subscription. Credentials: the simulator's development token in
``<data-dir>/simulator.json`` (or real ones with ``--auth-token`` and ``--public-url``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
import urllib.parse
import urllib.request
import wave
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets
from websockets.protocol import State

from providers.codecs import CANONICAL_RATE, Decoder, Encoder, Resampler
from providers.twilio.signing import SignatureCheck

log = logging.getLogger("voicehub.simulate")

VOICE_PATH = "/providers/twilio/voice"
FRAME = 640  # canonical bytes per 20 ms


class PacedCaller:
    """A simulated caller's audio side, whatever the provider: canonical PCM sent as 20 ms
    frames paced in real time (``_send_frame`` puts one on the provider's wire), and what
    voicehub played back (``received``, ``last_received``)."""

    received: bytearray
    last_received: float
    closed: bool

    async def _send_frame(self, frame: bytes) -> None:
        raise NotImplementedError

    async def say(self, pcm: bytes) -> None:
        """Send canonical PCM as 20 ms frames, paced in real time."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for n, i in enumerate(range(0, len(pcm), FRAME), start=1):
            if self.closed:
                return
            await self._send_frame(pcm[i : i + FRAME].ljust(FRAME, b"\x00"))
            delay = t0 + n * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def silence(self, ms: int) -> None:
        await self.say(b"\x00" * (FRAME * max(1, ms // 20)))

    async def wait_agent_quiet(
        self, quiet_s: float = 2.0, timeout: float = 60.0, since: float = 0.0
    ) -> bool:
        """Keep the line open (silence) until the agent spoke (after ``since``, a
        ``time.monotonic()``) and then stayed quiet for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            heard = self.last_received > since
            if heard and time.monotonic() - self.last_received >= quiet_s:
                return True
            if self.closed:
                return False  # voicehub hung up
            await self.silence(100)
        return False


class TwilioCallSim(PacedCaller):
    """One simulated Twilio call into ``http_url`` (a server whose public URL is
    ``public_url`` and whose Twilio auth token is ``auth_token``)."""

    def __init__(
        self,
        http_url: str,
        public_url: str,
        auth_token: str,
        account_sid: str = "AC" + "5" * 32,
        *,
        from_number: str = "+14155550100",
        to_number: str = "+14155550199",
        from_state: str = "CA",
    ) -> None:
        self.http_url = http_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.check = SignatureCheck(auth_token, self.public_url)
        self.account_sid = account_sid
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.from_number, self.to_number, self.from_state = from_number, to_number, from_state
        self.call_id: int | None = None
        self.params: dict[str, str] = {}
        self.stream_url = ""
        self.received = bytearray()
        """Everything voicehub played to the caller, canonical PCM."""
        self.last_received = 0.0
        self.marks: list[str] = []
        self.clears = 0
        self._ws: Any = None
        self._closed = False
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0
        self._chunk = 0
        self._ts = -20
        self._t_start = 0.0
        self._enc = Encoder("mulaw", 8000)
        self._dec = Decoder("mulaw", 8000)
        self.on_audio: Callable[[bytes], None] | None = None

    # ---------------------------------------------------------------- signalling

    def _post(self, path: str, params: dict[str, str]) -> tuple[int, str]:
        sig = self.check.sign(self.public_url + path, params)
        req = urllib.request.Request(
            self.http_url + path,
            data=urllib.parse.urlencode(params).encode(),
            method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": sig,
            },
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=15) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    async def dial(self) -> int:
        """The voice webhook: returns voicehub's call id (from the TwiML's parameters)."""
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": self.from_number,
            "FromCountry": "US",
            "FromState": self.from_state,
            "To": self.to_number,
            "ToCountry": "US",
            "ToState": self.from_state,
            "Caller": self.from_number,
            "Called": self.to_number,
        }
        status, body = await asyncio.to_thread(self._post, VOICE_PATH, params)
        if status != 200:
            raise RuntimeError(f"the voice webhook was answered {status}: {body[:200]}")
        root = ET.fromstring(body)
        stream = root.find("./Connect/Stream")
        if stream is None:
            raise RuntimeError(f"no <Connect><Stream> in the answer: {body[:200]}")
        self.stream_url = stream.attrib["url"]
        self.params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        self.call_id = int(self.params["voicehub_call_id"])
        return self.call_id

    async def connect(self) -> None:
        """Open the Media Stream as Twilio does and send ``connected`` and ``start``."""
        public = urllib.parse.urlsplit(self.stream_url)
        local = urllib.parse.urlsplit(self.http_url)
        ws_url = urllib.parse.urlunsplit(
            ("wss" if local.scheme == "https" else "ws", local.netloc, public.path, "", "")
        )
        sig = self.check.sign(self.stream_url, {})
        self._ws = await websockets.connect(
            ws_url,
            additional_headers={"X-Twilio-Signature": sig},
            compression=None,
            proxy=None,
        )
        self._t_start = time.monotonic()
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": self.params,
                },
            }
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def _next(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            await self._ws.send(json.dumps(msg))
        except websockets.ConnectionClosed:
            self.closed = True  # voicehub hung up

    @property
    def closed(self) -> bool:
        return self._closed or (self._reader is not None and self._reader.done())

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self._ws:
                msg = json.loads(text)
                ev = msg.get("event")
                if ev == "media":
                    pcm = b"".join(self._dec.decode(base64.b64decode(msg["media"]["payload"])))
                    self.received += pcm
                    self.last_received = time.monotonic()
                    if self.on_audio is not None:
                        self.on_audio(pcm)
                elif ev == "mark":  # played out at once: this caller has no jitter buffer
                    name = msg["mark"]["name"]
                    self.marks.append(name)
                    await self._send(
                        {
                            "event": "mark",
                            "sequenceNumber": self._next(),
                            "streamSid": self.stream_sid,
                            "mark": {"name": name},
                        }
                    )
                elif ev == "clear":
                    self.clears += 1

    # ---------------------------------------------------------------- audio

    def _stamp(self) -> int:
        """The next media chunk's ``media.timestamp``: Twilio's is the stream's real time
        (ms since it started), so chunks sent back to back advance it by 20 ms, and after
        a pause in sending (nothing was said) it jumps to the real time, as Twilio's does
        when media was skipped."""
        self._chunk += 1
        ts = self._ts + 20
        real = int((time.monotonic() - self._t_start) * 1000) // 20 * 20
        if real - ts > 100:
            ts = real
        self._ts = ts
        return ts

    async def _send_frame(self, frame: bytes) -> None:
        for payload in self._enc.encode(frame):  # μ-law 8 kHz, Twilio's media message
            ts = self._stamp()
            await self._send(
                {
                    "event": "media",
                    "sequenceNumber": self._next(),
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._chunk),
                        "timestamp": str(ts),
                        "payload": base64.b64encode(payload).decode(),
                    },
                }
            )

    def send_media_nowait(self, payload_b64: str) -> bool:
        """One ``media`` message (a base64 μ-law payload of 20 ms) onto the WebSocket now,
        without waiting for the socket: the frame is put in the connection's write buffer
        (the load generator's per-frame cost, for many calls from one loop). False when
        the connection is no longer open."""
        ws = self._ws
        proto = ws.protocol
        if self._closed or proto.state is not State.OPEN:
            return False
        ts = self._stamp()
        self._seq += 1
        chunk = self._chunk
        proto.send_text(
            f'{{"event":"media","sequenceNumber":"{self._seq}","streamSid":"{self.stream_sid}",'
            f'"media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}",'
            f'"payload":"{payload_b64}"}}}}'.encode()
        )
        ws.send_data()
        return True

    async def press(self, digit: str) -> None:
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def hangup(self) -> None:
        if self._ws is None:
            return
        if self.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._send(
                {
                    "event": "stop",
                    "sequenceNumber": self._next(),
                    "streamSid": self.stream_sid,
                    "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                }
            )
        await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def hung_up_by_voicehub(self) -> bool:
        return self.closed


def read_wav(path: Path) -> bytes:
    """A mono 16-bit WAV as canonical PCM (resampled to 16 kHz)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: need a mono 16-bit WAV")
        rate, data = w.getframerate(), w.readframes(w.getnframes())
    return Resampler(rate, CANONICAL_RATE).convert(data)


# ---------------------------------------------------------------- the command


def _synthesizer() -> Callable[[str], bytes]:
    """The offline TTS as the caller's voice (loaded once; progress is logged)."""
    from media.speech.registry import SpeechConfig, build_engines

    t0 = time.perf_counter()
    log.info("loading the caller's voice (TTS)...")
    engines = build_engines(SpeechConfig(vad=None, stt_partial=None, stt_final=None))
    assert engines.tts is not None
    log.info("caller's voice ready in %.1f s", time.perf_counter() - t0)
    return engines.tts.synthesize


async def simulate(
    data_dir: Path,
    lines: list[str],
    *,
    wav: Path | None = None,
    url: str | None = None,
    auth_token: str | None = None,
    public_url: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Drive one call; 0 when it ran to the end (the agent answered every line)."""
    from voicehub.client import Client

    doc: dict[str, Any] = {}
    sim_file = data_dir / "simulator.json"
    if sim_file.exists():
        doc = json.loads(sim_file.read_text())
    token = auth_token or doc.get("auth_token")
    public = (public_url or doc.get("public_url") or "").rstrip("/")
    if not token or not public:
        out(f"no simulator credentials in {sim_file}: is `voicehub serve` running with"
            " --data-dir there (and without Twilio credentials)?")  # fmt: skip
        return 2
    base = (url or public).rstrip("/")
    voices: list[bytes] = [read_wav(wav)] if wav is not None else []
    if lines:
        synth = await asyncio.to_thread(_synthesizer)
        voices += [await asyncio.to_thread(synth, line) for line in lines]
    sim = TwilioCallSim(base, public, token)
    call_id = await sim.dial()
    out(f"call {call_id} ({sim.call_sid}): ringing -> connecting the media stream")
    ws_url = base.replace("https://", "wss://").replace("http://", "ws://") + "/v1/ws"
    owner = (data_dir / "owner.token").read_text().strip()
    client = Client(ws_url, auth_token=owner, as_dict=True)
    await client.start()
    said: set[int] = set()

    def on_segment(row: dict[str, Any]) -> None:
        if row["is_final"]:
            out(f"  {row['speaker']:>7}: {row['text']}")

    def on_utterance(row: dict[str, Any]) -> None:
        if row["status"] == "playing" and row["id"] not in said:
            said.add(row["id"])
            out(f"  {'agent':>7}: {row['text']}")

    await client.subscribe(
        "SELECT id, segment_key, speaker, text, is_final FROM transcript_segments"
        " WHERE call_id = $1",
        [call_id],
        on_insert=on_segment,
        on_update=lambda _o, n: on_segment(n),
    )
    await client.subscribe(
        "SELECT id, text, status FROM utterances WHERE call_id = $1",
        [call_id],
        on_insert=on_utterance,
        on_update=lambda _o, n: on_utterance(n),
    )
    rc = 0
    try:
        await sim.connect()
        since = 0.0
        for pcm in voices:
            if not await sim.wait_agent_quiet(since=since):
                out("voicehub hung up" if sim.closed else "the agent did not answer")
                rc = 0 if sim.closed else 1
                break
            await sim.say(pcm)
            since = time.monotonic()  # now wait for the agent's answer to this line
        if rc == 0 and not sim.hung_up_by_voicehub:
            await sim.wait_agent_quiet(since=since, timeout=20)
        await asyncio.sleep(1.0)  # the last transcript rows
    finally:
        await sim.hangup()
        await client.close()
    rows = await asyncio.to_thread(_call_summary, base, owner, call_id)
    out(f"call {call_id} ended; {rows}")
    return rc


def _call_summary(base: str, owner: str, call_id: int) -> str:
    body = json.dumps(
        {
            "sql": "SELECT status FROM recordings WHERE call_id = $1",
            "params": [call_id],
        }
    ).encode()
    req = urllib.request.Request(
        base + "/v1/sql",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {owner}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as resp:
            rows = json.loads(resp.read())["rows"]
    except (OSError, ValueError, KeyError) as e:
        return f"(cannot read the recordings: {e})"
    if not rows:
        return "no recording (no consent)"
    return "recording " + ", ".join(str(r[0]) for r in rows)
