"""The ASGI application: every route of the one HTTP/WebSocket port.

``create_app(hub)`` returns a Starlette app; the composition root may mount more routes
(providers live under ``/providers/``) before serving it. Authentication endpoints live
under ``/v1/auth/`` (``voicehub.auth.routes`` and the passkey ceremonies of
``voicehub.auth.passkeys``); both act through the hub's ``AuthService``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute, Route, WebSocketRoute

from voicehub.auth.passkeys import PasskeyService, passkey_routes
from voicehub.auth.routes import auth_routes
from voicehub.server import rest
from voicehub.server.hub import Hub
from voicehub.server.ws import WebSocketEndpoint

if TYPE_CHECKING:
    from voicehub.auth.service import AuthService


def _auth(request: Request) -> AuthService:
    hub: Hub = request.app.state.hub
    return hub.auth


def _inflight(request: Request) -> Any:
    hub: Hub = request.app.state.hub
    return hub.inflight()


def _passkeys(request: Request) -> PasskeyService:
    service: PasskeyService = request.app.state.passkeys
    return service


def create_app(hub: Hub) -> Starlette:
    routes: list[BaseRoute] = [
        Route("/healthz", rest.healthz, methods=["GET"]),
        Route("/readyz", rest.readyz, methods=["GET"]),
        Route("/v1/schema", rest.schema, methods=["GET"]),
        Route("/v1/sql", rest.sql, methods=["POST"]),
        Route("/v1/reducers/{name}", rest.call_reducer, methods=["POST"]),
        WebSocketRoute("/v1/ws", WebSocketEndpoint(hub)),
        *auth_routes(_auth, _inflight),
        *passkey_routes(_passkeys),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: rest.http_error})
    app.state.hub = hub
    app.state.passkeys = PasskeyService(hub.auth, hub.db, wait_durable=hub.wait_durable)
    return app
