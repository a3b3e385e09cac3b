"""The NCCOs voicehub answers Vonage with, built from the SDK's models (pure, no I/O).

Every call is connected to our media WebSocket by a ``connect`` action with one
``websocket`` endpoint (``content-type: audio/l16;rate=16000``, headers carrying the call
id and a single-use stream token, which Vonage merges into ``websocket:connected``), with
``eventType: synchronous`` and our event URL, so that when the socket drops (voicehub
restarted) Vonage asks that URL what to do next and our answer - a fresh connect with a
new token - re-attaches the call. A ``wait`` after the connect keeps the call up (silent)
while that question cannot be answered (voicehub down), so ``start()`` can transfer it back.

Invariant: actions are SDK models dumped by alias without ``None`` fields - exactly the
JSON the SDK itself sends in ``transfer_call_ncco``.
"""

from __future__ import annotations

import re
from typing import Any

from vonage_voice.models.connect_endpoints import (  # type: ignore[import-untyped]
    PhoneEndpoint,
    SipEndpoint,
    WebsocketEndpoint,
)
from vonage_voice.models.ncco import Connect, NccoAction, Talk, Wait  # type: ignore[import-untyped]

CONTENT_TYPE = "audio/l16;rate=16000"
CALL_ID_HEADER = "voicehub_call_id"
TOKEN_HEADER = "voicehub_token"
HOLD_S = 120.0
"""How long a call whose media socket dropped waits (silently) for voicehub to come back."""

_PHONE = re.compile(r"^[1-9]\d{6,14}$")


def phone_digits(number: str) -> str | None:
    """A number as Vonage's E.164-without-plus (``447700900000``), or None."""
    digits = re.sub(r"[\s()\-.]", "", number or "")
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    return digits if _PHONE.match(digits) else None


def dump(actions: list[NccoAction]) -> list[dict[str, Any]]:
    return [a.model_dump(by_alias=True, exclude_none=True, mode="json") for a in actions]


def media_connect(
    ws_uri: str,
    call_id: int,
    token: str,
    event_url: str,
    *,
    from_number: str = "",
    uuid: str = "",
    conversation_uuid: str = "",
) -> Connect:
    """The ``connect`` that streams the call to our media socket (synchronous events)."""
    headers: dict[str, str] = {CALL_ID_HEADER: str(call_id), TOKEN_HEADER: token}
    if uuid:
        headers["uuid"] = uuid
    if conversation_uuid:
        headers["conversation_uuid"] = conversation_uuid
    endpoint = WebsocketEndpoint(uri=ws_uri, contentType=CONTENT_TYPE, headers=headers)
    caller = phone_digits(from_number)
    return Connect(
        endpoint=[endpoint],
        from_=caller,
        randomFromNumber=None if caller else True,
        eventType="synchronous",
        eventUrl=[event_url],
        eventMethod="POST",
    )


def answer_ncco(
    connect: Connect, greeting: str = "", hold_s: float = HOLD_S
) -> list[dict[str, Any]]:
    """The answer webhook's NCCO: an optional greeting, the media connect, the hold."""
    actions: list[NccoAction] = []
    if greeting:
        actions.append(Talk(text=greeting))
    actions.append(connect)
    actions.append(Wait(timeout=hold_s))
    return dump(actions)


def reconnect_actions(connect: Connect, hold_s: float = HOLD_S) -> list[NccoAction]:
    """What a ``disconnected`` event (or a restart transfer) gets: connect again, hold."""
    return [connect, Wait(timeout=hold_s)]


def goodbye_ncco(text: str = "Goodbye.") -> list[dict[str, Any]]:
    """For a call voicehub no longer carries: a last word, after which Vonage hangs up."""
    return dump([Talk(text=text)])


def transfer_actions(target: str, from_number: str = "") -> list[NccoAction]:
    """A ``connect`` to a phone number or a SIP URI (what ``transfer`` commands target)."""
    t = target.strip()
    if t.lower().startswith(("sip:", "sips:")):
        endpoint: PhoneEndpoint | SipEndpoint = SipEndpoint(uri=t)
    else:
        number = phone_digits(t)
        if number is None:
            raise ValueError(f"not a phone number or SIP URI: {target!r}")
        endpoint = PhoneEndpoint(number=number)
    caller = phone_digits(from_number)
    return [Connect(endpoint=[endpoint], from_=caller, randomFromNumber=None if caller else True)]
