"""The ASGI application: every route of the one HTTP/WebSocket port.

``create_app(hub)`` returns a Starlette app; the composition root may mount more routes
(providers live under ``/providers/``) before serving it.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route, WebSocketRoute

from voicehub.server import rest
from voicehub.server.hub import Hub
from voicehub.server.ws import WebSocketEndpoint


def create_app(hub: Hub) -> Starlette:
    routes = [
        Route("/healthz", rest.healthz, methods=["GET"]),
        Route("/readyz", rest.readyz, methods=["GET"]),
        Route("/v1/schema", rest.schema, methods=["GET"]),
        Route("/v1/sql", rest.sql, methods=["POST"]),
        Route("/v1/reducers/{name}", rest.call_reducer, methods=["POST"]),
        WebSocketRoute("/v1/ws", WebSocketEndpoint(hub)),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: rest.http_error})
    app.state.hub = hub
    return app
