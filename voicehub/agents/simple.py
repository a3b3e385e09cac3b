"""The built-in example agent: answers every call handed to it, so a fresh ``make run``
does something useful with a call.

It is a client like any agent (``ClientAPI``: in-process here, over a WebSocket in
``examples/agents/``): it subscribes to its active assignments, and for each assigned call
to the call's final transcript segments of the external party. On each final it replies
with ``say``; "goodbye" ends the call (``hangup`` once the goodbye has played), "agent" /
"human" / "transfer" asks for a person (``transfer`` to the configured number, if any).
Every action it takes carries a request id derived from the segment it answers, so a
restart of the agent never answers the same words twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from voicehub.client.api import ClientAPI
from voicehub.client.cache import Subscription
from voicehub.client.errors import ServerError

log = logging.getLogger("voicehub.agent")

_BYE = re.compile(r"\b(good ?bye|bye|hang up|that's all|that is all)\b", re.I)
_PERSON = re.compile(r"\b(agent|human|person|operator|representative|transfer)\b", re.I)
EXTERNAL = ("caller", "callee")


def reply_to(text: str, can_transfer: bool) -> tuple[str, str | None]:
    """(what to say, then which action: None, "hangup" or "transfer") for one final."""
    words = text.strip()
    if not words:
        return "", None
    if _BYE.search(words):
        return "Thank you for calling. Goodbye.", "hangup"
    if _PERSON.search(words):
        if can_transfer:
            return "Connecting you to a person now.", "transfer"
        return "There is no one else available right now, but I am here to help.", None
    return f"You said: {words.rstrip('.!?')}. What else can I do for you?", None


class SimpleAgent:
    def __init__(
        self, client: ClientAPI, identity: str, transfer_to: str = "", name: str = "agent"
    ) -> None:
        self.client = client
        self.identity = identity
        self.transfer_to = transfer_to
        self.name = name
        self.calls: dict[int, Subscription] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._answered: set[tuple[int, str]] = set()
        self.replies = 0

    async def start(self) -> None:
        await self.client.subscribe(
            "SELECT call_id, agent, active FROM agent_assignments WHERE agent = $1 AND active",
            [self.identity],
            key=["call_id", "agent"],
            as_dict=True,
            on_insert=lambda row: self._spawn(self._attach(int(row["call_id"]))),
            on_delete=lambda row: self._spawn(self._detach(int(row["call_id"]))),
        )

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _attach(self, call_id: int) -> None:
        if call_id in self.calls:
            return
        log.info("%s: handling call %d", self.name, call_id)
        sub = await self.client.subscribe(
            "SELECT id, segment_key, speaker, text, is_final FROM transcript_segments"
            " WHERE call_id = $1",
            [call_id],
            key=["id"],
            as_dict=True,
        )
        # registered after the initial rows: what was said before the hand-off (the
        # consent answer) is not the agent's to answer; a partial becomes final by update
        sub.on_insert(lambda row: self._on_segment(call_id, row))
        sub.on_update(lambda _old, row: self._on_segment(call_id, row))
        self.calls[call_id] = sub

    async def _detach(self, call_id: int) -> None:
        sub = self.calls.pop(call_id, None)
        if sub is not None:
            with contextlib.suppress(ServerError):
                await sub.unsubscribe()

    def _on_segment(self, call_id: int, row: dict[str, Any]) -> None:
        if not row["is_final"] or row["speaker"] not in EXTERNAL:
            return
        key = (call_id, str(row["segment_key"]))
        if key in self._answered:
            return
        self._answered.add(key)
        self._spawn(self._answer(call_id, str(row["segment_key"]), str(row["text"])))

    async def _answer(self, call_id: int, segment: str, text: str) -> None:
        say, action = reply_to(text, bool(self.transfer_to))
        if not say:
            return
        rid = f"{self.name}:{call_id}:{segment}"
        try:
            out = await self.client.call(
                "say", {"call_id": call_id, "text": say}, request_id=f"{rid}:say"
            )
            self.replies += 1
            if action == "hangup":
                await self._after_played(call_id, int(out["utterance_id"]))
                await self.client.call("hangup", {"call_id": call_id}, request_id=f"{rid}:hangup")
            elif action == "transfer":
                await self._after_played(call_id, int(out["utterance_id"]))
                await self.client.call(
                    "transfer",
                    {"call_id": call_id, "target": self.transfer_to},
                    request_id=f"{rid}:transfer",
                )
        except ServerError as e:  # e.g. the call ended meanwhile
            log.info("%s: call %d: %s", self.name, call_id, e)

    async def _after_played(self, call_id: int, utterance_id: int, timeout: float = 30) -> None:
        """Wait until the utterance finished playing (or was interrupted, or timed out)."""
        sub = await self.client.subscribe(
            "SELECT id, status FROM utterances WHERE id = $1", [utterance_id], as_dict=True
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                rows = sub.rows
                if rows and rows[0]["status"] in ("played", "interrupted"):
                    return
                await asyncio.sleep(0.05)
        finally:
            with contextlib.suppress(ServerError):
                await sub.unsubscribe()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
