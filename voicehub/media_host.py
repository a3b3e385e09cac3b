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
import logging
import time
from pathlib import Path

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
        await self.worker.recover()
        self.sessions.on_session(self._on_session)
        if self.agent is not None:
            await self.agent.start()
        if self.speech_config is not None:
            self._loading = asyncio.get_running_loop().create_task(self._load())
        else:
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
        self._ready.set()

    async def ready(self) -> None:
        await self._ready.wait()

    async def _on_session(self, session: CallSession) -> None:
        if not self._ready.is_set():
            log.info("call %s: waiting for the speech engines", session.call_id)
            await self._ready.wait()
        await self.worker.run(session)

    async def stop(self) -> None:
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
