"""Call control through the Twilio REST API (``twilio.rest.Client``), for the command
executor and the restart re-attach.

* hangup: ``calls(sid).update(status="completed")``;
* transfer: ``calls(sid).update(twiml=<Dial>...)``;
* redirect (re-attach): ``calls(sid).update(twiml=<Connect><Stream>...)``.

The SDK is blocking (``requests``); every call runs in ``asyncio.to_thread``. With
``api_base_url`` configured (tests, a Twilio-compatible edge) an ``HttpClient`` subclass
rewrites ``https://api.twilio.com`` to it. Invariant: a refusal by Twilio
(``TwilioRestException`` / ``TwilioServiceException``) always surfaces as ``ProviderError``
with Twilio's error code and message - never as a silent success.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import requests
from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioException,
    TwilioRestException,
)
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from providers.commands import ProviderError
from providers.config import TwilioConfig
from providers.twilio import twiml

log = logging.getLogger("voicehub.providers.twilio")

TWILIO_API = "https://api.twilio.com"


class _BaseUrlHttpClient(TwilioHttpClient):  # type: ignore[misc]
    """Sends what the SDK addresses to ``https://api.twilio.com`` to ``base_url``."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")
        host = urlsplit(self.base_url).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1") and self.session is not None:
            self.session.trust_env = False  # never route loopback through an env proxy

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API) :]
        return super().request(method, url, *args, **kwargs)


def _error(e: Exception) -> ProviderError:
    if isinstance(e, TwilioRestException):
        return ProviderError(f"twilio error {e.code} (HTTP {e.status}): {e.msg}")
    code = getattr(e, "code", None)
    return ProviderError(f"twilio error {code}: {e}" if code else f"twilio error: {e}")


def _summary(call: Any) -> dict[str, Any]:
    return {"sid": getattr(call, "sid", None), "status": getattr(call, "status", None)}


class TwilioControl:
    """The ``ProviderControl`` of Twilio (hangup, transfer) plus redirect."""

    def __init__(self, config: TwilioConfig, timeout: float = 10.0) -> None:
        http = (
            _BaseUrlHttpClient(config.api_base_url, timeout)
            if config.api_base_url
            else TwilioHttpClient(timeout=timeout)
        )
        self.client = Client(config.account_sid, config.auth_token, http_client=http)

    def _update(self, sid: str, **params: Any) -> dict[str, Any]:
        try:
            call = self.client.calls(sid).update(**params)
        except TwilioException as e:
            raise _error(e) from None
        except requests.RequestException as e:  # Twilio unreachable: the command failed
            raise ProviderError(f"twilio unreachable: {type(e).__name__}: {e}") from None
        return _summary(call)

    async def hangup(self, provider_call_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._update, provider_call_id, status="completed")

    async def transfer(self, provider_call_id: str, target: str) -> dict[str, Any]:
        try:
            doc = twiml.dial(target)
        except ValueError as e:
            raise ProviderError(str(e)) from None
        out = await asyncio.to_thread(self._update, provider_call_id, twiml=doc)
        return {**out, "target": target}

    async def redirect(self, provider_call_id: str, document: str) -> dict[str, Any]:
        """Replace the call's TwiML (the re-attach's fresh ``<Connect><Stream>``)."""
        return await asyncio.to_thread(self._update, provider_call_id, twiml=document)
