"""The TwiML documents voicehub answers Twilio with, built by the ``twilio`` package.

* ``connect_stream``: ``<Connect><Stream url="wss://...">`` - a bidirectional Media Stream
  to this process, with ``<Parameter>``s carrying the call id and a single-use stream token
  (Twilio forbids query strings in the stream URL; parameters come back in the ``start``
  message's ``customParameters``) and a stream status callback;
* ``dial``: the transfer document, ``<Dial><Number>`` for a phone number or
  ``<Dial><Sip>`` for a ``sip:`` / ``sips:`` URI.

Invariant: every document comes out of the TwiML builder (XML-escaped). The stream answer
is built once per (URL, callback, hold) with placeholders, and the per-call values are put
in its place only after checking they need no escaping (digits; a token of ``[0-9a-z.]``):
the builder costs more than the rest of the webhook.
"""

from __future__ import annotations

import functools
import re

from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped]

CALL_ID_PARAM = "voicehub_call_id"
TOKEN_PARAM = "voicehub_token"


_CALL_SLOT = "VOICEHUBCALLIDSLOT"
_TOKEN_SLOT = "VOICEHUBTOKENSLOT"
_SAFE_TOKEN = re.compile(r"[0-9a-z.]{1,200}")


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
    if not _SAFE_TOKEN.fullmatch(token):
        raise ValueError("a stream token must be made of [0-9a-z.]")
    doc = _stream_template(stream_url, status_callback, hold_s)
    return doc.replace(_CALL_SLOT, str(int(call_id))).replace(_TOKEN_SLOT, token)


@functools.lru_cache(maxsize=16)
def _stream_template(stream_url: str, status_callback: str | None, hold_s: int) -> str:
    doc = _build_stream(stream_url, _CALL_SLOT, _TOKEN_SLOT, status_callback, hold_s)
    assert doc.count(_CALL_SLOT) == 1 and doc.count(_TOKEN_SLOT) == 1
    return doc


def _build_stream(
    stream_url: str, call_id: str, token: str, status_callback: str | None, hold_s: int
) -> str:
    response = VoiceResponse()
    connect = response.connect()
    kwargs: dict[str, str] = {"url": stream_url}
    if status_callback:
        kwargs["status_callback"] = status_callback
        kwargs["status_callback_method"] = "POST"
    stream = connect.stream(**kwargs)
    stream.parameter(name=CALL_ID_PARAM, value=call_id)
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
