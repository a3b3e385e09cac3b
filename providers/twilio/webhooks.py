"""Pure translation of Twilio's voice webhook and callbacks into voice-model arguments.

No I/O: the adapter validates the signature, then these functions turn the form fields
into ``call_started`` / ``provider_event`` arguments and idempotency keys.

Invariants:

* every request id and event id is derived from Twilio's own ids and the event's content,
  so a retried webhook maps to the same id and is applied once;
* a status callback is *stale* when a callback with a higher ``SequenceNumber`` (or, when
  Twilio sent none, a later ``Timestamp``) was already recorded for the call; a stale event
  is recorded under a kind the state machine never applies (``stale_<status>``), so it can
  never move the call backwards whatever the order of arrival.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

PROVIDER = "twilio"
CALL_STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed",
     "no-answer", "canceled"}
)  # fmt: skip


class WebhookError(ValueError):
    """A signed request that lacks what voicehub needs (answered 400, nothing changes)."""


def jurisdiction(country: str | None, state: str | None) -> str:
    """``FromCountry``/``FromState`` -> a policy code: ``US`` + ``CA`` -> ``US-CA``; other
    countries by country only; unknown -> '' (the strictest default policy applies)."""
    c = (country or "").strip().upper()
    s = (state or "").strip().upper()
    if not c:
        return ""
    if c == "US" and len(s) == 2 and s.isalpha():
        return f"US-{s}"
    return c


def direction(value: str | None) -> str:
    """Twilio's ``Direction`` (``inbound``, ``outbound-api``, ``outbound-dial``) -> the
    voice model's ``inbound``/``outbound``."""
    v = (value or "inbound").strip().lower()
    return "outbound" if v.startswith("outbound") else "inbound"


def require(form: Mapping[str, str], *names: str) -> None:
    missing = [n for n in names if not str(form.get(n, "")).strip()]
    if missing:
        raise WebhookError(f"missing {', '.join(missing)}")


def call_started_args(form: Mapping[str, str]) -> dict[str, Any]:
    """``call_started`` arguments of a voice webhook (``CallSid``, ``From``, ``To``...)."""
    require(form, "CallSid")
    return {
        "provider": PROVIDER,
        "provider_call_id": form["CallSid"],
        "direction": direction(form.get("Direction")),
        "from_number": form.get("From", ""),
        "to_number": form.get("To", ""),
        "from_jurisdiction": jurisdiction(form.get("FromCountry"), form.get("FromState")),
        "to_jurisdiction": jurisdiction(form.get("ToCountry"), form.get("ToState")),
    }


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _ts(v: Any) -> float | None:
    """Twilio's ``Timestamp`` (RFC 2822, e.g. ``Mon, 16 Aug 2010 03:45:01 +0000``)."""
    if not v:
        return None
    try:
        return parsedate_to_datetime(str(v)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class StatusEvent:
    call_sid: str
    status: str
    sequence: int | None
    timestamp: float | None
    event_id: str
    payload: dict[str, str]

    def order_key(self) -> tuple[int, float]:
        return (self.sequence if self.sequence is not None else -1, self.timestamp or 0.0)

    def is_stale(self, seen: Iterable[Mapping[str, Any]]) -> bool:
        """True when a recorded status callback of this call came later in Twilio's order
        (a higher ``SequenceNumber``; without sequence numbers, a later ``Timestamp``)."""
        for p in seen:
            other_seq, other_ts = _int(p.get("SequenceNumber")), _ts(p.get("Timestamp"))
            if self.sequence is not None and other_seq is not None:
                if other_seq > self.sequence:
                    return True
            elif self.timestamp is not None and other_ts is not None and other_ts > self.timestamp:
                return True
        return False

    def kind(self, stale: bool) -> str:
        norm = self.status.replace("-", "_")
        return f"stale_{norm}" if stale else norm


def status_event(form: Mapping[str, str]) -> StatusEvent:
    """A call progress callback; its event id is stable across Twilio's retries (which
    repeat the same parameters) and distinct per status and sequence number."""
    require(form, "CallSid", "CallStatus")
    status = form["CallStatus"].strip().lower()
    seq = _int(form.get("SequenceNumber"))
    ts = _ts(form.get("Timestamp"))
    tail = f"{seq}" if seq is not None else (form.get("Timestamp") or "-")
    event_id = f"{form['CallSid']}:status:{status}:{tail}"
    return StatusEvent(form["CallSid"], status, seq, ts, event_id, dict(form))


def recording_event(form: Mapping[str, str]) -> dict[str, Any]:
    """``provider_event`` arguments of a recording status callback."""
    require(form, "CallSid", "RecordingSid", "RecordingStatus")
    status = form["RecordingStatus"].strip().lower()
    return {
        "provider": PROVIDER,
        "provider_event_id": f"{form['RecordingSid']}:recording:{status}",
        "provider_call_id": form["CallSid"],
        "kind": f"recording_{status.replace('-', '_')}",
        "payload": dict(form),
    }


def stream_event(form: Mapping[str, str]) -> dict[str, Any]:
    """``provider_event`` arguments of a ``<Stream statusCallback>`` (``StreamEvent``
    stream-started / stream-stopped / stream-error)."""
    require(form, "CallSid", "StreamSid", "StreamEvent")
    ev = form["StreamEvent"].strip().lower()
    return {
        "provider": PROVIDER,
        "provider_event_id": f"{form['StreamSid']}:{ev}",
        "provider_call_id": form["CallSid"],
        "kind": ev.replace("-", "_"),
        "payload": dict(form),
    }


class Form(Mapping[str, str]):
    """An ``application/x-www-form-urlencoded`` body: the first value per key as a mapping,
    every value through ``getlist`` (what ``RequestValidator`` signs repeated keys with)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._lists: dict[str, list[str]] = {}
        for k, v in pairs:
            self._lists.setdefault(k, []).append(v)

    @classmethod
    def parse(cls, body: bytes) -> Form:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookError("the form body is not UTF-8") from None
        return cls(parse_qsl(text, keep_blank_values=True))

    def __getitem__(self, key: str) -> str:
        return self._lists[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._lists)

    def __len__(self) -> int:
        return len(self._lists)

    def getlist(self, key: str) -> list[str]:
        return list(self._lists.get(key, []))
