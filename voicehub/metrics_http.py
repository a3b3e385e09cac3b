"""``GET /v1/metrics``: the node's counters as JSON, for operators and the benches.

Only the owner and admin identities may read it (the counters reveal traffic). It reports
the store (offset, durable offset), the server (connections, calls executed and replayed),
the provider sessions and refusals, and the media worker with its speech pool: frames in,
late frames, recordings, finals, partials shed under load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from voicehub.auth.http import error_response, json_response
from voicehub.server.errors import ApiError
from voicehub.server.hub import Hub


def metrics_route(hub: Hub, extra: Callable[[], dict[str, Any]]) -> Route:
    async def handler(request: Request) -> Response:
        try:
            p = hub.auth.principal(request.headers.get("authorization"))
            if not (p.admin or p.kind == "owner"):
                raise ApiError("permission_denied", "metrics are for the owner and admins")
        except ApiError as e:
            return error_response(e)
        db = hub.db
        body: dict[str, Any] = {
            "store": {"offset": db.offset, "durable": hub.durable()},
            "server": {
                "connections": len(hub.connections),
                "calls_executed": hub.calls.executed,
                "calls_replayed": hub.calls.replayed,
            },
            **extra(),
        }
        return json_response(body)

    return Route("/v1/metrics", handler, methods=["GET"])
