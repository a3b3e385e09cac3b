"""The TwiML documents voicehub answers Twilio with, built by the ``twilio`` package.

* ``connect_stream``: ``<Connect><Stream url="wss://...">`` - a bidirectional Media Stream
  to this process, with ``<Parameter>``s carrying the call id and a single-use stream token
  (Twilio forbids query strings in the stream URL; parameters come back in the ``start``
  message's ``customParameters``) and a stream status callback;
* ``dial``: the transfer document, ``<Dial><Number>`` for a phone number or
  ``<Dial><Sip>`` for a ``sip:`` / ``sips:`` URI.

Invariant: every value goes through the TwiML builder (XML-escaped); nothing here is built
by string formatting.
"""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped]

CALL_ID_PARAM = "voicehub_call_id"
TOKEN_PARAM = "voicehub_token"


def connect_stream(
    stream_url: str,
    call_id: int,
    token: str,
    status_callback: str | None = None,
    hold_s: int = 0,
) -> str:
    """``<Response><Connect><Stream>`` with the call id and token as parameters; with
    ``hold_s``, a ``<Pause>`` after it: when the stream drops (voicehub restarting) Twilio
    moves on to the next verb, and the pause holds the call for the re-attach."""
    response = VoiceResponse()
    connect = response.connect()
    kwargs: dict[str, str] = {"url": stream_url}
    if status_callback:
        kwargs["status_callback"] = status_callback
        kwargs["status_callback_method"] = "POST"
    stream = connect.stream(**kwargs)
    stream.parameter(name=CALL_ID_PARAM, value=str(call_id))
    stream.parameter(name=TOKEN_PARAM, value=token)
    if hold_s > 0:
        response.pause(length=hold_s)
    return str(response.to_xml())


def dial(target: str) -> str:
    """Transfer TwiML: ``<Dial><Sip>`` for SIP URIs, ``<Dial><Number>`` otherwise."""
    target = target.strip()
    if not target:
        raise ValueError("a transfer needs a target")
    response = VoiceResponse()
    d = response.dial()
    if target.lower().startswith(("sip:", "sips:")):
        d.sip(target)
    else:
        d.number(target)
    return str(response.to_xml())


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())
