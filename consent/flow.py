"""The default consent flow: greet with the AI disclosure, give the recording notice, ask,
parse the answer, record (or not) as the policy allows, then hand the call to an agent.

Prompts live in the ``prompts`` table (name, version, text, sha256; one active version per
name), seeded from the module config at install and changed with ``prompt_set``; every
notice, disclosure and consent record stores the version and hash of the exact text used.

    flow_start ──> awaiting_consent ──(yes)──> recording ─────┐
                        │  ↺ unknown (re-ask, up to 2 tries)   ├──> handed_off (assign_agent)
                        └──(no / no answer)──> not_recording ──┘

``flow_start`` queues the disclosure, the notice and the question (in that order, none
interruptible); where the notice must itself be recorded (WA) it starts the recording
provisionally *before* them. Answers arrive through ``dtmf`` and final transcript segments
of an external speaker (or ``flow_answer``/``flow_timeout``) and are parsed by
``consent.answers.parse_consent_answer``. A yes records a grant for the call's first
external party and starts the recording, or keeps it pending until the policy is satisfied
(e.g. the notice has not been played yet); a no records a decline, which stops a
provisional recording in the same commit; running out of tries records no decision and
stops any provisional recording. Invariant: the flow only ever writes through the same
helpers the public reducers use, so it cannot bypass any check they make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consent import guard
from consent.answers import Answer, Parsed, parse_consent_answer
from consent.common import answered_call, present_participants, queue_utterance, sha256_text
from consent.policy import EXTERNAL_ROLES
from consent.reducers_call import assign
from consent.reducers_consent import do_announce, do_consent, do_disclose
from consent.states import require_transition
from core.errors import ReducerError
from core.transaction import ReducerContext
from core.types import Identity

__all__ = ["DEFAULT_PROMPTS", "Answer", "Parsed", "parse_consent_answer"]

DEFAULT_PROMPT_VERSION = "v1"
DEFAULT_PROMPTS: Mapping[str, str] = {
    "greeting": (
        "Hello, thank you for calling. You are speaking with an automated AI assistant,"
        " not a person."
    ),
    "recording_notice": (
        "This call is recorded and transcribed for quality and compliance purposes."
    ),
    "consent_question": (
        "To agree to the recording, press 1 or say yes. To continue without recording,"
        " press 2 or say no."
    ),
    "consent_retry": (
        "Sorry, I did not catch that. Press 1 or say yes to agree to the recording,"
        " or press 2 or say no."
    ),
    "consent_granted": "Thank you. This call will be recorded.",
    "consent_declined": "Understood. This call will not be recorded.",
    "handoff": "I am connecting you now.",
}
MAX_ATTEMPTS = 2


# ---------------------------------------------------------------- prompts


def seed_prompts(ctx: ReducerContext, prompts: Mapping[str, str], version: str) -> None:
    for name, text in {**DEFAULT_PROMPTS, **prompts}.items():
        ctx.db.prompts.insert(
            name=name,
            version=version,
            text=text,
            sha256=sha256_text(text),
            active=True,
            created_at=ctx.timestamp,
        )


def active_prompt(ctx: ReducerContext, name: str) -> Any:
    rows = [p for p in ctx.db.prompts.find("by_name", name) if p.active]
    if not rows:
        raise ReducerError(f"no active prompt named {name!r}")
    return max(rows, key=lambda p: p.created_at)


def prompt_set(ctx: ReducerContext, name: str, version: str, text: str) -> dict[str, Any]:
    """Add a prompt version and make it the active one (versions are immutable)."""
    if not name or not version or not text.strip():
        raise ReducerError("prompt_set needs a name, a version and the text")
    digest = sha256_text(text)
    row = ctx.db.prompts.get(name, version)
    if row is not None and row.sha256 != digest:
        raise ReducerError(f"prompt {name!r} version {version!r} exists with another text")
    for p in ctx.db.prompts.find("by_name", name):
        if p.active and p.version != version:
            ctx.db.prompts.update(p, active=False)
    if row is None:
        ctx.db.prompts.insert(
            name=name,
            version=version,
            text=text,
            sha256=digest,
            active=True,
            created_at=ctx.timestamp,
        )
    elif not row.active:
        ctx.db.prompts.update(row, active=True)
    return {"name": name, "version": version, "sha256": digest, "duplicate": row is not None}


def _say_prompt(ctx: ReducerContext, call_id: int, name: str) -> int:
    p = active_prompt(ctx, name)
    u = queue_utterance(
        ctx, call_id, p.text, kind="prompt", interruptible=False, prompt_version=p.version
    )
    return int(u.id)


# ---------------------------------------------------------------- flow steps


def _flow(ctx: ReducerContext, call_id: int) -> Any:
    f = ctx.db.call_flows.get(call_id)
    if f is None:
        raise ReducerError(f"call {call_id} has no consent flow (call flow_start)")
    return f


def _set_state(ctx: ReducerContext, f: Any, state: str, **changes: Any) -> Any:
    require_transition("flow", f"flow of call {f.call_id}", f.state, state)
    return ctx.db.call_flows.update(f, state=state, updated_at=ctx.timestamp, **changes)


def flow_start(ctx: ReducerContext, call_id: int, agent: Identity | None = None) -> dict[str, Any]:
    """Begin the default flow on an answered call; ``agent`` receives the call afterwards."""
    call = answered_call(ctx, call_id, "flow_start")
    existing = ctx.db.call_flows.get(call.id)
    if existing is not None:
        return {"call_id": call.id, "state": existing.state, "duplicate": True}
    greeting = active_prompt(ctx, "greeting")
    disclosure = do_disclose(ctx, call, greeting.version, greeting.text, speak=True)
    req, _ = guard.assess(ctx, call.id)
    recording = None
    if req.announcement_must_be_recorded:
        rec = guard.live_recording(ctx, call.id) or guard.create_recording(ctx, call.id)
        if rec.status == "pending":
            rec = guard.activate(ctx, rec)
        recording = {"recording_id": rec.id, "status": rec.status, "provisional": rec.provisional}
    notice = active_prompt(ctx, "recording_notice")
    announced = do_announce(ctx, call, notice.version, notice.text, speak=True)
    question = _say_prompt(ctx, call.id, "consent_question")
    ctx.db.call_flows.insert(
        call_id=call.id, state="awaiting_consent", attempts=0, updated_at=ctx.timestamp, agent=agent
    )
    return {
        "call_id": call.id,
        "state": "awaiting_consent",
        "disclosure_id": disclosure["disclosure_id"],
        "announcement_id": announced["announcement_id"],
        "utterances": [disclosure["utterance_id"], announced["utterance_id"], question],
        "recording": recording,
        "duplicate": False,
    }


def _handoff(ctx: ReducerContext, f: Any, out: dict[str, Any]) -> None:
    if f.agent is None:
        return
    assign(ctx, f.call_id, f.agent)
    out["handoff_utterance"] = _say_prompt(ctx, f.call_id, "handoff")
    _set_state(ctx, ctx.db.call_flows.get(f.call_id), "handed_off")
    out["state"] = "handed_off"
    out["agent"] = f.agent


def handle_answer(
    ctx: ReducerContext,
    call: Any,
    parsed: Parsed,
    evidence: str,
    method: str,
    audio_offset_ms: int | None,
) -> dict[str, Any]:
    f = _flow(ctx, call.id)
    if f.state != "awaiting_consent":
        raise ReducerError(f"the flow of call {call.id} is not waiting for an answer ({f.state})")
    externals = [p for p in present_participants(ctx, call.id) if p.role in EXTERNAL_ROLES]
    if not externals:
        raise ReducerError(f"call {call.id} has no external party to answer")
    party = externals[0]
    question = active_prompt(ctx, "consent_question")
    out: dict[str, Any] = {"answer": parsed.answer.value, "reason": parsed.reason}
    if parsed.answer is Answer.UNKNOWN:
        attempts = f.attempts + 1
        if attempts < MAX_ATTEMPTS:
            _set_state(ctx, f, "awaiting_consent", attempts=attempts)
            out.update(
                state="awaiting_consent", utterance_id=_say_prompt(ctx, call.id, "consent_retry")
            )
            return out
        live = guard.live_recording(ctx, call.id)
        stopped = None
        if live is not None and (live.status == "pending" or live.provisional):
            stopped = guard.stop_live(ctx, call.id, "no_consent_answer")
        f = _set_state(ctx, f, "not_recording", attempts=attempts, outcome="no_answer")
        out.update(
            state="not_recording",
            recording_stopped=stopped,
            utterance_id=_say_prompt(ctx, call.id, "consent_declined"),
        )
        _handoff(ctx, f, out)
        return out
    decision = "granted" if parsed.answer is Answer.YES else "declined"
    consent = do_consent(
        ctx,
        call,
        party.id,
        decision,
        kind="recording",
        method=method,
        evidence=evidence,
        prompt_version=question.version,
        prompt_text=question.text,
        audio_offset_ms=audio_offset_ms,
    )
    out["consent_id"] = consent["consent_id"]
    if decision == "declined":
        f = _set_state(ctx, f, "not_recording", outcome="declined")
        out.update(
            state="not_recording",
            recording_stopped=consent.get("recording_stopped"),
            utterance_id=_say_prompt(ctx, call.id, "consent_declined"),
        )
        _handoff(ctx, f, out)
        return out
    rec = guard.live_recording(ctx, call.id)
    if rec is None:
        rec = guard.create_recording(ctx, call.id)
        guard.reconcile(ctx, call.id)
        rec = ctx.db.recordings.get(rec.id)
    _, verdict = guard.assess(ctx, call.id)
    out["recording"] = {
        "recording_id": rec.id,
        "status": rec.status,
        "provisional": rec.provisional,
    }
    if rec.status != "active":
        out["waiting_for"] = list(verdict.reasons)
    f = _set_state(ctx, f, "recording", outcome="granted")
    out.update(state="recording", utterance_id=_say_prompt(ctx, call.id, "consent_granted"))
    _handoff(ctx, f, out)
    return out


def flow_answer(
    ctx: ReducerContext,
    call_id: int,
    text: str = "",
    digits: str = "",
    audio_offset_ms: int | None = None,
) -> dict[str, Any]:
    """Feed an answer to the flow directly (adapters that parse outside ``dtmf``)."""
    call = answered_call(ctx, call_id, "flow_answer")
    parsed = parse_consent_answer(text=text, digits=digits)
    method = "dtmf" if digits else "verbal"
    return handle_answer(ctx, call, parsed, digits or text, method, audio_offset_ms)


def flow_timeout(ctx: ReducerContext, call_id: int) -> dict[str, Any]:
    """No answer arrived in time: counts as an unrecognized answer."""
    call = answered_call(ctx, call_id, "flow_timeout")
    return handle_answer(
        ctx, call, Parsed(Answer.UNKNOWN, "no answer in time"), "(timeout)", "verbal", None
    )


# ---------------------------------------------------------------- hooks from media reducers


def _waiting(ctx: ReducerContext, call_id: int) -> bool:
    f = ctx.db.call_flows.get(call_id)
    return f is not None and f.state == "awaiting_consent"


def on_dtmf(
    ctx: ReducerContext, call: Any, digits: str, audio_offset_ms: int | None
) -> dict[str, Any] | None:
    if not _waiting(ctx, call.id):
        return None
    return handle_answer(
        ctx, call, parse_consent_answer(digits=digits), digits, "dtmf", audio_offset_ms
    )


def on_final_segment(ctx: ReducerContext, call: Any, seg: Any) -> dict[str, Any] | None:
    if seg.speaker not in EXTERNAL_ROLES or not _waiting(ctx, call.id):
        return None
    return handle_answer(
        ctx, call, parse_consent_answer(text=seg.text), seg.text, "verbal", seg.start_ms
    )


REDUCERS = (flow_start, flow_answer, flow_timeout, prompt_set)
