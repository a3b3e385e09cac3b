"""The consent guard: the only code that lets a recording become active.

It gathers a call's facts from the store (present participants, each one's latest
recording-consent decision, the notices made, the lawful basis, the consent policies of
their jurisdictions), asks the pure engine in ``consent.policy``, and changes recording
rows only along ``consent.states.RECORDING_TRANSITIONS``.

Invariants kept here, inside the caller's transaction (so they hold at every commit):

* ``activate`` is the single path to ``status = 'active'``; it refuses unless the engine
  allows it and no PCI pause is in force, and stores the engine's evidence on the row
  (``consent_basis``) so every activation is provable from the store;
* ``reconcile`` runs after every change of a call's facts: an active recording that is no
  longer allowed is paused (``consent_pending``) in that same commit, a deferred
  (``pending``) one is activated once it is allowed, one paused for ``consent_pending``
  resumes once it is allowed again, and the provisional flag follows the engine;
* ``stop_live`` is how a decline, a revocation or the end of a call stops recording in
  the same commit.
"""

from __future__ import annotations

from typing import Any

from consent.common import present_participants, transcription_pause
from consent.policy import (
    CallFacts,
    Notice,
    Party,
    Policy,
    Requirement,
    Verdict,
    candidate_codes,
    evaluate,
    policy_from_row,
    requirement_for,
)
from consent.states import LIVE_RECORDING, require_transition
from core.errors import ReducerError
from core.transaction import ReducerContext


def latest_consent(ctx: ReducerContext, participant_id: int, kind: str) -> Any:
    rows = ctx.db.consent_records.find("by_party_kind", participant_id, kind)
    return max(rows, key=lambda r: r.id) if rows else None


def policies_for(ctx: ReducerContext, jurisdictions: list[str]) -> dict[str, Policy]:
    out: dict[str, Policy] = {}
    for j in jurisdictions:
        for code in candidate_codes(j):
            if code not in out:
                row = ctx.db.consent_policies.get(code)
                if row is not None:
                    out[code] = policy_from_row(row)
    return out


def call_facts(ctx: ReducerContext, call_id: int) -> CallFacts:
    parties = []
    for p in present_participants(ctx, call_id):
        c = latest_consent(ctx, p.id, "recording")
        parties.append(
            Party(
                participant_id=p.id,
                role=p.role,
                jurisdiction=p.jurisdiction,
                joined_at=p.joined_at,
                decision=c.decision if c is not None else None,
                consent_id=c.id if c is not None else None,
            )
        )
    notices = tuple(
        Notice(a.id, a.made_at, a.recording_id is not None)
        for a in sorted(ctx.db.announcements.find("by_call", call_id), key=lambda a: a.id)
        if a.kind == "recording" and a.made_at is not None
    )
    lb = ctx.db.lawful_bases.get(call_id)
    return CallFacts(tuple(parties), notices, lb.basis if lb is not None else None)


def assess(ctx: ReducerContext, call_id: int) -> tuple[Requirement, Verdict]:
    facts = call_facts(ctx, call_id)
    pols = policies_for(ctx, [p.jurisdiction for p in facts.parties])
    req = requirement_for(facts, pols)
    return req, evaluate(req, facts)


def strictest_jurisdiction(ctx: ReducerContext, call_id: int) -> str:
    facts = call_facts(ctx, call_id)
    pols = policies_for(ctx, [p.jurisdiction for p in facts.parties])
    return requirement_for(facts, pols).strictest


def live_recording(ctx: ReducerContext, call_id: int) -> Any:
    live = [r for r in ctx.db.recordings.find("by_call", call_id) if r.status in LIVE_RECORDING]
    return max(live, key=lambda r: r.id) if live else None


def move(ctx: ReducerContext, rec: Any, new: str, **changes: Any) -> Any:
    require_transition("recording", f"recording {rec.id}", rec.status, new)
    return ctx.db.recordings.update(rec, status=new, **changes)


def refusal(call_id: int, verdict: Verdict) -> ReducerError:
    return ReducerError(
        f"call {call_id}: recording may not become active: {verdict.message() or 'not allowed'}"
    )


def activate(ctx: ReducerContext, rec: Any) -> Any:
    """pending/paused -> active, only if the engine allows it now (else ReducerError)."""
    pause = transcription_pause(ctx, rec.call_id)
    if pause is not None:
        raise ReducerError(
            f"call {rec.call_id}: recording may not become active during a {pause.reason}"
            " pause: call recording_resume"
        )
    _, verdict = assess(ctx, rec.call_id)
    if not verdict.allowed:
        raise refusal(rec.call_id, verdict)
    resumed = rec.status == "paused"
    return move(
        ctx,
        rec,
        "active",
        provisional=verdict.provisional,
        consent_basis=verdict.basis,
        pause_reason=None,
        started_at=rec.started_at if rec.started_at is not None else ctx.timestamp,
        resumed_at=ctx.timestamp if resumed else rec.resumed_at,
    )


def create_recording(ctx: ReducerContext, call_id: int) -> Any:
    return ctx.db.recordings.insert(
        call_id=call_id, status="pending", provisional=False, created_at=ctx.timestamp
    )


def pause(ctx: ReducerContext, rec: Any, reason: str) -> Any:
    return move(ctx, rec, "paused", pause_reason=reason, paused_at=ctx.timestamp)


def stop(ctx: ReducerContext, rec: Any, reason: str) -> Any:
    return move(ctx, rec, "stopped", stop_reason=reason, stopped_at=ctx.timestamp)


def stop_live(ctx: ReducerContext, call_id: int, reason: str) -> int | None:
    rec = live_recording(ctx, call_id)
    if rec is None:
        return None
    stop(ctx, rec, reason)
    return int(rec.id)


def reconcile(ctx: ReducerContext, call_id: int) -> dict[str, Any] | None:
    """Bring the call's live recording in line with its facts (see the module docstring)."""
    rec = live_recording(ctx, call_id)
    if rec is None:
        return None
    _, verdict = assess(ctx, call_id)
    blocked = transcription_pause(ctx, call_id) is not None
    if rec.status == "active":
        if not verdict.allowed:
            pause(ctx, rec, "consent_pending")
            return {"recording_id": rec.id, "status": "paused", "reason": verdict.message()}
        if rec.provisional != verdict.provisional:
            ctx.db.recordings.update(
                rec, provisional=verdict.provisional, consent_basis=verdict.basis
            )
            return {"recording_id": rec.id, "status": "active", "provisional": verdict.provisional}
        return None
    resumable = rec.status == "pending" or rec.pause_reason == "consent_pending"
    if resumable and verdict.allowed and not blocked:
        activate(ctx, rec)
        return {"recording_id": rec.id, "status": "active", "provisional": verdict.provisional}
    return None


def is_provisional(ctx: ReducerContext, call_id: int) -> bool:
    rec = live_recording(ctx, call_id)
    return rec is not None and rec.status == "active" and bool(rec.provisional)
