"""The server's event loop choice (``--event-loop``)."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from voicehub.config import resolve
from voicehub.server import loop as server_loop


def test_auto_prefers_uvloop_when_installed() -> None:
    assert server_loop.uvloop_available()  # a dependency on Linux
    assert server_loop.chosen_loop("auto") == "uvloop"
    assert server_loop.chosen_loop("uvloop") == "uvloop"
    assert server_loop.chosen_loop("asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_loop, "uvloop_available", lambda: False)
    assert server_loop.chosen_loop("auto") == "asyncio"
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        server_loop.chosen_loop("uvloop")

    async def never() -> int:
        return 1

    coro = never()
    with pytest.raises(RuntimeError):
        server_loop.run_server_loop(coro, "uvloop")
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # no "never awaited" warning


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_run_server_loop_runs_on_the_chosen_loop(kind: str) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = server_loop.run_server_loop(which(), kind)
    assert module.startswith("uvloop") == (kind == "uvloop")


def test_event_loop_setting_is_validated() -> None:
    assert resolve({}, env={}).event_loop == "auto"
    assert resolve({"event_loop": "asyncio"}, env={}).event_loop == "asyncio"
    assert resolve({}, env={"VOICEHUB_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    with pytest.raises(ValueError, match="event_loop must be"):
        resolve({"event_loop": "trio"}, env={})
