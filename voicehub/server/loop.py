"""The server's event loop: uvloop where installed, else the stdlib asyncio loop.

``run_server_loop`` runs the server coroutine on uvloop (``auto``, where it is installed:
about 40 % less server CPU per agent action than the stdlib loop in ``bench/e2e_bench.py``)
or on the stdlib loop (``asyncio``). Nothing in voicehub depends on which: both run the
same code, and the tests run in-process servers on the stdlib loop and ``voicehub serve``
subprocesses on uvloop.

(A shorter interpreter switch interval, so the log's flusher thread would start its fsync
sooner, was measured too: no difference that stood out of the noise, so it is left at the
default.)
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("voicehub.server")

T = TypeVar("T")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def chosen_loop(kind: str) -> str:
    """``uvloop`` or ``asyncio`` for the setting ``auto`` / ``uvloop`` / ``asyncio``."""
    if kind == "asyncio":
        return "asyncio"
    if uvloop_available():
        return "uvloop"
    if kind == "uvloop":
        raise RuntimeError("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
    return "asyncio"


def run_server_loop(main: Coroutine[Any, Any, T], kind: str = "auto") -> T:
    """Run ``main`` to completion on the chosen loop."""
    try:
        which = chosen_loop(kind)
    except RuntimeError:
        main.close()
        raise
    log.debug("event loop: %s", which)
    if which == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
