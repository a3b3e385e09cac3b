"""The example agent (``examples/agents/echo_agent.py``, written with the SDK) against a
real server: it takes a call in progress, answers what the caller said with ``say`` (once
per segment, only what is said after it attached), and hangs up on "goodbye"."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

from auth_support import owner_token
from server_support import eventually, running

from core.sql.query import run_query
from voicehub.client import Client

AGENT = Path(__file__).resolve().parent.parent / "examples" / "agents" / "echo_agent.py"


def load_agent() -> Any:
    spec = importlib.util.spec_from_file_location("echo_agent", AGENT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def test_the_example_agent_answers_and_hangs_up(tmp_path: Path) -> None:
    echo = load_agent()
    async with (
        running(tmp_path / "d") as srv,
        Client(srv.ws_url, auth_token=owner_token(srv), as_dict=True) as client,
    ):
        db = srv.node.db
        started = await client.call(
            "call_started",
            {
                "provider": "test",
                "provider_call_id": "C1",
                "direction": "inbound",
                "from_number": "+1555",
                "to_number": "+1666",
            },
        )
        call_id = started["call_id"]
        await client.call("call_answered", {"call_id": call_id})
        await client.call(
            "ai_disclose",
            {"call_id": call_id, "prompt_version": "v1", "prompt_text": "You talk to an AI."},
        )

        async def seg(key: str, text: str) -> None:
            await client.call(
                "transcript_append",
                {"call_id": call_id, "segment_key": key, "speaker": "caller", "text": text,
                 "start_ms": 0, "end_ms": 1000, "is_final": True},
            )  # fmt: skip

        def said() -> list[str]:
            res = run_query(
                db, "SELECT text FROM utterances WHERE call_id = $1 ORDER BY id", [call_id]
            )
            return [r[0] for r in res.rows]

        await seg("s0", "said before the agent came")
        agent = echo.EchoAgent(client, transfer_to="")
        await agent.watch_calls(all_calls=True)
        await eventually(lambda: call_id in agent.calls)
        await asyncio.sleep(0.2)
        await seg("s1", "what are your opening hours")
        await eventually(lambda: "I heard: what are your opening hours." in said())
        await seg("s2", "goodbye")
        await eventually(lambda: "Goodbye!" in said())
        await eventually(lambda: bool(_commands(db, call_id)), timeout=10)
        assert [u for u in said() if "before the agent" in u] == []
        assert _commands(db, call_id) == [("hangup", "pending")]


def _commands(db: Any, call_id: int) -> list[tuple[Any, ...]]:
    res = run_query(db, "SELECT kind, status FROM call_commands WHERE call_id = $1", [call_id])
    return [tuple(r) for r in res.rows]
