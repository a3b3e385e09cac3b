"""The authentication endpoints under ``/v1/auth/`` (JSON in and out).

Every error is ``{"error": {"code", "message"}}`` with the status of
``voicehub.server.errors.HTTP_STATUS``, like the rest of the HTTP API. Bodies are JSON
objects of at most 64 KiB with only the documented fields. The remote address used for
rate limits and audit rows is the TCP peer (put a proxy's address rewriting in front if
there is one).

Invariant: every endpoint that changes state answers only after its commits (audit rows
included) are durable, and is counted as in-flight work so a graceful shutdown lets it
finish.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from voicehub.auth.http import error_response, json_response, read_object
from voicehub.server.errors import ApiError

if TYPE_CHECKING:
    from voicehub.auth.service import AuthService


GetService = Callable[[Request], "AuthService"]
Inflight = Callable[[Request], contextlib.AbstractContextManager[Any]]


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


def _optional_text(body: dict[str, Any], name: str, limit: int = 200) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise ApiError("invalid_request", f"{name} must be a string of at most {limit}")
    return v.strip() or None


def auth_routes(get_service: GetService, inflight: Inflight | None = None) -> list[Route]:
    """The endpoints; ``inflight(request)`` (the hub's) guards work against shutdown."""

    def endpoint(
        fn: Callable[[Request, AuthService], Awaitable[Any]], status: int = 200
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                guard = inflight(request) if inflight is not None else contextlib.nullcontext()
                with guard:
                    out = await fn(request, get_service(request))
            except Exception as e:
                return error_response(e)
            return json_response(out, status)

        return run

    async def challenge(request: Request, auth: AuthService) -> Any:
        body = await read_object(request, frozenset({"public_key"}))
        return auth.ed25519.challenge(body.get("public_key"))

    async def ed25519(request: Request, auth: AuthService) -> Any:
        body = await read_object(
            request, frozenset({"public_key", "challenge", "signature", "display_name"})
        )
        return await auth.ed25519.login(
            body.get("public_key"),
            body.get("challenge"),
            body.get("signature"),
            _optional_text(body, "display_name"),
            _remote(request),
        )

    async def password_register(request: Request, auth: AuthService) -> Any:
        header = request.headers.get("authorization")
        by = auth.principal(header) if header else None
        body = await read_object(request, frozenset({"email", "password", "display_name"}))
        return await auth.passwords.register(
            body.get("email"),
            body.get("password"),
            _optional_text(body, "display_name"),
            by,
            _remote(request),
        )

    async def password_login(request: Request, auth: AuthService) -> Any:
        body = await read_object(request, frozenset({"email", "password"}))
        return await auth.passwords.login(body.get("email"), body.get("password"), _remote(request))

    async def magic_request(request: Request, auth: AuthService) -> Any:
        body = await read_object(request, frozenset({"email"}))
        await auth.magic.request(body.get("email"), _remote(request))
        return {"status": "accepted"}

    async def magic_verify(request: Request, auth: AuthService) -> Any:
        if request.method == "GET":
            token = request.query_params.get("token")
        else:
            token = (await read_object(request, frozenset({"token"}))).get("token")
        return await auth.magic.verify(token, _remote(request))

    async def me(request: Request, auth: AuthService) -> Any:
        p = auth.principal(request.headers.get("authorization"))
        row = auth.identity_row(p.identity)
        return {
            "identity": p.identity,
            "kind": p.kind,
            "status": p.status,
            "privileges": sorted(p.privileges),
            "method": p.method,
            "display_name": None if row is None else row.display_name,
            "email": None if row is None else row.email,
        }

    p = "/v1/auth"
    return [
        Route(f"{p}/challenge", endpoint(challenge), methods=["POST"]),
        Route(f"{p}/ed25519", endpoint(ed25519), methods=["POST"]),
        Route(f"{p}/password/register", endpoint(password_register, 201), methods=["POST"]),
        Route(f"{p}/password/login", endpoint(password_login), methods=["POST"]),
        Route(f"{p}/magic/request", endpoint(magic_request, 202), methods=["POST"]),
        Route(f"{p}/magic/verify", endpoint(magic_verify), methods=["GET", "POST"]),
        Route(f"{p}/me", endpoint(me), methods=["GET"]),
    ]
