"""Server configuration from flags, environment variables and a TOML file (flags win).

Every setting has a flag (``--data-dir``), an environment variable (``VOICEHUB_DATA_DIR``)
and a TOML key (``data_dir``). Precedence: flag > environment > file > default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = Path("./voicehub-data")
    durability: str = "durable"
    interval_ms: int = 10
    history_commits: int = 10_000
    snapshot_every: int = 100_000
    modules: list[str] = field(default_factory=list)
    log_level: str = "info"
    event_loop: str = "auto"
    """auto (uvloop where installed), uvloop or asyncio (voicehub.server.loop)."""
    idempotency_window_s: float = 300.0
    session_ttl_s: float = 86_400.0
    send_queue_limit: int = 4096
    shutdown_timeout_s: float = 10.0
    # authentication (voicehub.auth.settings.AuthSettings; docs/security.md)
    token_ttl_s: float = 3600.0
    registration: str = "open"
    allow_anonymous: bool = True
    public_url: str = ""
    rp_id: str = ""
    rp_name: str = "voicehub"
    rp_origin: str = ""
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_from: str = "voicehub@localhost"
    smtp_starttls: bool = True
    magic_link_ttl_s: float = 900.0
    password_max_failures: int = 5
    password_lockout_s: float = 900.0
    # provider credentials: the providers' own environment variables (TWILIO_AUTH_TOKEN,
    # VONAGE_API_KEY, ...) or the config file's [providers.twilio] / [providers.vonage]
    providers: dict[str, Any] = field(default_factory=dict, repr=False)
    simulator: bool = True
    """Without Twilio credentials: the Twilio routes in simulator mode (simulate-call)."""
    # the media side (docs/media.md)
    media: bool = True
    """Run the call worker (recording, transcription, speech) on provider media streams."""
    speech: bool = True
    """Load the offline speech engines (VAD, STT, TTS); off: recording only."""
    speech_engines: str = "vad,stt,tts"
    """Which of them (comma-separated), e.g. ``vad`` for recording + voice activity only."""
    agent: str = "builtin"
    """The agent the consent flow hands calls to: builtin (the example agent) or none."""
    transfer_to: str = ""
    """Where the example agent transfers a caller who asks for a person."""


ENV_PREFIX = "VOICEHUB_"


_INTS = frozenset(
    {
        "port",
        "interval_ms",
        "history_commits",
        "snapshot_every",
        "send_queue_limit",
        "smtp_port",
        "password_max_failures",
    }
)
_POSITIVE = frozenset(
    {
        "idempotency_window_s",
        "session_ttl_s",
        "shutdown_timeout_s",
        "token_ttl_s",
        "magic_link_ttl_s",
        "password_lockout_s",
    }
)
_BOOLS = frozenset({"allow_anonymous", "smtp_starttls", "simulator", "media", "speech"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(name: str, value: Any) -> Any:
    if name in _INTS:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name!r} must be an integer, got {value!r}") from None
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"setting {name!r} must be true or false, got {value!r}")
    if name == "registration" and value not in ("open", "approval", "closed"):
        raise ValueError(f"registration must be open, approval or closed, not {value!r}")
    if name in _POSITIVE:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name!r} must be a number, got {value!r}") from None
        if f <= 0:
            raise ValueError(f"setting {name!r} must be positive, got {value!r}")
        return f
    if name == "data_dir":
        return Path(value)
    if name == "modules":
        if isinstance(value, str):
            return [v for v in value.split(",") if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("setting 'modules' must be a list of paths or module names")
        return list(value)
    if name == "providers":
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ValueError("'providers' is a table of tables: [providers.twilio], ...")
        unknown = sorted(set(value) - {"twilio", "vonage"})
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}: known are twilio, vonage")
        return value
    if name == "speech_engines":
        parts = {p.strip() for p in str(value).split(",") if p.strip()}
        if not parts <= {"vad", "stt", "tts"}:
            raise ValueError(f"speech_engines is a list of vad, stt, tts, not {value!r}")
        return ",".join(sorted(parts))
    if name == "agent" and value not in ("builtin", "none"):
        raise ValueError(f"agent must be builtin or none, not {value!r}")
    if name == "event_loop" and value not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"event_loop must be auto, uvloop or asyncio, not {value!r}")
    if name == "durability" and value not in ("durable", "interval", "none"):
        raise ValueError(f"durability must be durable, interval or none, not {value!r}")
    return value


def resolve(flags: dict[str, Any], env: dict[str, str] | None = None) -> Settings:
    """Merge the sources; ``flags`` holds only options given on the command line."""
    env = dict(os.environ) if env is None else env
    s = Settings()
    names = [f.name for f in fields(Settings)]
    config_file = flags.get("config") or env.get(ENV_PREFIX + "CONFIG")
    layers: list[dict[str, Any]] = []
    if config_file:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {path}: {e}") from None
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"config file {path}: unknown key(s) {unknown}")
        layers.append(data)
    layers.append({n: env[ENV_PREFIX + n.upper()] for n in names if ENV_PREFIX + n.upper() in env})
    layers.append({n: v for n, v in flags.items() if n in names and v is not None})
    for layer in layers:
        for name, value in layer.items():
            setattr(s, name, _coerce(name, value))
    return s
