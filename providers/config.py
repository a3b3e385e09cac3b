"""Provider credentials, from the environment under the providers' own variable names or
from the ``[providers.twilio]`` / ``[providers.vonage]`` tables of the config file.

A provider is enabled when any of its settings is present; it must then be complete, or
start-up fails with a message naming what is missing (never the values: secrets are not
logged, and ``repr`` of a config masks them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


class ProviderConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str = field(repr=False)
    api_base_url: str = ""
    """Override of ``https://api.twilio.com`` (tests, or a Twilio-compatible edge)."""
    simulated: bool = False
    """The simulator (``voicehub simulate-call``): a development token, no Twilio."""

    ENV: ClassVar[dict[str, str]] = {
        "account_sid": "TWILIO_ACCOUNT_SID",
        "auth_token": "TWILIO_AUTH_TOKEN",
    }


@dataclass(frozen=True)
class VonageConfig:
    api_key: str
    api_secret: str = field(repr=False)
    application_id: str = ""
    private_key: str = field(default="", repr=False)
    """PEM text of the application's private key (``VONAGE_PRIVATE_KEY`` may also be a path)."""
    signature_secret: str = field(default="", repr=False)
    api_host: str = ""
    """Override of ``api.nexmo.com`` (tests)."""

    ENV: ClassVar[dict[str, str]] = {
        "api_key": "VONAGE_API_KEY",
        "api_secret": "VONAGE_API_SECRET",
        "application_id": "VONAGE_APPLICATION_ID",
        "private_key": "VONAGE_PRIVATE_KEY",
        "signature_secret": "VONAGE_SIGNATURE_SECRET",
    }


def _gather(
    env_names: Mapping[str, str], env: Mapping[str, str], section: Mapping[str, Any]
) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, var in env_names.items():
        v = env.get(var)
        if v is None:
            v = section.get(key)
        if v is not None and str(v).strip():
            out[key] = str(v).strip() if key != "private_key" else str(v)
    return out


def _missing(provider: str, env_names: Mapping[str, str], got: Mapping[str, str]) -> None:
    missing = [f"{env_names[k]} ({k})" for k in env_names if k not in got]
    if missing:
        raise ProviderConfigError(
            f"{provider} is partly configured: missing {', '.join(missing)}"
            " (set all of them, or none to leave the provider disabled)"
        )


def load_twilio(env: Mapping[str, str], section: Mapping[str, Any]) -> TwilioConfig | None:
    got = _gather(TwilioConfig.ENV, env, section)
    if not got:
        return None
    _missing("Twilio", TwilioConfig.ENV, got)
    return TwilioConfig(
        got["account_sid"], got["auth_token"], api_base_url=str(section.get("api_base_url", ""))
    )


def load_vonage(env: Mapping[str, str], section: Mapping[str, Any]) -> VonageConfig | None:
    got = _gather(VonageConfig.ENV, env, section)
    if not got:
        return None
    _missing("Vonage", VonageConfig.ENV, got)
    pk = got["private_key"]
    if "-----BEGIN" not in pk:
        path = Path(pk).expanduser()
        try:
            got["private_key"] = path.read_text()
        except OSError as e:
            raise ProviderConfigError(
                f"VONAGE_PRIVATE_KEY is neither PEM text nor a readable file: {e.strerror}"
            ) from None
    return VonageConfig(api_host=str(section.get("api_host", "")), **got)


def secret_fields(cfg: Any) -> list[str]:
    """The names of a config's secret fields (those hidden from ``repr``)."""
    return [f.name for f in fields(cfg) if not f.repr]
