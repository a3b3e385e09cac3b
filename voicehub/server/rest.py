"""The HTTP API: reducer calls, ad-hoc SQL, schema, health and readiness.

Every error is ``{"error": {"code", "message"}}`` with the status of ``HTTP_STATUS``.
Invariant: a reducer call is answered only once its commit is durable (under the
``durable`` policy), whether it ran now or is the stored outcome of an earlier call with
the same request id.

Invariant: every request runs as the ``Principal`` of its ``Authorization`` header
(``AuthService.principal``): SQL and reducers under row-level security for that identity,
unrestricted only for a principal holding ``bypass_rls``; the schema lists only the
tables that principal can read.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from core.schema import to_builtins
from core.sql.query import run_query_async
from voicehub.server.codec import decode_json, encode_json
from voicehub.server.errors import ApiError, ReplayedFailure, describe, status_for
from voicehub.server.hub import Hub


def json_response(body: Any, status: int = 200) -> Response:
    return Response(encode_json(body), status_code=status, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    code, message = describe(exc)
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if isinstance(exc, ReplayedFailure):
        body["replayed"] = True
    return json_response(body, status_for(code))


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def _json_body(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return None
    try:
        return decode_json(body)
    except Exception:
        raise ApiError("invalid_request", "the request body is not valid JSON") from None


async def call_reducer(request: Request) -> Response:
    """``POST /v1/reducers/{name}``: body = arguments (object by name or array)."""
    hub = _hub(request)
    try:
        with hub.inflight():
            args = await _json_body(request)
            if args is not None and not isinstance(args, dict | list):
                raise ApiError(
                    "invalid_request", "the body must be a JSON object or array of arguments"
                )
            rid = request.headers.get("idempotency-key") or request.query_params.get("request_id")
            if rid is not None and not 0 < len(rid) <= 256:
                raise ApiError("invalid_request", "request ids are 1 to 256 characters")
            principal = hub.auth.principal(request.headers.get("authorization"))
            out = hub.calls.call(principal, request.path_params["name"], args, rid)
            await hub.wait_durable(out.offset)
    except Exception as e:
        return error_response(e)
    body: dict[str, Any] = {"offset": out.offset, "value": out.value}
    if rid is not None:
        body["request_id"] = rid
    if out.replayed:
        body["replayed"] = True
    return json_response(body)


async def sql(request: Request) -> Response:
    """``POST /v1/sql``: ``{"sql": "...", "params": [...] | {...}}``."""
    hub = _hub(request)
    try:
        principal = hub.auth.principal(request.headers.get("authorization"))
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise ApiError("invalid_request", 'the body must be {"sql": "...", "params": ...}')
        params = body.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise ApiError("invalid_request", "params must be an array or an object")
        extra = sorted(set(body) - {"sql", "params"})
        if extra:
            raise ApiError("invalid_request", f"unknown field(s) {extra}")
        principal = hub.auth.refresh(principal)  # the body was read meanwhile
        res = await run_query_async(hub.db, body["sql"], params, principal.sender)
    except Exception as e:
        return error_response(e)
    return json_response(
        {"columns": res.columns, "types": res.types, "rows": res.rows, "offset": res.offset}
    )


async def schema(request: Request) -> Response:
    """``GET /v1/schema``: the tables the caller can read and the callable reducers."""
    hub = _hub(request)
    db = hub.db
    try:
        principal = hub.auth.principal(request.headers.get("authorization"))
    except Exception as e:
        return error_response(e)
    tables = [
        to_builtins(s.tdef)
        for s in db.stores.values()
        if not s.tdef.system and (s.tdef.public or principal.bypass_rls)
    ]
    reducers = [
        to_builtins(rdef)
        for name, (rdef, _) in db.reducers.items()
        if rdef.kind == "reducer" and name not in hub.system.hidden
    ]
    modules = [m.name for m in db.modules if m not in hub.system.system_modules]
    return json_response(
        {"offset": db.visible_offset, "modules": modules, "tables": tables, "reducers": reducers}
    )


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    hub = _hub(request)
    why = hub.ready()
    if why is not None:
        return json_response({"error": {"code": "not_ready", "message": why}}, 503)
    db = hub.db
    return json_response(
        {"status": "ready", "offset": db.offset, "durable_offset": db.visible_offset}
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in our error format."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    if status >= 500:
        code = "internal"
    detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
    return json_response({"error": {"code": code, "message": str(detail)}}, status)
