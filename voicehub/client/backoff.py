"""When to reconnect, and how: the close codes that mean "resume", and retry with backoff.

docs/protocol.md, *Close codes*: 1001 (going away), 1011 (storage failed: later), 4000
(slow consumer) and a dropped connection (1006) all keep the session; the client resumes.
1012/1013/1014 are the generic "restart / try again later" codes a proxy or uvicorn may
send. 4001 (taken over), 4003 (identity suspended or revoked) and every other code end
the client. Attempts are spaced by jittered exponential backoff (10 or 50 ms doubling to
1 s) until a deadline; a refusal of the client's credentials (``FATAL_ERRORS``) ends the
attempts at once, since retrying cannot change it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from websockets.exceptions import WebSocketException

from voicehub.client.errors import ConnectionLost, ServerError

T = TypeVar("T")

RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014, 4000})
"""Close codes after which the session is resumed on a new connection."""
TAKEN_OVER = 4001
IDENTITY_INACTIVE = 4003
FATAL_ERRORS = frozenset(
    {"unauthorized", "identity_not_active", "registration_closed", "session_identity_mismatch"}
)
"""Errors of a (re)connection attempt that no retry can fix."""
TRANSIENT_ERRORS = frozenset({"shutting_down", "store_closed", "not_ready"})
"""Refusals that are no outcome: the request is sent again after the reconnect."""

MAX_DELAY_S = 1.0


async def retry(attempt: Callable[[], Awaitable[T]], code: int, limit_s: float | None) -> T:
    """``attempt()`` until it succeeds; ``ConnectionLost`` once ``limit_s`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = None if limit_s is None else loop.time() + limit_s
    delay = 0.01 if code == 1006 else 0.05  # a dead socket: the server is probably up
    while True:
        try:
            return await attempt()
        except ServerError as e:
            if e.code in FATAL_ERRORS:
                raise ConnectionLost(f"reconnect refused: {e}", code) from e
            last: BaseException = e
        except (OSError, TimeoutError, WebSocketException) as e:
            last = e
        if deadline is not None and loop.time() + delay > deadline:
            raise ConnectionLost(f"could not reconnect within {limit_s} s: {last!r}", code)
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, MAX_DELAY_S)
