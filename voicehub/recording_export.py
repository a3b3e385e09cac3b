"""``GET /v1/calls/{call_id}/recording.wav``: a call's finalized recording, decrypted.

Authorization is the store's: the caller's identity (bearer token) must see the
``recordings`` row through row-level security - the owner and system identities see every
call, an agent only the calls actively assigned to it, anonymous callers none - so the
route cannot hand out more than a query could. Before anything is decrypted the access is
committed (``recording_access``: who, which recording, the stated ``purpose``), which also
makes it an entry of the voice audit chain; a refused request leaves nothing. The file is
verified (every record authenticated, the checksum equal to the row's) and decrypted on a
worker thread to a temporary WAV (left: caller, right: agent) that is streamed and deleted.

``voicehub recording export --call ID`` is the client of this route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core.errors import StoreError
from core.sql.query import run_query_async
from media.keys import Keyring
from media.recorder import export_wav
from voicehub.auth.http import error_response
from voicehub.server.errors import ApiError
from voicehub.server.hub import Hub

log = logging.getLogger("voicehub.recordings")

ROWS = (
    "SELECT id, storage_uri, checksum, status FROM recordings"
    " WHERE call_id = $1 AND status = 'finalized'"
)


def export_route(hub: Hub, root: Path, keyring: Keyring, audit: Callable[..., Any]) -> Route:
    """``audit(reducer, args)``: runs a reducer as the system (the media identity)."""

    async def handler(request: Request) -> Response:
        try:
            principal = hub.auth.principal(request.headers.get("authorization"))
            try:
                call_id = int(request.path_params["call_id"])
            except ValueError:
                raise ApiError("invalid_request", "the call id must be a number") from None
            want = request.query_params.get("recording_id")
            purpose = request.query_params.get("purpose", "").strip()
            if not purpose:
                raise ApiError(
                    "invalid_request", "say why: ?purpose=... (it is recorded with the access)"
                )
            res = await run_query_async(hub.db, ROWS, [call_id], principal.sender)
            rows = sorted(res.rows, key=lambda r: r[0])
            if want is not None:
                rows = [r for r in rows if str(r[0]) == want]
            if not rows:
                raise ApiError("not_found", f"no finalized recording of call {call_id} for you")
            rec_id, uri, checksum, _ = rows[-1]
            await audit(
                "recording_access",
                {"recording_id": rec_id, "accessor": principal.identity, "purpose": purpose},
            )
        except (ApiError, StoreError) as e:
            return error_response(e)
        fd, tmp = tempfile.mkstemp(prefix=f"vh-export-{rec_id}-", suffix=".wav")
        os.close(fd)
        out = Path(tmp)
        try:
            await asyncio.to_thread(
                export_wav, root / str(uri), keyring, out, expected_checksum=str(checksum)
            )
        except Exception as e:
            out.unlink(missing_ok=True)
            log.error("recording %s: export failed: %s", rec_id, e)
            return error_response(ApiError("internal", f"the recording cannot be read: {e}"))
        log.info("recording %s of call %s exported for %s", rec_id, call_id, principal.identity)
        return StreamingResponse(
            _stream(out),
            media_type="audio/wav",
            headers={
                "Content-Disposition": f'attachment; filename="call-{call_id}-{rec_id}.wav"',
                "Content-Length": str(out.stat().st_size),
            },
        )

    return Route("/v1/calls/{call_id}/recording.wav", handler, methods=["GET"])


async def _stream(path: Path, block: int = 1 << 16) -> AsyncIterator[bytes]:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                yield chunk
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
