"""Media-side reducers: transcript segments, agent speech, DTMF, and the provider outbox.

Transcripts, DTMF and utterance progress come from media workers (system identities);
``say``, ``interrupt``, ``hangup`` and ``transfer`` are what an agent calls on the calls
assigned to it (its secured handles make any other call "no such call"). Effects on the
provider (hang up, transfer, clear the audio buffer) are ``call_commands`` rows, executed
later by the provider adapters, which report back with ``command_result``.

Invariants kept here:

* during a PCI pause ``transcript_append`` and ``dtmf`` are *refused*: a refused reducer
  leaves nothing in the store, and a committed one would keep its arguments (the card
  digits) in the write-ahead log, so dropping the text inside a commit would not be enough;
* ``transcript_append`` is idempotent per (call, segment_key): a partial may be replaced by
  a newer partial or its final, a final never changes, a replay or a late partial changes
  nothing;
* ``say`` is refused until the call's AI disclosure is recorded, and while a recording is
  provisional (a recorded-notice policy waiting for the consent answer);
* commands are idempotent by key and move along ``COMMAND_TRANSITIONS``; a repeated final
  result is a no-op, so adapters may retry.
"""

from __future__ import annotations

from typing import Any

from consent import flow, guard
from consent.common import answered_call, get_call, open_call, queue_utterance, require_system
from consent.reducers_consent import announcement_played
from consent.states import COMMAND_KINDS, PENDING_UTTERANCE, require_member, require_transition
from core.errors import ReducerError
from core.transaction import ReducerContext


def _refuse_if_paused(ctx: ReducerContext, call_id: int, what: str) -> None:
    pause = ctx.db.transcription_pauses.get(call_id)
    if pause is not None:
        raise ReducerError(
            f"{what} refused: call {call_id} is in a {pause.reason} pause (nothing is stored"
            " until recording_resume)"
        )


# ---------------------------------------------------------------- transcripts and DTMF


def transcript_append(
    ctx: ReducerContext,
    call_id: int,
    segment_key: str,
    speaker: str,
    text: str,
    start_ms: int,
    end_ms: int,
    is_final: bool,
    engine: str = "",
) -> dict[str, Any]:
    call = answered_call(ctx, call_id, "transcript_append")
    _refuse_if_paused(ctx, call.id, "transcript_append")
    if not segment_key:
        raise ReducerError("transcript_append needs a segment_key")
    if end_ms < start_ms:
        raise ReducerError("a transcript segment cannot end before it starts")
    seg = ctx.db.transcript_segments.find_one("call_id_segment_key_unique", call.id, segment_key)
    fields = {
        "speaker": speaker,
        "text": text,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "is_final": is_final,
        "engine": engine,
    }
    if seg is not None:
        same = all(getattr(seg, k) == v for k, v in fields.items())
        if seg.is_final or same:
            if seg.is_final and is_final and not same:
                raise ReducerError(f"segment {segment_key!r} of call {call.id} is final already")
            return {"segment_id": seg.id, "duplicate": True}
        seg = ctx.db.transcript_segments.update(seg, updated_at=ctx.timestamp, **fields)
        replaced = True
    else:
        seg = ctx.db.transcript_segments.insert(
            call_id=call.id,
            segment_key=segment_key,
            created_at=ctx.timestamp,
            updated_at=ctx.timestamp,
            **fields,
        )
        replaced = False
    out: dict[str, Any] = {"segment_id": seg.id, "replaced": replaced, "duplicate": False}
    if is_final:
        answer = flow.on_final_segment(ctx, call, seg)
        if answer is not None:
            out["flow"] = answer
    return out


def dtmf(
    ctx: ReducerContext, call_id: int, digits: str, audio_offset_ms: int | None = None
) -> dict[str, Any]:
    call = answered_call(ctx, call_id, "dtmf")
    _refuse_if_paused(ctx, call.id, "dtmf")
    if not digits or any(c not in "0123456789*#ABCD" for c in digits):
        raise ReducerError(f"not DTMF digits: {digits!r}")
    ev = ctx.db.dtmf_events.insert(
        call_id=call.id, digits=digits, at=ctx.timestamp, audio_offset_ms=audio_offset_ms
    )
    out: dict[str, Any] = {"dtmf_id": ev.id}
    answer = flow.on_dtmf(ctx, call, digits, audio_offset_ms)
    if answer is not None:
        out["flow"] = answer
    return out


# ---------------------------------------------------------------- agent speech


def say(ctx: ReducerContext, call_id: int, text: str, interruptible: bool = True) -> dict[str, Any]:
    """Queue agent speech (the media side synthesizes and plays it)."""
    call = answered_call(ctx, call_id, "say")
    if not ctx.db.ai_disclosures.find("by_call", call.id):
        raise ReducerError(
            f"say refused: the AI disclosure of call {call.id} has not been recorded"
            " (call ai_disclose first)"
        )
    if guard.is_provisional(ctx, call.id):
        raise ReducerError(
            f"say refused: call {call.id} is waiting for the consent answer (the recording"
            " is provisional until the notice is answered)"
        )
    u = queue_utterance(ctx, call.id, text, interruptible=interruptible)
    return {"utterance_id": u.id}


def interrupt(ctx: ReducerContext, call_id: int) -> dict[str, Any]:
    """Barge-in: drop queued and playing interruptible speech, and clear the provider's
    audio buffer (a ``clear`` command)."""
    call = answered_call(ctx, call_id, "interrupt")
    stopped = []
    for u in sorted(ctx.db.utterances.find("by_call", call.id), key=lambda u: u.id):
        if u.status in PENDING_UTTERANCE and u.interruptible:
            require_transition("utterance", f"utterance {u.id}", u.status, "interrupted")
            ctx.db.utterances.update(u, status="interrupted", ended_at=ctx.timestamp)
            stopped.append(u.id)
    cmd = None
    if stopped:
        cmd = _command(ctx, call.id, "clear", {"utterances": stopped}, str(ctx.offset))
    return {"interrupted": stopped, "command_id": cmd["command_id"] if cmd else None}


def _utterance(ctx: ReducerContext, utterance_id: int, what: str) -> tuple[Any, Any]:
    u = ctx.db.utterances.get(utterance_id)
    if u is None:
        raise ReducerError(f"no such utterance: {utterance_id}")
    return u, open_call(ctx, u.call_id, what)


def mark_playing(ctx: ReducerContext, utterance_id: int) -> dict[str, Any]:
    require_system(ctx, "mark_playing")
    u, _ = _utterance(ctx, utterance_id, "mark_playing")
    require_transition("utterance", f"utterance {u.id}", u.status, "playing")
    ctx.db.utterances.update(u, status="playing", started_at=ctx.timestamp)
    return {"utterance_id": u.id, "status": "playing"}


def mark_played(
    ctx: ReducerContext, utterance_id: int, played_ms: int, interrupted: bool = False
) -> dict[str, Any]:
    """The media side finished (or was cut off while) playing an utterance."""
    require_system(ctx, "mark_played")
    u, _ = _utterance(ctx, utterance_id, "mark_played")
    new = "interrupted" if interrupted else "played"
    require_transition("utterance", f"utterance {u.id}", u.status, new)
    if played_ms < 0:
        raise ReducerError("played_ms cannot be negative")
    u = ctx.db.utterances.update(
        u,
        status=new,
        played_ms=played_ms,
        ended_at=ctx.timestamp,
        started_at=u.started_at if u.started_at is not None else ctx.timestamp,
    )
    out: dict[str, Any] = {"utterance_id": u.id, "status": new}
    if new == "played":
        made = announcement_played(ctx, u)
        if made is not None:
            out["announcement"] = made
    return out


# ---------------------------------------------------------------- outbox


def _command(
    ctx: ReducerContext, call_id: int, kind: str, args: dict[str, Any], key: str
) -> dict[str, Any]:
    require_member(kind, COMMAND_KINDS, "command kind")
    idem = f"{call_id}:{kind}:{key}"
    row = ctx.db.call_commands.find_one("idem_key_unique", idem)
    if row is not None:
        return {"command_id": row.id, "status": row.status, "duplicate": True}
    row = ctx.db.call_commands.insert(
        call_id=call_id,
        kind=kind,
        args=args,
        status="pending",
        idem_key=idem,
        requested_by=ctx.sender,
        created_at=ctx.timestamp,
        updated_at=ctx.timestamp,
    )
    return {"command_id": row.id, "status": "pending", "duplicate": False}


def _existing(ctx: ReducerContext, call_id: int, kind: str, key: str) -> dict[str, Any] | None:
    row = ctx.db.call_commands.find_one("idem_key_unique", f"{call_id}:{kind}:{key}")
    if row is None:
        return None
    return {"command_id": row.id, "status": row.status, "duplicate": True}


def hangup(ctx: ReducerContext, call_id: int, key: str = "") -> dict[str, Any]:
    """Ask the provider to hang up (one hangup per call unless another key is given)."""
    call = get_call(ctx, call_id)
    key = key or "hangup"
    dup = _existing(ctx, call.id, "hangup", key)
    if dup is not None:
        return dup
    open_call(ctx, call.id, "hangup")
    return _command(ctx, call.id, "hangup", {}, key)


def transfer(ctx: ReducerContext, call_id: int, target: str, key: str = "") -> dict[str, Any]:
    """Ask the provider to transfer the call to ``target`` (a number or SIP URI)."""
    call = get_call(ctx, call_id)
    if not target.strip():
        raise ReducerError("transfer needs a target")
    key = key or f"transfer:{target}"
    dup = _existing(ctx, call.id, "transfer", key)
    if dup is not None:
        return dup
    open_call(ctx, call.id, "transfer")
    return _command(ctx, call.id, "transfer", {"target": target}, key)


def command_result(
    ctx: ReducerContext,
    command_id: int,
    status: str,
    result: dict | None = None,
    error: str = "",
) -> dict[str, Any]:
    """An adapter reports a command's progress or outcome (idempotent; allowed after end)."""
    require_system(ctx, "command_result")
    row = ctx.db.call_commands.get(command_id)
    if row is None:
        raise ReducerError(f"no such command: {command_id}")
    if row.status == status and status in ("done", "failed"):
        return {"command_id": row.id, "status": status, "duplicate": True}
    require_transition("command", f"command {row.id}", row.status, status)
    ctx.db.call_commands.update(
        row, status=status, result=result, error=error or None, updated_at=ctx.timestamp
    )
    return {"command_id": row.id, "status": status, "duplicate": False}


REDUCERS = (
    transcript_append,
    dtmf,
    say,
    interrupt,
    mark_playing,
    mark_played,
    hangup,
    transfer,
    command_result,
)
