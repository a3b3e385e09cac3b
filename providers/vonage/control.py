"""Vonage call control over the Voice API (``PUT /v1/calls/{uuid}``) through the SDK.

``VonageControl`` is the adapter's ``ProviderControl``: hangup, transfer to a phone number
or SIP URI, and transfer to an arbitrary NCCO (the restart re-attach). The SDK signs each
request with an RS256 application JWT (application id + private key); its calls block, so
they run in a thread. ``api_host`` may name a plain-``http://`` loopback host (tests' fake
Vonage); the SDK only speaks HTTPS, so a transport adapter rewrites those URLs - and only
for loopback hosts, so a real application JWT never travels unencrypted.

Invariant: every SDK or transport failure surfaces as ``ProviderError`` (the executor
records it as a failed command), each request is sent once (no transport retries: a
transfer must not be applied twice), and nothing secret is logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter
from vonage import Auth, HttpClientOptions, Vonage  # type: ignore[import-untyped]
from vonage_utils.errors import VonageError  # type: ignore[import-untyped]

from providers.commands import ProviderError
from providers.config import VonageConfig
from providers.vonage import ncco

DEFAULT_HOST = "api.nexmo.com"


class _PlainHttp(HTTPAdapter):
    """Sends the SDK's ``https://<loopback>`` requests as plain HTTP (tests only)."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.url and request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, *args, **kwargs)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_api_host(api_host: str) -> tuple[str, bool]:
    """(host[:port] for the SDK, whether to speak plain HTTP) from a configured host."""
    if not api_host:
        return DEFAULT_HOST, False
    if "://" not in api_host:
        return api_host, False
    parts = urlsplit(api_host)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Vonage api_host {api_host!r} is not a host or http(s) URL")
    plain = parts.scheme == "http"
    if plain and not _is_loopback(parts.hostname or ""):
        raise ValueError("a plain-http Vonage api_host is allowed on loopback only")
    return parts.netloc, plain


def pkcs8_pem(private_key: str) -> str:
    """The key as PKCS#8 PEM (the SDK accepts only ``BEGIN PRIVATE KEY``, not PKCS#1)."""
    if "-----BEGIN PRIVATE KEY-----" in private_key:
        return private_key
    key = serialization.load_pem_private_key(private_key.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class VonageControl:
    """Hangup and transfer through the Vonage SDK (blocking calls in a thread)."""

    def __init__(self, config: VonageConfig, timeout_s: int = 10) -> None:
        host, plain = split_api_host(config.api_host)
        self.host = host
        auth = Auth(application_id=config.application_id, private_key=pkcs8_pem(config.private_key))
        options = HttpClientOptions(api_host=host, timeout=timeout_s, max_retries=0)
        self.client = Vonage(auth, options)
        if plain:
            session = self.client.http_client._session
            session.mount(f"https://{host}", _PlainHttp(max_retries=0))
        self.requests_sent = 0
        self._lock = threading.Lock()  # the SDK's client keeps per-request state

    def _put(self, fn: Any, *args: Any) -> None:
        try:
            with self._lock:
                self.requests_sent += 1
                fn(*args)
        except VonageError as e:
            raise ProviderError(f"vonage: {type(e).__name__}: {str(e)[:500]}") from None
        except requests.RequestException as e:
            raise ProviderError(f"vonage unreachable: {type(e).__name__}: {e}") from None

    async def hangup(self, provider_call_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self._put, self.client.voice.hangup, provider_call_id)
        return {"uuid": provider_call_id, "action": "hangup"}

    async def transfer(self, provider_call_id: str, target: str) -> dict[str, Any]:
        try:
            actions = ncco.transfer_actions(target)
        except ValueError as e:
            raise ProviderError(str(e)) from None
        await self.transfer_ncco(provider_call_id, actions)
        return {"uuid": provider_call_id, "action": "transfer", "target": target}

    async def transfer_ncco(self, provider_call_id: str, actions: list[Any]) -> None:
        """Replace the call's NCCO (``{"action":"transfer","destination":{"type":"ncco"...}}``)."""
        await asyncio.to_thread(
            self._put, self.client.voice.transfer_call_ncco, provider_call_id, actions
        )
