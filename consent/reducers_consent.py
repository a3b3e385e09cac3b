"""Consent, notice, AI disclosure, lawful basis and recording-control reducers.

The evidence side (announcements, consent records, disclosures, lawful bases, policies) is
written by system identities only; recording control is also open to the agents assigned to
a call (an AI agent knows when payment capture starts), because every path to an active
recording goes through ``guard.activate`` whoever calls it.

Invariants kept here (all inside one transaction; a refusal rolls everything back):

* a recording becomes active (``recording_start``, ``recording_resume``, or a deferred one
  in the commit that completes its consent) only when the engine allows it;
* ``consent_decline``/``consent_revoke`` of recording consent stop the call's live
  recording in the same commit (stop, not pause: a new grant needs a new recording, so each
  recording row has one consent basis);
* a ``pci`` pause pauses the recording *and* the call's transcription (and DTMF capture)
  until ``recording_resume``; no recording may become active while it lasts;
* consent decisions per (participant, kind) follow ``CONSENT_TRANSITIONS``;
* changing a call's lawful basis is refused when it would leave an active recording
  without one the engine accepts.
"""

from __future__ import annotations

from typing import Any

from consent import guard
from consent.common import (
    answered_call,
    get_participant,
    open_call,
    queue_utterance,
    require_system,
    sha256_text,
    transcription_pause,
)
from consent.policy import LAWFUL_BASES, MODES
from consent.states import CONSENT_KINDS, CONSENT_METHODS, require_member, require_transition
from core.errors import ReducerError
from core.transaction import ReducerContext
from core.types import Identity

PCI = "pci"


def _prompt(prompt_version: str, prompt_text: str, what: str) -> str:
    if not prompt_version.strip() or not prompt_text.strip():
        raise ReducerError(f"{what} needs the prompt's version and its exact text")
    return sha256_text(prompt_text)


def _active_recording_id(ctx: ReducerContext, call_id: int) -> int | None:
    rec = guard.live_recording(ctx, call_id)
    return int(rec.id) if rec is not None and rec.status == "active" else None


# ---------------------------------------------------------------- notices and disclosures


def do_announce(
    ctx: ReducerContext,
    call: Any,
    prompt_version: str,
    prompt_text: str,
    *,
    kind: str = "recording",
    speak: bool = False,
    audio_offset_ms: int | None = None,
) -> dict[str, Any]:
    """A notice; made now (played by the provider) or, with ``speak``, when its utterance
    is marked played (queued as a non-interruptible prompt)."""
    digest = _prompt(prompt_version, prompt_text, "consent_announce")
    utt = None
    if speak:
        utt = queue_utterance(
            ctx,
            call.id,
            prompt_text,
            kind="prompt",
            interruptible=False,
            prompt_version=prompt_version,
        )
    a = ctx.db.announcements.insert(
        call_id=call.id,
        kind=kind,
        prompt_version=prompt_version,
        prompt_hash=digest,
        text=prompt_text,
        queued_at=ctx.timestamp,
        made_at=None if speak else ctx.timestamp,
        recording_id=None if speak else _active_recording_id(ctx, call.id),
        utterance_id=utt.id if utt is not None else None,
        audio_offset_ms=audio_offset_ms,
    )
    change = None if speak else guard.reconcile(ctx, call.id)
    return {
        "announcement_id": a.id,
        "utterance_id": a.utterance_id,
        "made": a.made_at is not None,
        "recorded": a.recording_id is not None,
        "recording": change,
    }


def announcement_played(ctx: ReducerContext, utterance: Any) -> dict[str, Any] | None:
    """Called when an utterance is played: the notices it carried are made now."""
    made = None
    for a in ctx.db.announcements.find("by_utterance", utterance.id):
        if a.made_at is None:
            rid = _active_recording_id(ctx, a.call_id)
            ctx.db.announcements.update(a, made_at=ctx.timestamp, recording_id=rid)
            made = {"announcement_id": a.id, "recorded": rid is not None}
    if made is not None:
        made["recording"] = guard.reconcile(ctx, utterance.call_id)
    return made


def consent_announce(
    ctx: ReducerContext,
    call_id: int,
    prompt_version: str,
    prompt_text: str,
    kind: str = "recording",
    speak: bool = False,
    audio_offset_ms: int | None = None,
) -> dict[str, Any]:
    call = answered_call(ctx, call_id, "consent_announce")
    require_member(kind, frozenset({"recording"}), "announcement kind")
    return do_announce(
        ctx,
        call,
        prompt_version,
        prompt_text,
        kind=kind,
        speak=speak,
        audio_offset_ms=audio_offset_ms,
    )


def do_disclose(
    ctx: ReducerContext, call: Any, prompt_version: str, prompt_text: str, speak: bool = True
) -> dict[str, Any]:
    digest = _prompt(prompt_version, prompt_text, "ai_disclose")
    d = ctx.db.ai_disclosures.insert(
        call_id=call.id,
        prompt_version=prompt_version,
        prompt_hash=digest,
        text=prompt_text,
        at=ctx.timestamp,
    )
    utt = None
    if speak:
        utt = queue_utterance(
            ctx,
            call.id,
            prompt_text,
            kind="disclosure",
            interruptible=False,
            prompt_version=prompt_version,
        )
        d = ctx.db.ai_disclosures.update(d, utterance_id=utt.id)
    return {"disclosure_id": d.id, "utterance_id": d.utterance_id}


def ai_disclose(
    ctx: ReducerContext, call_id: int, prompt_version: str, prompt_text: str, speak: bool = True
) -> dict[str, Any]:
    """Record that the parties are told they talk to an AI (queued as the first speech)."""
    call = answered_call(ctx, call_id, "ai_disclose")
    return do_disclose(ctx, call, prompt_version, prompt_text, speak)


# ---------------------------------------------------------------- consent decisions


def do_consent(
    ctx: ReducerContext,
    call: Any,
    participant_id: int,
    decision: str,
    *,
    kind: str,
    method: str,
    evidence: str,
    prompt_version: str,
    prompt_text: str,
    audio_offset_ms: int | None,
) -> dict[str, Any]:
    require_member(kind, CONSENT_KINDS, "consent kind")
    require_member(method, CONSENT_METHODS, "consent method")
    digest = _prompt(prompt_version, prompt_text, f"consent ({decision})")
    if not evidence.strip():
        raise ReducerError("a consent decision needs its evidence (the digit or the words)")
    p = get_participant(ctx, call.id, participant_id)
    prev = guard.latest_consent(ctx, p.id, kind)
    require_transition(
        "consent",
        f"participant {p.id} {kind} consent",
        prev.decision if prev is not None else "none",
        decision,
    )
    row = ctx.db.consent_records.insert(
        call_id=call.id,
        participant_id=p.id,
        kind=kind,
        decision=decision,
        method=method,
        prompt_version=prompt_version,
        prompt_hash=digest,
        prompt_text=prompt_text,
        evidence=evidence,
        at=ctx.timestamp,
        audio_offset_ms=audio_offset_ms,
        recording_id=_active_recording_id(ctx, call.id),
    )
    out: dict[str, Any] = {"consent_id": row.id, "decision": decision}
    if kind == "recording":
        if decision == "granted":
            out["recording"] = guard.reconcile(ctx, call.id)
        else:
            out["recording_stopped"] = guard.stop_live(ctx, call.id, f"consent_{decision}")
    return out


def consent_grant(
    ctx: ReducerContext,
    call_id: int,
    participant_id: int,
    method: str,
    evidence: str,
    prompt_version: str,
    prompt_text: str,
    kind: str = "recording",
    audio_offset_ms: int | None = None,
) -> dict[str, Any]:
    call = answered_call(ctx, call_id, "consent_grant")
    return do_consent(
        ctx,
        call,
        participant_id,
        "granted",
        kind=kind,
        method=method,
        evidence=evidence,
        prompt_version=prompt_version,
        prompt_text=prompt_text,
        audio_offset_ms=audio_offset_ms,
    )


def consent_decline(
    ctx: ReducerContext,
    call_id: int,
    participant_id: int,
    method: str,
    evidence: str,
    prompt_version: str,
    prompt_text: str,
    kind: str = "recording",
    audio_offset_ms: int | None = None,
) -> dict[str, Any]:
    call = answered_call(ctx, call_id, "consent_decline")
    return do_consent(
        ctx,
        call,
        participant_id,
        "declined",
        kind=kind,
        method=method,
        evidence=evidence,
        prompt_version=prompt_version,
        prompt_text=prompt_text,
        audio_offset_ms=audio_offset_ms,
    )


def consent_revoke(
    ctx: ReducerContext,
    call_id: int,
    participant_id: int,
    method: str,
    evidence: str,
    prompt_version: str,
    prompt_text: str,
    kind: str = "recording",
    audio_offset_ms: int | None = None,
) -> dict[str, Any]:
    call = open_call(ctx, call_id, "consent_revoke")
    return do_consent(
        ctx,
        call,
        participant_id,
        "revoked",
        kind=kind,
        method=method,
        evidence=evidence,
        prompt_version=prompt_version,
        prompt_text=prompt_text,
        audio_offset_ms=audio_offset_ms,
    )


def set_lawful_basis(
    ctx: ReducerContext, call_id: int, basis: str, reference: str = ""
) -> dict[str, Any]:
    """Record the GDPR Art. 6(1) basis the business relies on for this call's recording."""
    call = open_call(ctx, call_id, "set_lawful_basis")
    require_member(basis, LAWFUL_BASES, "lawful basis")
    row = ctx.db.lawful_bases.get(call.id)
    if row is None:
        ctx.db.lawful_bases.insert(
            call_id=call.id, basis=basis, reference=reference, at=ctx.timestamp
        )
    else:
        ctx.db.lawful_bases.update(row, basis=basis, reference=reference, at=ctx.timestamp)
    if _active_recording_id(ctx, call.id) is not None:
        _, verdict = guard.assess(ctx, call.id)
        if not verdict.allowed:
            raise ReducerError(
                f"call {call.id}: lawful basis {basis!r} would leave the active recording"
                f" without a valid basis ({verdict.message()}); stop the recording first"
            )
    return {"call_id": call.id, "basis": basis, "recording": guard.reconcile(ctx, call.id)}


def policy_set(
    ctx: ReducerContext,
    jurisdiction: str,
    mode: str,
    announce_required: bool,
    announcement_must_be_recorded: bool,
    lawful_basis_required: bool,
    citation: str,
    source: str,
) -> dict[str, Any]:
    """Add or change a jurisdiction's policy (applies from the next activation on)."""
    code = jurisdiction.strip().upper()
    if not code:
        raise ReducerError("policy_set needs a jurisdiction code")
    require_member(mode, MODES, "mode")
    if not citation.strip():
        raise ReducerError("a consent policy needs its legal citation")
    values = {
        "mode": mode,
        "announce_required": announce_required,
        "announcement_must_be_recorded": announcement_must_be_recorded,
        "lawful_basis_required": lawful_basis_required,
        "citation": citation,
        "source": source,
        "updated_at": ctx.timestamp,
    }
    row = ctx.db.consent_policies.get(code)
    if row is None:
        ctx.db.consent_policies.insert(jurisdiction=code, **values)
    else:
        ctx.db.consent_policies.update(row, **values)
    return {"jurisdiction": code, "created": row is None}


# ---------------------------------------------------------------- recording control


def recording_start(ctx: ReducerContext, call_id: int, defer: bool = False) -> dict[str, Any]:
    """Start recording now (refused unless the policy allows it); with ``defer``, keep a
    pending recording that becomes active in the commit that satisfies the policy."""
    call = answered_call(ctx, call_id, "recording_start")
    rec = guard.live_recording(ctx, call.id)
    if rec is not None and rec.status != "pending":
        raise ReducerError(f"call {call.id} already has recording {rec.id} ({rec.status})")
    if rec is None:
        rec = guard.create_recording(ctx, call.id)
    _, verdict = guard.assess(ctx, call.id)
    if defer and (not verdict.allowed or transcription_pause(ctx, call.id) is not None):
        return {"recording_id": rec.id, "status": "pending", "waiting_for": list(verdict.reasons)}
    rec = guard.activate(ctx, rec)
    return {"recording_id": rec.id, "status": rec.status, "provisional": rec.provisional}


def recording_pause(ctx: ReducerContext, call_id: int, reason: str) -> dict[str, Any]:
    """Pause the active recording; ``pci`` also pauses transcription and DTMF capture."""
    call = open_call(ctx, call_id, "recording_pause")
    reason = reason.strip().lower()
    if not reason:
        raise ReducerError("recording_pause needs a reason (e.g. 'pci')")
    rec = guard.live_recording(ctx, call.id)
    out: dict[str, Any] = {"call_id": call.id, "recording_id": None, "transcription_paused": False}
    if reason == PCI:
        if transcription_pause(ctx, call.id) is None:
            ctx.db.transcription_pauses.insert(call_id=call.id, reason=PCI, since=ctx.timestamp)
        out["transcription_paused"] = True
    if rec is not None and rec.status == "active":
        guard.pause(ctx, rec, reason)
        out["recording_id"] = rec.id
    elif rec is not None and rec.status == "paused" and reason == PCI:
        ctx.db.recordings.update(rec, pause_reason=PCI)
        out["recording_id"] = rec.id
    elif reason != PCI:
        raise ReducerError(f"call {call.id} has no active recording to pause")
    return out


def recording_resume(ctx: ReducerContext, call_id: int) -> dict[str, Any]:
    """End a pause: transcription resumes, and the recording resumes if the policy allows."""
    call = answered_call(ctx, call_id, "recording_resume")
    pause = transcription_pause(ctx, call.id)
    rec = guard.live_recording(ctx, call.id)
    if pause is None and (rec is None or rec.status != "paused"):
        raise ReducerError(f"call {call.id}: nothing is paused")
    if pause is not None:
        ctx.db.transcription_pauses.delete(call.id)
    out: dict[str, Any] = {"call_id": call.id, "transcription_resumed": pause is not None}
    if rec is not None and rec.status == "paused":
        rec = guard.activate(ctx, rec)
        out.update(recording_id=rec.id, status=rec.status, provisional=rec.provisional)
    return out


def recording_stop(ctx: ReducerContext, call_id: int, reason: str = "requested") -> dict[str, Any]:
    call = open_call(ctx, call_id, "recording_stop")
    rec = guard.live_recording(ctx, call.id)
    if rec is None:
        raise ReducerError(f"call {call.id} has no recording to stop")
    guard.stop(ctx, rec, reason or "requested")
    return {"recording_id": rec.id, "status": "stopped"}


def recording_finalize(
    ctx: ReducerContext,
    recording_id: int,
    storage_uri: str,
    checksum: str,
    key_id: str,
    duration_ms: int,
) -> dict[str, Any]:
    """The media layer stored the file: where, its checksum, its encryption key id."""
    require_system(ctx, "recording_finalize")
    rec = ctx.db.recordings.get(recording_id)
    if rec is None:
        raise ReducerError(f"no such recording: {recording_id}")
    if not storage_uri or not checksum or not key_id:
        raise ReducerError("recording_finalize needs storage_uri, checksum and key_id")
    if duration_ms < 0:
        raise ReducerError("duration_ms cannot be negative")
    guard.move(
        ctx,
        rec,
        "finalized",
        storage_uri=storage_uri,
        checksum=checksum,
        key_id=key_id,
        duration_ms=duration_ms,
        finalized_at=ctx.timestamp,
    )
    return {"recording_id": rec.id, "status": "finalized"}


def recording_key_store(
    ctx: ReducerContext, recording_id: int, key_id: str, master_key_id: str, wrapped_key: bytes
) -> dict[str, Any]:
    """The recorder created a recording's file: keep its wrapped data key (idempotent)."""
    require_system(ctx, "recording_key_store")
    rec = ctx.db.recordings.get(recording_id)
    if rec is None:
        raise ReducerError(f"no such recording: {recording_id}")
    if not key_id or not master_key_id or not wrapped_key:
        raise ReducerError("recording_key_store needs key_id, master_key_id and wrapped_key")
    row = ctx.db.recording_keys.get(key_id)
    if row is not None:
        if row.recording_id != rec.id or row.wrapped_key != wrapped_key:
            raise ReducerError(f"key {key_id} is already stored for another recording")
        return {"key_id": key_id, "duplicate": True}
    ctx.db.recording_keys.insert(
        key_id=key_id,
        recording_id=rec.id,
        call_id=rec.call_id,
        master_key_id=master_key_id,
        wrapped_key=wrapped_key,
        created_at=ctx.timestamp,
    )
    return {"key_id": key_id, "duplicate": False}


def recording_access(
    ctx: ReducerContext, recording_id: int, accessor: Identity, purpose: str
) -> dict[str, Any]:
    """Log that ``accessor`` is given a finalized recording's audio (the export path calls
    this, as the system, before it decrypts anything)."""
    require_system(ctx, "recording_access")
    rec = ctx.db.recordings.get(recording_id)
    if rec is None:
        raise ReducerError(f"no such recording: {recording_id}")
    if rec.status != "finalized":
        raise ReducerError(f"recording {recording_id} is {rec.status}, not finalized")
    if not purpose.strip():
        raise ReducerError("a recording access needs a purpose")
    row = ctx.db.recording_accesses.insert(
        recording_id=rec.id,
        call_id=rec.call_id,
        accessor=accessor,
        purpose=purpose.strip()[:500],
        at=ctx.timestamp,
    )
    return {"access_id": row.id, "recording_id": rec.id}


REDUCERS = (
    recording_key_store,
    recording_access,
    consent_announce,
    consent_grant,
    consent_decline,
    consent_revoke,
    ai_disclose,
    set_lawful_basis,
    policy_set,
    recording_start,
    recording_pause,
    recording_resume,
    recording_stop,
    recording_finalize,
)
