"""The JSON plumbing shared by every authentication route: bounded bodies and error bodies.

Invariant: a route reads at most ``MAX_BODY`` bytes, accepts only a JSON object with the
fields it declares, and answers errors as ``{"error": {"code", "message"}}`` with the
status of ``voicehub.server.errors.HTTP_STATUS``, like the rest of the API.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from voicehub.server.codec import decode_json, encode_json
from voicehub.server.errors import ApiError, describe, status_for

MAX_BODY = 64 * 1024


def json_response(body: Any, status: int = 200) -> Response:
    return Response(encode_json(body), status_code=status, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    code, message = describe(exc)
    return json_response({"error": {"code": code, "message": message}}, status_for(code))


async def read_object(request: Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object (empty body = ``{}``), with only ``allowed`` fields."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError("invalid_request", "the request body is too large")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError("invalid_request", "the request body is too large")
    if not raw.strip():
        return {}
    try:
        body = decode_json(raw)
    except Exception:
        raise ApiError("invalid_request", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError("invalid_request", "the body must be a JSON object")
    extra = sorted(set(body) - allowed)
    if extra:
        raise ApiError("invalid_request", f"unknown field(s) {extra}")
    return body
