"""The voice model's state machines, written down as data, and the one check that enforces them.

Every status column of the voice module (calls, recordings, utterances, call commands,
consent decisions, the default consent flow) moves only along the edges listed here.
Invariant: a reducer changes a status only through ``require_transition``, so a row can
never reach a state the tables below do not allow from where it is; a refused edge raises
``ReducerError`` and the whole transaction rolls back.

    call        ringing ──> in_progress ──> ended
                   └───────────────────────────^
    recording   pending ──> active <──> paused
                   │           │           │
                   └───────────┴───────────┴──> stopped ──> finalized
    utterance   queued ──> playing ──> played
                   │  └─────────────────^  │
                   └──────> interrupted <──┘
    command     pending ──> sent ──> done | failed      (pending ──> done | failed too)
    consent     none ──> granted ──> revoked ──> granted
                   └──> declined ──> granted
"""

from __future__ import annotations

from collections.abc import Mapping

from core.errors import ReducerError

Transitions = Mapping[str, frozenset[str]]

CALL_STATUSES = ("ringing", "in_progress", "ended")
CALL_TRANSITIONS: Transitions = {
    "ringing": frozenset({"in_progress", "ended"}),
    "in_progress": frozenset({"ended"}),
    "ended": frozenset(),
}
END_REASONS = frozenset({"completed", "failed", "no_answer", "busy", "canceled"})
"""Why a call ended; ``no_answer`` and ``busy`` only make sense for a call never answered."""
UNANSWERED_ONLY_REASONS = frozenset({"no_answer", "busy"})

RECORDING_STATUSES = ("pending", "active", "paused", "stopped", "finalized")
RECORDING_TRANSITIONS: Transitions = {
    "pending": frozenset({"active", "stopped"}),
    "active": frozenset({"paused", "stopped"}),
    "paused": frozenset({"active", "stopped"}),
    "stopped": frozenset({"finalized"}),
    "finalized": frozenset(),
}
LIVE_RECORDING = frozenset({"pending", "active", "paused"})
"""A call has at most one recording in one of these states."""

UTTERANCE_STATUSES = ("queued", "playing", "played", "interrupted")
UTTERANCE_TRANSITIONS: Transitions = {
    "queued": frozenset({"playing", "played", "interrupted"}),
    "playing": frozenset({"played", "interrupted"}),
    "played": frozenset(),
    "interrupted": frozenset(),
}
PENDING_UTTERANCE = frozenset({"queued", "playing"})

COMMAND_KINDS = frozenset({"hangup", "transfer", "play", "clear"})
COMMAND_STATUSES = ("pending", "sent", "done", "failed")
COMMAND_TRANSITIONS: Transitions = {
    "pending": frozenset({"sent", "done", "failed"}),
    "sent": frozenset({"done", "failed"}),
    "done": frozenset(),
    "failed": frozenset(),
}

CONSENT_KINDS = frozenset({"recording", "ai"})
CONSENT_METHODS = frozenset({"dtmf", "verbal", "web", "prior_consent"})
CONSENT_TRANSITIONS: Transitions = {
    "none": frozenset({"granted", "declined"}),
    "granted": frozenset({"revoked"}),
    "declined": frozenset({"granted"}),
    "revoked": frozenset({"granted"}),
}
"""Per (participant, kind): the latest consent record's decision ("none" before the first)."""

FLOW_STATES = ("awaiting_consent", "recording", "not_recording", "handed_off", "ended")
FLOW_TRANSITIONS: Transitions = {
    "awaiting_consent": frozenset({"awaiting_consent", "recording", "not_recording", "ended"}),
    "recording": frozenset({"handed_off", "ended"}),
    "not_recording": frozenset({"handed_off", "ended"}),
    "handed_off": frozenset({"ended"}),
    "ended": frozenset(),
}
"""The default consent flow; ``awaiting_consent`` loops while it re-asks the question."""

MACHINES: Mapping[str, Transitions] = {
    "call": CALL_TRANSITIONS,
    "recording": RECORDING_TRANSITIONS,
    "utterance": UTTERANCE_TRANSITIONS,
    "command": COMMAND_TRANSITIONS,
    "consent": CONSENT_TRANSITIONS,
    "flow": FLOW_TRANSITIONS,
}


def allowed(machine: Transitions, current: str, new: str) -> bool:
    return new in machine.get(current, frozenset())


def require_transition(kind: str, what: str, current: str, new: str) -> None:
    """Raise ``ReducerError`` unless ``current -> new`` is an edge of machine ``kind``."""
    machine = MACHINES[kind]
    if new not in machine and new not in {t for ts in machine.values() for t in ts}:
        raise ReducerError(f"{what}: unknown {kind} state {new!r}")
    if not allowed(machine, current, new):
        nexts = sorted(machine.get(current, frozenset()))
        hint = f"allowed from {current!r}: {', '.join(nexts)}" if nexts else f"{current!r} is final"
        raise ReducerError(f"{what}: {kind} cannot go from {current!r} to {new!r} ({hint})")


def require_member(value: str, allowed_values: frozenset[str] | tuple[str, ...], what: str) -> str:
    if value not in allowed_values:
        raise ReducerError(f"{what} must be one of {', '.join(sorted(allowed_values))}: {value!r}")
    return value
