"""An agent written with the voicehub Python SDK: it answers the calls handed to it.

Run it next to a server (``make run``), with an identity allowed to take calls:

    .venv/bin/python examples/agents/echo_agent.py --url ws://127.0.0.1:8765/v1/ws \\
        --token "$(cat voicehub-data/owner.token)"

then start the server with ``--agent none`` and hand calls to this agent's identity (the
consent flow does it: ``flow_start(call_id, agent=<identity>)``), or, for a quick try as the
owner, pass ``--all-calls`` to act on every call. For each call it subscribes to the
caller's final transcript segments and answers with ``say``; "transfer" or "agent" asks
for a person (``transfer``), "goodbye" ends the call (``hangup``). Each action carries a
request id derived from the segment it answers, so restarting the agent never repeats one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

from voicehub.client import Client, ServerError

BYE = re.compile(r"\b(good ?bye|bye|hang up)\b", re.I)
PERSON = re.compile(r"\b(agent|human|person|transfer)\b", re.I)


class EchoAgent:
    def __init__(self, client: Client, transfer_to: str) -> None:
        self.client = client
        self.transfer_to = transfer_to
        self.calls: set[int] = set()

    async def watch_calls(self, all_calls: bool) -> None:
        if all_calls:
            sql = "SELECT id AS call_id FROM calls WHERE status = 'in_progress'"
            params = None
        else:
            sql = "SELECT call_id, agent FROM agent_assignments WHERE agent = $1 AND active"
            params = [self.client.identity]
        await self.client.subscribe(
            sql, params, as_dict=True, on_insert=lambda r: self.spawn(self.attach(r["call_id"]))
        )

    def spawn(self, coro: Any) -> None:
        asyncio.get_running_loop().create_task(coro)

    async def attach(self, call_id: int) -> None:
        if call_id in self.calls:
            return
        self.calls.add(call_id)
        print(f"taking call {call_id}")
        sub = await self.client.subscribe(
            "SELECT id, segment_key, speaker, text, is_final FROM transcript_segments"
            " WHERE call_id = $1",
            [call_id],
            as_dict=True,
        )
        # only what is said from now on; a partial becomes final by an update
        sub.on_insert(lambda row: self.on_segment(call_id, row))
        sub.on_update(lambda _old, row: self.on_segment(call_id, row))

    def on_segment(self, call_id: int, row: dict[str, Any]) -> None:
        if row["is_final"] and row["speaker"] in ("caller", "callee"):
            self.spawn(self.answer(call_id, row["segment_key"], row["text"]))

    async def answer(self, call_id: int, segment: str, text: str) -> None:
        rid = f"echo:{call_id}:{segment}"
        print(f"  call {call_id} caller: {text}")
        try:
            if BYE.search(text):
                await self.client.call(
                    "say", {"call_id": call_id, "text": "Goodbye!"}, request_id=rid + ":say"
                )
                await asyncio.sleep(2)  # let it play
                await self.client.call("hangup", {"call_id": call_id}, request_id=rid + ":bye")
            elif PERSON.search(text) and self.transfer_to:
                await self.client.call(
                    "transfer",
                    {"call_id": call_id, "target": self.transfer_to},
                    request_id=rid + ":transfer",
                )
            else:
                reply = f"I heard: {text.rstrip('.!?')}."
                await self.client.call(
                    "say", {"call_id": call_id, "text": reply}, request_id=rid + ":say"
                )
        except ServerError as e:
            print(f"  call {call_id}: {e.code}: {e.message}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", default="ws://127.0.0.1:8765/v1/ws")
    p.add_argument("--token", required=True, help="a bearer token of the agent's identity")
    p.add_argument("--transfer-to", default="", help="a number for callers who ask for a person")
    p.add_argument("--all-calls", action="store_true", help="act on every call (owner only)")
    args = p.parse_args()
    async with Client(args.url, auth_token=args.token, as_dict=True) as client:
        agent = EchoAgent(client, args.transfer_to)
        await agent.watch_calls(args.all_calls)
        print(f"echo agent {client.identity} waiting for calls (Ctrl-C to stop)")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
