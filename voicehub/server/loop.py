"""The server's event loop and thread switching: what keeps a commit's fsync short.

``run_server_loop`` runs the server coroutine on uvloop (``auto``, where it is installed:
about 40 % less server CPU per agent action than the stdlib loop in ``bench/e2e_bench.py``)
or on the stdlib asyncio loop, and lowers the interpreter's thread switch interval.

Why the switch interval: the write-ahead log's flusher is a thread. A commit wakes it, but
it can start its ``pwrite``/``fdatasync`` only once it holds the GIL, and by default a
waiting thread gets the GIL from a busy one only after 5 ms (or when the loop next
sleeps). At 0.1 ms the flush starts while the loop is still fanning the commit out to its
subscribers, instead of after; the cost is a few extra thread switches a second while
threads compete for the interpreter.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("voicehub.server")

SWITCH_INTERVAL_S = 1e-4

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
    """Run ``main`` to completion on the chosen loop, with the short switch interval."""
    try:
        which = chosen_loop(kind)
    except RuntimeError:
        main.close()
        raise
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    log.debug("event loop: %s", which)
    if which == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
