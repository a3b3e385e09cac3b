"""Vonage Voice event webhooks -> ``provider_event`` arguments (pure, no I/O).

A Vonage call-status event is JSON with ``uuid`` (the leg), ``conversation_uuid``,
``status`` (started, ringing, answered, completed, busy, cancelled, failed, rejected,
timeout, unanswered, machine, human, disconnected ...), ``direction``, ``from``, ``to``
and ``timestamp`` (ISO 8601). This module names the event (its id) and normalizes its
kind onto the voice model's ``EVENT_EFFECTS`` vocabulary.

Invariants: the event id depends only on the leg, the status and Vonage's timestamp, so a
retried delivery of the same event is the same ``provider_event`` (applied once); events
of the WebSocket leg (``to`` is a ``ws(s)://`` URI) never carry a call-status kind, so the
media leg completing or disconnecting never ends the phone call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from providers.vonage.signing import compact_json

STATUS_KINDS: dict[str, str] = {
    "answered": "answered",
    "completed": "completed",
    "busy": "busy",
    "cancelled": "canceled",
    "canceled": "canceled",
    "failed": "failed",
    "rejected": "failed",
    "timeout": "no_answer",
    "unanswered": "no_answer",
}
"""Vonage statuses that move a call (the kinds of ``consent.reducers_call.EVENT_EFFECTS``);
others (started, ringing, machine, human, input, transfer, record ...) are logged only."""


@dataclass(frozen=True)
class VonageEvent:
    uuid: str
    status: str
    kind: str
    event_id: str
    timestamp: str
    websocket_leg: bool
    payload: dict[str, Any]

    @property
    def call_id_header(self) -> int | None:
        """Our call id, when the event echoes the headers of our WebSocket endpoint."""
        headers = self.payload.get("headers")
        raw = headers.get("voicehub_call_id") if isinstance(headers, dict) else None
        try:
            return int(raw) if raw is not None else None
        except (TypeError, ValueError):
            return None


def parse_timestamp(ts: str) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None


def parse_event(body: Any) -> VonageEvent | None:
    """The event in a webhook body, or None when it is not a call event (no uuid)."""
    if not isinstance(body, dict):
        return None
    uuid = body.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        return None
    status = str(body.get("status") or body.get("type") or "event").strip().lower()
    to = str(body.get("to") or "")
    websocket_leg = to.startswith(("ws://", "wss://"))
    if websocket_leg:
        kind = f"websocket_{status}"
    else:
        kind = STATUS_KINDS.get(status, status.replace("-", "_").replace(":", "_"))
    ts = body.get("timestamp")
    timestamp = ts if isinstance(ts, str) else ""
    if timestamp:
        event_id = f"{uuid}:{status}:{timestamp}"
    else:  # no timestamp: the body itself names the event
        event_id = f"{uuid}:{status}:{hashlib.sha256(compact_json(body)).hexdigest()[:24]}"
    return VonageEvent(uuid, status, kind, event_id, timestamp, websocket_leg, dict(body))
