"""Small helpers every voice reducer uses: finding a call, the lifecycle gates, hashing, queues.

Invariant kept here: a reducer reaches a call only through ``get_call`` (so an agent's
secured handle turns somebody else's call into "no such call", exactly like a missing one)
and checks the lifecycle gate that applies to it: ``require_open`` (anything but an ended
call) or ``require_answered`` (the call is in progress: nothing is said, recorded or
transcribed before the call is answered or after it ended). ``require_system`` keeps the
reports of media workers and provider adapters away from agent identities.
"""

from __future__ import annotations

import hashlib
from typing import Any

from core.errors import ReducerError
from core.rls import SecuredHandle
from core.transaction import ReducerContext


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def require_system(ctx: ReducerContext, what: str) -> None:
    """Refuse callers subject to row-level security (agents): media and provider reports
    (utterance progress, recording files, command results) come from system identities."""
    if isinstance(ctx.db.calls, SecuredHandle):
        raise ReducerError(f"{what} is reserved for system identities (providers, media)")


def get_call(ctx: ReducerContext, call_id: int) -> Any:
    call = ctx.db.calls.get(call_id)
    if call is None:
        raise ReducerError(f"no such call: {call_id}")
    return call


def require_open(call: Any, what: str) -> Any:
    if call.status == "ended":
        raise ReducerError(f"{what}: call {call.id} has ended")
    return call


def require_answered(call: Any, what: str) -> Any:
    require_open(call, what)
    if call.status != "in_progress":
        raise ReducerError(f"{what}: call {call.id} has not been answered yet")
    return call


def open_call(ctx: ReducerContext, call_id: int, what: str) -> Any:
    return require_open(get_call(ctx, call_id), what)


def answered_call(ctx: ReducerContext, call_id: int, what: str) -> Any:
    return require_answered(get_call(ctx, call_id), what)


def present_participants(ctx: ReducerContext, call_id: int) -> list[Any]:
    rows = [p for p in ctx.db.participants.find("by_call", call_id) if p.left_at is None]
    return sorted(rows, key=lambda p: p.id)


def get_participant(ctx: ReducerContext, call_id: int, participant_id: int) -> Any:
    p = ctx.db.participants.get(participant_id)
    if p is None or p.call_id != call_id:
        raise ReducerError(f"call {call_id} has no participant {participant_id}")
    if p.left_at is not None:
        raise ReducerError(f"participant {participant_id} has left call {call_id}")
    return p


def queue_utterance(
    ctx: ReducerContext,
    call_id: int,
    text: str,
    *,
    kind: str = "speech",
    interruptible: bool = True,
    prompt_version: str | None = None,
) -> Any:
    if not text.strip():
        raise ReducerError("an utterance needs some text")
    return ctx.db.utterances.insert(
        call_id=call_id,
        text=text,
        kind=kind,
        status="queued",
        interruptible=interruptible,
        requested_by=ctx.sender,
        queued_at=ctx.timestamp,
        prompt_version=prompt_version,
    )


def transcription_pause(ctx: ReducerContext, call_id: int) -> Any:
    return ctx.db.transcription_pauses.get(call_id)
