"""The composition root: turns settings into a running node (store, modules, server).

Only this module (and the CLI above it) wires the layers together: the server's own
system modules (sessions and request ids, identities and credentials) are installed
first, then the user modules; the auth service, the hub and the ASGI app sit on the
database.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from consent import build_voice_module
from core import Database, StoreConfig, StoreError
from core.module import Module
from core.runtime import StoreRuntime
from media.speech.registry import SpeechConfig
from modules.python_host import ModuleLoadError, load_modules
from providers.config import (
    ProviderConfigError,
    TwilioConfig,
    VonageConfig,
    load_twilio,
    load_vonage,
)
from voicehub.auth.service import AuthService
from voicehub.auth.settings import AuthSettings
from voicehub.auth.tokens import load_or_create_key
from voicehub.config import Settings
from voicehub.media_host import MediaHost
from voicehub.metrics_http import metrics_route
from voicehub.provider_host import ProviderHost
from voicehub.recording_export import export_route
from voicehub.server import Hub, ServerConfig, ServerSystem, create_app
from voicehub.server.system import SESSIONS

log = logging.getLogger("voicehub.app")

__all__ = [
    "MediaPlan",
    "Node",
    "ProviderPlan",
    "Settings",
    "StartupError",
    "auth_settings",
    "media_plan",
    "open_node",
    "provider_plan",
    "server_config",
]


class StartupError(Exception):
    pass


class Node:
    """One running voicehub: the database, its async runtime, the server's hub and app,
    and the provider adapters mounted under ``/providers/``."""

    def __init__(
        self,
        db: Database,
        system: ServerSystem,
        cfg: ServerConfig,
        auth: AuthService,
        providers: ProviderPlan | None = None,
        media: MediaPlan | None = None,
    ) -> None:
        self.db = db
        self.runtime = StoreRuntime(db)
        self.auth = auth
        self.hub = Hub(db, system, cfg, auth)
        self.app: Any = create_app(self.hub)
        self.app.router.routes.append(metrics_route(self.hub, self.metrics))
        self.providers: ProviderHost | None = None
        if providers is not None and (providers.twilio or providers.vonage):
            self.providers = ProviderHost(
                self.hub, providers.public_url, providers.twilio, providers.vonage
            )
            self.app.router.routes.extend(self.providers.routes())
        self.media: MediaHost | None = None
        if self.providers is not None and media is not None and media.enabled:
            self.media = MediaHost(
                self.hub,
                self.providers.sessions,
                db.config.data_dir,
                speech=media.speech,
                agent=media.agent,
                transfer_to=media.transfer_to,
            )
            if self.media.worker.recordings_dir is not None and self.media.worker.keyring:
                self.app.router.routes.append(
                    export_route(
                        self.hub,
                        self.media.worker.recordings_dir,
                        self.media.worker.keyring,
                        self.media.client.call,
                    )
                )

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.providers is not None:
            out["providers"] = {
                "live_sessions": len(self.providers.sessions.sessions),
                "refused_requests": self.providers.audit.refused,
            }
        if self.media is not None:
            out["media"] = self.media.worker.snapshot()
        return out

    async def start(self) -> None:
        await self.runtime.start()
        await self.hub.start()
        if self.media is not None:
            await self.media.start()
        if self.providers is not None:
            await self.providers.start()

    async def stop(self) -> None:
        """After the server stopped: stop the shells, flush, write a final snapshot."""
        if self.providers is not None:
            await self.providers.stop()
        if self.media is not None:
            await self.media.stop()
        await self.hub.stop()
        await self.runtime.stop()
        self.db.close(snapshot=True)


@dataclass
class MediaPlan:
    """The call worker on provider sessions: speech engines (None: recording only) and
    the built-in example agent."""

    enabled: bool = True
    speech: SpeechConfig | None = None
    agent: bool = True
    transfer_to: str = ""


def media_plan(settings: Settings) -> MediaPlan:
    want = set(settings.speech_engines.split(","))
    speech = None
    if settings.speech and want:
        base = SpeechConfig()
        speech = SpeechConfig(
            vad=base.vad if "vad" in want or "stt" in want else None,
            stt_partial=base.stt_partial if "stt" in want else None,
            stt_final=base.stt_final if "stt" in want else None,
            tts=base.tts if "tts" in want else None,
        )
    return MediaPlan(
        enabled=settings.media,
        speech=speech,
        agent=settings.agent == "builtin",
        transfer_to=settings.transfer_to,
    )


SIMULATOR_FILE = "simulator.json"


def simulator_config(data_dir: Path | None, public_url: str) -> TwilioConfig:
    """The Twilio simulator's development credentials: a random auth token kept (0600) in
    ``<data-dir>/simulator.json`` with the URL to sign for, where ``simulate-call`` finds
    them (a memory-only node gets a fresh token every start)."""
    token = secrets.token_hex(16)
    if data_dir is not None:
        path = Path(data_dir) / SIMULATOR_FILE
        try:
            doc = json.loads(path.read_text())
            token = str(doc["auth_token"])
        except (OSError, ValueError, KeyError, TypeError):
            doc = {}
        doc = {"auth_token": token, "public_url": public_url, "account_sid": SIMULATOR_SID}
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    return TwilioConfig(SIMULATOR_SID, token, simulated=True)


SIMULATOR_SID = "AC" + "5" * 32


@dataclass
class ProviderPlan:
    """Which providers to mount, with their credentials, and the public base URL."""

    public_url: str
    twilio: TwilioConfig | None = None
    vonage: VonageConfig | None = None


def provider_plan(settings: Settings, env: Mapping[str, str] | None = None) -> ProviderPlan:
    """Provider credentials from the environment (the providers' own variable names) or
    the config file; a partly configured provider, or one without a public URL, is a
    start-up error."""
    env = os.environ if env is None else env
    section = settings.providers or {}
    try:
        twilio = load_twilio(env, section.get("twilio") or {})
        vonage = load_vonage(env, section.get("vonage") or {})
    except ProviderConfigError as e:
        raise StartupError(str(e)) from None
    url = settings.public_url.strip().rstrip("/")
    if twilio is None and settings.simulator:
        url = url or f"http://{settings.host}:{settings.port}"
        twilio = simulator_config(settings.data_dir, url)
    if (twilio or vonage) and not url.startswith(("https://", "http://")):
        names = " and ".join(n for n, c in (("Twilio", twilio), ("Vonage", vonage)) if c)
        raise StartupError(
            f"{names} credentials are set, so voicehub needs the public base URL the provider"
            " reaches it at (what it signs webhooks for): --public-url https://... or"
            " VOICEHUB_PUBLIC_URL"
        )
    return ProviderPlan(url, twilio, vonage)


def load_user_modules(specs: list[str]) -> list[Module]:
    mods: list[Module] = []
    for spec in specs:
        try:
            mods.extend(load_modules(spec))
        except ModuleLoadError as e:
            raise StartupError(str(e)) from None
    return mods


def server_config(settings: Settings) -> ServerConfig:
    return ServerConfig(
        idempotency_window_s=settings.idempotency_window_s,
        session_ttl_s=settings.session_ttl_s,
        send_queue_limit=settings.send_queue_limit,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )


def auth_settings(settings: Settings) -> AuthSettings:
    public_url = settings.public_url or f"http://{settings.host}:{settings.port}"
    return AuthSettings(
        data_dir=settings.data_dir,
        token_ttl_s=settings.token_ttl_s,
        registration=settings.registration,
        allow_anonymous=settings.allow_anonymous,
        public_url=public_url,
        rp_id=settings.rp_id,
        rp_name=settings.rp_name,
        rp_origin=settings.rp_origin,
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_user=settings.smtp_user,
        smtp_password=settings.smtp_password,
        smtp_from=settings.smtp_from,
        smtp_starttls=settings.smtp_starttls,
        magic_link_ttl_s=settings.magic_link_ttl_s,
        password_max_failures=settings.password_max_failures,
        password_lockout_s=settings.password_lockout_s,
    )


def voice_module(data_dir: str | Path | None) -> Module:
    """The trusted ``voice`` system module, its audit checkpoints signed by the server key."""
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    key = load_or_create_key(Path(data_dir) if data_dir is not None else None)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return build_voice_module(signer=key.sign, public_key=public)


def open_node(
    settings: Settings,
    extra_modules: list[Module] | None = None,
    cfg: ServerConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    auth: AuthSettings | None = None,
    providers: ProviderPlan | None = None,
    media: MediaPlan | None = None,
) -> Node:
    """Open the store and build the node; ``clock`` (wall seconds) drives token, lockout
    and link expiry (tests inject one); ``auth`` overrides the settings' auth part."""
    mods = load_user_modules(settings.modules) + list(extra_modules or [])
    store_cfg = StoreConfig(
        data_dir=settings.data_dir,
        durability=settings.durability,  # type: ignore[arg-type]
        interval_ms=settings.interval_ms,
        history_commits=settings.history_commits,
        snapshot_every=settings.snapshot_every,
    )
    try:
        auth_cfg = auth or auth_settings(settings)
    except ValueError as e:
        raise StartupError(str(e)) from None
    plan = providers if providers is not None else provider_plan(settings)
    system = ServerSystem()
    try:
        voice = voice_module(settings.data_dir)
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot load the server key: {e}") from None
    try:
        db = Database.open(system.modules([voice, *mods]), store_cfg)
    except StoreError as e:
        raise StartupError(f"cannot open the store at {settings.data_dir}: {e}") from None
    try:
        service = AuthService(db, auth_cfg, clock=clock, sessions_table=SESSIONS)
    except (OSError, ValueError) as e:
        db.close()
        raise StartupError(f"cannot load the server key: {e}") from None
    try:
        return Node(
            db,
            system,
            cfg or server_config(settings),
            service,
            plan,
            media if media is not None else media_plan(settings),
        )
    except Exception:
        db.close()
        raise
