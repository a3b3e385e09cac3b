"""Protocol errors: every error a client can see has a stable code and an HTTP status.

Store errors keep their own ``code`` (``core.errors``); the server adds the protocol's
codes. ``describe`` turns any exception into ``(code, message)`` so REST and WebSocket
report the same failure the same way; unexpected exceptions become ``internal`` without
leaking their text.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import StoreError

log = logging.getLogger("voicehub.server")

HTTP_STATUS: dict[str, int] = {
    # the request itself
    "invalid_request": 400,
    "invalid_arguments": 400,
    "sql_error": 400,
    "unsupported_sql": 400,
    "no_such_table": 400,
    "unauthorized": 401,
    "invalid_credentials": 401,
    "ed25519_invalid": 401,
    "magic_link_invalid": 401,
    "passkey_invalid": 401,
    "permission_denied": 403,
    "identity_not_active": 403,
    "registration_closed": 403,
    "session_identity_mismatch": 403,
    "not_found": 404,
    "no_such_reducer": 404,
    "method_not_allowed": 405,
    # the outcome of running it
    "constraint_violation": 409,
    "type_error": 409,
    "request_id_conflict": 409,
    "email_taken": 409,
    "history_unavailable": 410,
    "reducer_error": 422,
    "rate_limited": 429,
    "reducer_failed": 500,
    "schema_error": 500,
    "corruption": 500,
    "store_error": 500,
    "internal": 500,
    # the server's state
    "storage_failed": 503,
    "store_closed": 503,
    "shutting_down": 503,
    "not_ready": 503,
}

# Outcomes of a reducer that ran and rolled back: the same request id gets the same answer.
REMEMBERED_FAILURES = frozenset(
    {"reducer_error", "reducer_failed", "constraint_violation", "type_error", "permission_denied"}
)


class ApiError(Exception):
    """An error the server reports to a client (not raised by the store)."""

    def __init__(self, code: str, message: str, ref: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


class ReplayedFailure(ApiError):
    """The stored failure of an earlier call with the same request id."""


def status_for(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def describe(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` for any exception; unexpected ones are logged."""
    if isinstance(exc, ApiError | StoreError):
        return exc.code, exc.message
    log.error("unexpected server error", exc_info=exc)
    return "internal", "internal server error"
