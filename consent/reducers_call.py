"""Call lifecycle reducers: started, answered, ended, provider events, participants, agents.

Meant for providers and media workers, which run as system identities (RLS bypassed);
every table written here refuses writes from agent identities.

Invariants kept here:

* ``call_started`` is idempotent by (provider, provider_call_id) and ``provider_event`` by
  (provider, provider_event_id): a replay returns the first result and changes no voice
  table (its audit entry records ``outcome = duplicate``);
* the call status moves only along ``CALL_TRANSITIONS``; ``no_answer``/``busy`` end only a
  call that was never answered; ending a call stops its live recording, interrupts its
  pending speech and ends its flow in the same commit, and nothing but recording
  finalization, command results, unassignment and (logged, not applied) provider events is
  accepted afterwards;
* a participant joining or leaving re-evaluates the call's consent in the same commit
  (``guard.reconcile``): a newly unsatisfied active recording is paused ``consent_pending``.
"""

from __future__ import annotations

from typing import Any

from consent import guard
from consent.common import get_call, get_participant, open_call, present_participants
from consent.policy import PARTICIPANT_ROLES
from consent.states import (
    CALL_TRANSITIONS,
    END_REASONS,
    FLOW_TRANSITIONS,
    PENDING_UTTERANCE,
    UNANSWERED_ONLY_REASONS,
    allowed,
    require_member,
    require_transition,
)
from core.errors import ReducerError
from core.transaction import ReducerContext
from core.types import Identity

DIRECTIONS = frozenset({"inbound", "outbound"})

EVENT_EFFECTS: dict[str, tuple[str, str | None]] = {
    "answered": ("in_progress", None),
    "in_progress": ("in_progress", None),
    "completed": ("ended", "completed"),
    "busy": ("ended", "busy"),
    "no_answer": ("ended", "no_answer"),
    "failed": ("ended", "failed"),
    "canceled": ("ended", "canceled"),
}
"""Provider callback kinds (normalized: lower case, '-' -> '_') that move the call status."""


def _participant_ids(ctx: ReducerContext, call_id: int) -> dict[str, int]:
    """role -> id of the first participant in that role (present or not)."""
    out: dict[str, int] = {}
    for p in sorted(ctx.db.participants.find("by_call", call_id), key=lambda p: p.id):
        out.setdefault(p.role, p.id)
    return out


def _refresh_jurisdiction(ctx: ReducerContext, call: Any) -> Any:
    j = guard.strictest_jurisdiction(ctx, call.id)
    return ctx.db.calls.update(call, jurisdiction=j) if j != call.jurisdiction else call


def call_started(
    ctx: ReducerContext,
    provider: str,
    provider_call_id: str,
    direction: str,
    from_number: str,
    to_number: str,
    from_jurisdiction: str = "",
    to_jurisdiction: str = "",
) -> dict[str, Any]:
    """A new call (status ringing) with its external party and the AI as participants."""
    existing = ctx.db.calls.find_one("provider_provider_call_id_unique", provider, provider_call_id)
    if existing is not None:
        return {
            "call_id": existing.id,
            "participants": _participant_ids(ctx, existing.id),
            "jurisdiction": existing.jurisdiction,
            "duplicate": True,
        }
    require_member(direction, DIRECTIONS, "direction")
    if not provider or not provider_call_id:
        raise ReducerError("call_started needs a provider and a provider_call_id")
    call = ctx.db.calls.insert(
        provider=provider,
        provider_call_id=provider_call_id,
        direction=direction,
        from_number=from_number,
        to_number=to_number,
        jurisdiction="",
        status="ringing",
        started_at=ctx.timestamp,
    )
    inbound = direction == "inbound"
    ctx.db.participants.insert(
        call_id=call.id,
        role="caller" if inbound else "callee",
        identity=from_number if inbound else to_number,
        jurisdiction=(from_jurisdiction if inbound else to_jurisdiction).upper(),
        joined_at=ctx.timestamp,
    )
    ctx.db.participants.insert(
        call_id=call.id,
        role="ai",
        identity=to_number if inbound else from_number,
        jurisdiction=(to_jurisdiction if inbound else from_jurisdiction).upper(),
        joined_at=ctx.timestamp,
    )
    call = _refresh_jurisdiction(ctx, call)
    return {
        "call_id": call.id,
        "participants": _participant_ids(ctx, call.id),
        "jurisdiction": call.jurisdiction,
        "duplicate": False,
    }


def _answer(ctx: ReducerContext, call: Any) -> Any:
    require_transition("call", f"call {call.id}", call.status, "in_progress")
    return ctx.db.calls.update(call, status="in_progress", answered_at=ctx.timestamp)


def call_answered(ctx: ReducerContext, call_id: int) -> dict[str, Any]:
    call = _answer(ctx, get_call(ctx, call_id))
    return {"call_id": call.id, "status": call.status}


def end_call(ctx: ReducerContext, call: Any, reason: str) -> dict[str, Any]:
    """ringing/in_progress -> ended, with everything that must end with it (same commit)."""
    require_member(reason, END_REASONS, "end reason")
    require_transition("call", f"call {call.id}", call.status, "ended")
    if reason in UNANSWERED_ONLY_REASONS and call.answered_at is not None:
        raise ReducerError(f"call {call.id} was answered: it cannot end with {reason!r}")
    ctx.db.calls.update(call, status="ended", ended_at=ctx.timestamp, end_reason=reason)
    stopped = guard.stop_live(ctx, call.id, "call_ended")
    interrupted = []
    for u in ctx.db.utterances.find("by_call", call.id):
        if u.status in PENDING_UTTERANCE:
            ctx.db.utterances.update(u, status="interrupted", ended_at=ctx.timestamp)
            interrupted.append(u.id)
    for p in present_participants(ctx, call.id):
        ctx.db.participants.update(p, left_at=ctx.timestamp)
    flow = ctx.db.call_flows.get(call.id)
    if flow is not None and allowed(FLOW_TRANSITIONS, flow.state, "ended"):
        ctx.db.call_flows.update(flow, state="ended", updated_at=ctx.timestamp)
    return {
        "call_id": call.id,
        "status": "ended",
        "end_reason": reason,
        "recording_stopped": stopped,
        "utterances_interrupted": sorted(interrupted),
    }


def call_ended(ctx: ReducerContext, call_id: int, reason: str = "completed") -> dict[str, Any]:
    return end_call(ctx, get_call(ctx, call_id), reason)


def provider_event(
    ctx: ReducerContext,
    provider: str,
    provider_event_id: str,
    provider_call_id: str,
    kind: str,
    payload: dict | None = None,
) -> dict[str, Any]:
    """Log a provider callback once; apply the status change it implies when allowed."""
    seen = ctx.db.call_events.find_one(
        "provider_provider_event_id_unique", provider, provider_event_id
    )
    if seen is not None:
        return {
            "event_id": seen.id,
            "call_id": seen.call_id,
            "applied": seen.applied,
            "duplicate": True,
        }
    if not provider or not provider_event_id:
        raise ReducerError("provider_event needs a provider and a provider_event_id")
    norm = kind.strip().lower().replace("-", "_")
    call = ctx.db.calls.find_one("provider_provider_call_id_unique", provider, provider_call_id)
    applied = False
    note = "logged"
    effect = EVENT_EFFECTS.get(norm)
    if call is None:
        note = "no call with this provider_call_id (logged only)"
    elif effect is not None:
        target, reason = effect
        if not allowed(CALL_TRANSITIONS, call.status, target):
            note = f"ignored: call is {call.status}, cannot become {target}"
        elif reason in UNANSWERED_ONLY_REASONS and call.answered_at is not None:
            note = f"ignored: an answered call cannot end with {reason}"
        elif target == "in_progress":
            _answer(ctx, call)
            applied, note = True, "call answered"
        else:
            assert reason is not None
            end_call(ctx, call, reason)
            applied, note = True, f"call ended ({reason})"
    ev = ctx.db.call_events.insert(
        provider=provider,
        provider_event_id=provider_event_id,
        provider_call_id=provider_call_id,
        call_id=call.id if call is not None else None,
        kind=norm,
        payload=payload,
        received_at=ctx.timestamp,
        applied=applied,
        note=note,
    )
    return {
        "event_id": ev.id,
        "call_id": ev.call_id,
        "applied": applied,
        "note": note,
        "duplicate": False,
    }


def participant_join(
    ctx: ReducerContext, call_id: int, role: str, identity: str, jurisdiction: str = ""
) -> dict[str, Any]:
    """A party joins (conference, transfer target, a human agent on the audio)."""
    call = open_call(ctx, call_id, "participant_join")
    require_member(role, PARTICIPANT_ROLES, "role")
    p = ctx.db.participants.insert(
        call_id=call.id,
        role=role,
        identity=identity,
        jurisdiction=jurisdiction.upper(),
        joined_at=ctx.timestamp,
    )
    call = _refresh_jurisdiction(ctx, call)
    change = guard.reconcile(ctx, call.id)
    return {"participant_id": p.id, "jurisdiction": call.jurisdiction, "recording": change}


def participant_leave(ctx: ReducerContext, call_id: int, participant_id: int) -> dict[str, Any]:
    call = open_call(ctx, call_id, "participant_leave")
    p = get_participant(ctx, call.id, participant_id)
    ctx.db.participants.update(p, left_at=ctx.timestamp)
    call = _refresh_jurisdiction(ctx, call)
    change = guard.reconcile(ctx, call.id)
    return {"participant_id": p.id, "jurisdiction": call.jurisdiction, "recording": change}


def assign(ctx: ReducerContext, call_id: int, agent: str) -> dict[str, Any]:
    row = ctx.db.agent_assignments.get(call_id, agent)
    if row is not None and row.active:
        return {"call_id": call_id, "agent": agent, "active": True, "duplicate": True}
    if row is None:
        ctx.db.agent_assignments.insert(
            call_id=call_id,
            agent=agent,
            active=True,
            assigned_at=ctx.timestamp,
            assigned_by=ctx.sender,
        )
    else:
        ctx.db.agent_assignments.update(
            row, active=True, assigned_at=ctx.timestamp, assigned_by=ctx.sender, unassigned_at=None
        )
    return {"call_id": call_id, "agent": agent, "active": True, "duplicate": False}


def assign_agent(ctx: ReducerContext, call_id: int, agent: Identity) -> dict[str, Any]:
    """Give an agent identity access to a call (and hand a waiting flow over to it)."""
    call = open_call(ctx, call_id, "assign_agent")
    out = assign(ctx, call.id, agent)
    flow = ctx.db.call_flows.get(call.id)
    if flow is not None and flow.state in ("recording", "not_recording"):
        ctx.db.call_flows.update(flow, state="handed_off", agent=agent, updated_at=ctx.timestamp)
        out["flow"] = "handed_off"
    return out


def unassign_agent(ctx: ReducerContext, call_id: int, agent: Identity) -> dict[str, Any]:
    """Withdraw access (also after the call ended: it only narrows who sees the call)."""
    get_call(ctx, call_id)
    row = ctx.db.agent_assignments.get(call_id, agent)
    if row is None or not row.active:
        return {"call_id": call_id, "agent": agent, "active": False, "duplicate": True}
    ctx.db.agent_assignments.update(row, active=False, unassigned_at=ctx.timestamp)
    return {"call_id": call_id, "agent": agent, "active": False, "duplicate": False}


REDUCERS = (
    call_started,
    call_answered,
    call_ended,
    provider_event,
    participant_join,
    participant_leave,
    assign_agent,
    unassign_agent,
)
