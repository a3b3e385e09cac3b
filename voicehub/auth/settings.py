"""Authentication settings: token lifetime, registration policy, relying party, SMTP, lockout.

Plain data filled by the composition root from ``voicehub.config.Settings``. The
invariant kept here is that every value is valid once constructed (``__post_init__``
refuses an unknown registration policy or a non-positive lifetime), so the services
never re-check them.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

REGISTRATION_POLICIES: Final = ("open", "approval", "closed")


@dataclass(frozen=True)
class AuthSettings:
    data_dir: Path | None = None
    """Where ``server.key`` and ``owner.token`` live (None: in memory, per process)."""
    token_ttl_s: float = 3600.0
    """Lifetime of a signed session token."""
    registration: str = "open"
    """open: new identities start active; approval: registered until an admin activates
    them; closed: only an admin creates identities."""
    allow_anonymous: bool = True
    """Whether sessions and REST requests without credentials are served (as anonymous)."""
    public_url: str = "http://127.0.0.1:8765"
    """The externally visible base URL (magic links point here)."""
    rp_id: str = ""
    """WebAuthn relying party id (default: the host of ``public_url``)."""
    rp_name: str = "voicehub"
    rp_origin: str = ""
    """WebAuthn origin (default: scheme://host[:port] of ``public_url``)."""
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_from: str = "voicehub@localhost"
    smtp_starttls: bool = True
    magic_link_ttl_s: float = 900.0
    password_max_failures: int = 5
    password_lockout_s: float = 900.0
    challenge_ttl_s: float = 60.0
    """Lifetime of an Ed25519 login challenge."""
    login_rate_burst: int = 10
    """Login attempts one remote address may make in a burst (token bucket size)."""
    login_rate_per_s: float = 10 / 60
    """Sustained login attempts per second and remote address (bucket refill rate)."""

    def __post_init__(self) -> None:
        if self.registration not in REGISTRATION_POLICIES:
            raise ValueError(
                f"registration must be one of {', '.join(REGISTRATION_POLICIES)},"
                f" not {self.registration!r}"
            )
        for name in ("token_ttl_s", "magic_link_ttl_s", "password_lockout_s", "challenge_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.password_max_failures < 1 or self.login_rate_burst < 1:
            raise ValueError("password_max_failures and login_rate_burst must be at least 1")
        u = urllib.parse.urlsplit(self.public_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"public_url must be an http(s) URL, not {self.public_url!r}")
        if not self.rp_id:
            object.__setattr__(self, "rp_id", u.hostname)
        if not self.rp_origin:
            object.__setattr__(self, "rp_origin", f"{u.scheme}://{u.netloc}")

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/")
