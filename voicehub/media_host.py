"""Part of the composition root: the media side of a node - the call worker on every live
provider session, the speech engines it uses, and the built-in example agent.

At start (``MediaHost.start``) the recording master key is loaded (or created, 0600) from
the data directory, recordings a crash left unfinished are finalized and reported, and the
speech engines are built on a worker thread with their load times logged (model loads take
seconds; the node serves meanwhile, and calls that arrive before they are ready are
recorded and transcribed once they are). Engines that cannot be installed here are logged
with the package to install, and calls still get recordings and signalling.

The worker acts as the ``media`` system identity and the example agent as a ``machine``
identity (subject to row-level security: it sees only the calls the consent flow hands
to it); both identities are derived from the server key, so they are the same across
restarts and their request ids keep deduplicating.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from media.keys import Keyring
from media.speech.registry import Engines, SpeechConfig, build_engines
from media.speech.worker import SpeechPool
from media.worker import CallWorker
from providers.session import CallSession, SessionRegistry
from voicehub.agents.simple import SimpleAgent
from voicehub.auth import identities as ids
from voicehub.provider_host import component_key
from voicehub.server.hub import Hub
from voicehub.server.local import LocalClient

log = logging.getLogger("voicehub.media")

GC_THRESHOLDS = (20_000, 10, 10)
"""The collector's thresholds once the media side is up: a young collection every 20,000
net allocations instead of 700. At hundreds of calls the frame path allocates tens of
thousands of short-lived objects a second; with the default a collection ran every few
milliseconds, and the older generations, rescanned as often, stalled the loop for tens
of milliseconds (measured in ``/v1/metrics`` ``media.gc``; bench/media_bench.py)."""


class GcPauses:
    """The cyclic garbage collector's pauses in this process (``gc.callbacks``): a full
    collection over many live objects stalls the event loop, and every frame with it."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.max_pause_ms = [0.0, 0.0, 0.0]
        self.seconds = 0.0
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        dt = time.perf_counter() - self._t
        gen = int(info.get("generation", 2))
        self.seconds += dt
        self.collections[gen] += 1
        self.max_pause_ms[gen] = max(self.max_pause_ms[gen], dt * 1000)

    def snapshot(self) -> dict[str, Any]:
        return {
            "collections": list(self.collections),
            "max_pause_ms": [round(x, 1) for x in self.max_pause_ms],
            "seconds": round(self.seconds, 3),
            "frozen": gc.get_freeze_count(),
        }


class MediaHost:
    def __init__(
        self,
        hub: Hub,
        sessions: SessionRegistry,
        data_dir: Path | None,
        *,
        speech: SpeechConfig | None = None,
        agent: bool = True,
        transfer_to: str = "",
    ) -> None:
        self.hub = hub
        self.sessions = sessions
        self.data_dir = data_dir
        self.speech_config = speech
        self.engines: Engines | None = None
        self.pool: SpeechPool | None = None
        auth = hub.auth
        media_id = auth.declare_system_identity("media worker", self._public("media"))
        self.client = LocalClient(hub, auth.for_identity(media_id, "system"), name="media")
        self.agent: SimpleAgent | None = None
        self.agent_client: LocalClient | None = None
        agent_id = None
        if agent:
            agent_id = self._agent_identity()
            self.agent_client = LocalClient(
                hub, auth.for_identity(agent_id, "system"), name="agent"
            )
            self.agent = SimpleAgent(self.agent_client, agent_id, transfer_to=transfer_to)
        keyring = Keyring.load_or_create(data_dir) if data_dir is not None else Keyring.generate()
        recordings = (Path(data_dir) / "recordings") if data_dir is not None else None
        self.worker = CallWorker(self.client, None, recordings, keyring, agent=agent_id)
        self.gc = GcPauses()
        self.worker.gc_snapshot = self.gc.snapshot
        self._ready = asyncio.Event()
        self._loading: asyncio.Task[None] | None = None

    def _public(self, name: str) -> bytes:
        return (
            component_key(self.hub.auth.signer.key, name)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def _agent_identity(self) -> str:
        """The example agent: a machine identity (RLS applies), the same on every start."""
        key = self._public("example-agent")
        row = ids.identity_by_key(self.hub.db, key)
        if row is not None:
            return str(row.identity)
        return self.hub.auth.register(
            "machine", "voicehub example agent", public_key=key, method="system", by_admin=True
        )

    async def start(self) -> None:
        gc.callbacks.append(self.gc)
        await self.worker.recover()
        self.sessions.on_session(self._on_session)
        if self.agent is not None:
            await self.agent.start()
        if self.speech_config is not None:
            self._loading = asyncio.get_running_loop().create_task(self._load())
        else:
            _settle_gc()
            self._ready.set()

    async def _load(self) -> None:
        cfg = self.speech_config
        assert cfg is not None
        t0 = time.perf_counter()
        log.info("loading speech engines (VAD %s, STT %s/%s, TTS %s)...",
                 cfg.vad, cfg.stt_partial, cfg.stt_final, cfg.tts)  # fmt: skip
        try:
            self.engines = await asyncio.to_thread(build_engines, cfg)
        except Exception as e:  # a missing optional package: say which, keep serving
            log.error("speech engines unavailable (%s): calls are recorded but not"
                      " transcribed or answered by voice", e)  # fmt: skip
            self._ready.set()
            return
        self.pool = SpeechPool(self.engines)
        self.worker.speech = self.pool
        loads = ", ".join(f"{k} {v:.1f} s" for k, v in self.engines.load_seconds.items())
        log.info("speech engines ready in %.1f s (%s)", time.perf_counter() - t0, loads)
        _settle_gc()
        self._ready.set()

    async def ready(self) -> None:
        await self._ready.wait()

    async def _on_session(self, session: CallSession) -> None:
        if not self._ready.is_set():
            log.info("call %s: waiting for the speech engines", session.call_id)
            await self._ready.wait()
        await self.worker.run(session)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.gc)
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.agent is not None:
            await self.agent.stop()
        if self.pool is not None:
            await self.pool.close()
        if self.engines is not None:
            await asyncio.to_thread(self.engines.close)
        for c in (self.client, self.agent_client):
            if c is not None:
                await c.close()


def _settle_gc() -> None:
    """Start-up is over (modules, engines, models loaded: objects that live as long as the
    process): collect once, move the survivors to the permanent generation so no later
    collection rescans them, and raise the thresholds (``GC_THRESHOLDS``)."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("gc: %d start-up objects frozen in %.0f ms, thresholds %s",
             gc.get_freeze_count(), (time.perf_counter() - t0) * 1000, GC_THRESHOLDS)  # fmt: skip
