"""Twilio request signing: the independent implementation in ``twilio_support`` against
Twilio's documented example, against the ``twilio`` package, and the adapter's check of
public URLs (port variants, query strings, repeated fields)."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator
from twilio_support import twilio_signature

from providers.twilio.signing import SignatureCheck
from providers.twilio.webhooks import Form

# https://www.twilio.com/docs/usage/security#validating-requests (the docs' example)
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_independent_signing_matches_the_documented_example() -> None:
    assert twilio_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    # and it is sensitive to every input
    assert twilio_signature("12346", DOC_URL, DOC_PARAMS) != DOC_SIGNATURE
    assert twilio_signature(DOC_TOKEN, DOC_URL + "&x=1", DOC_PARAMS) != DOC_SIGNATURE
    assert twilio_signature(DOC_TOKEN, DOC_URL, {**DOC_PARAMS, "Digits": "1235"}) != DOC_SIGNATURE


def test_the_twilio_package_agrees() -> None:
    v = RequestValidator(DOC_TOKEN)
    assert v.compute_signature(DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    assert v.validate(DOC_URL, DOC_PARAMS, DOC_SIGNATURE)
    params = {"b": "2", "a": "1", "Empty": "", "Ünï": "çødé +&="}
    url = "https://voice.example.test/providers/twilio/voice"
    assert v.compute_signature(url, params) == twilio_signature(DOC_TOKEN, url, params)


def test_adapter_check_accepts_port_variants_and_refuses_changes() -> None:
    check = SignatureCheck(DOC_TOKEN, "https://mycompany.com")
    url = check.signed_url("/myapp.php", "foo=1&bar=2")
    assert url == DOC_URL
    assert check.verify(url, DOC_PARAMS, DOC_SIGNATURE) is None
    # Twilio may sign with the default port spelled out, or without it
    with_port = twilio_signature(
        DOC_TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", DOC_PARAMS
    )
    assert check.verify(url, DOC_PARAMS, with_port) is None
    ported = SignatureCheck(DOC_TOKEN, "https://mycompany.com:443")
    assert (
        ported.verify(ported.signed_url("/myapp.php", "foo=1&bar=2"), DOC_PARAMS, DOC_SIGNATURE)
        is None
    )
    # a non-default port is part of the URL
    odd = twilio_signature(
        DOC_TOKEN, "https://mycompany.com:8443/myapp.php?foo=1&bar=2", DOC_PARAMS
    )
    assert check.verify(url, DOC_PARAMS, odd) is not None
    assert check.verify(url, {**DOC_PARAMS, "Digits": "9"}, DOC_SIGNATURE) is not None
    assert check.verify(url, {**DOC_PARAMS, "Extra": ""}, DOC_SIGNATURE) is not None
    assert check.verify(check.signed_url("/myapp.php"), DOC_PARAMS, DOC_SIGNATURE) is not None
    assert check.verify(url, DOC_PARAMS, None) == "missing X-Twilio-Signature"
    assert check.verify(url, DOC_PARAMS, "") == "missing X-Twilio-Signature"


def test_websocket_urls_and_repeated_fields() -> None:
    check = SignatureCheck(DOC_TOKEN, "https://voice.example.test/")
    ws = check.signed_url("/providers/twilio/media", websocket=True)
    assert ws == "wss://voice.example.test/providers/twilio/media"
    assert check.verify(ws, {}, twilio_signature(DOC_TOKEN, ws)) is None
    form = Form.parse(b"A=2&A=1&B=x+y&C=")
    assert dict(form) == {"A": "2", "B": "x y", "C": ""}
    pairs = [("A", "2"), ("A", "1"), ("B", "x y"), ("C", "")]
    sig = twilio_signature(DOC_TOKEN, ws, pairs)
    assert check.verify(ws, form, sig) is None
    assert check.verify(ws, dict(form), sig) is not None  # the second A matters


@pytest.mark.parametrize(
    ("country", "state", "code"),
    [("US", "CA", "US-CA"), ("us", "wa", "US-WA"), ("GB", "London", "GB"), ("US", "", "US"),
     ("", "CA", ""), ("DE", "BE", "DE")],
)  # fmt: skip
def test_jurisdictions(country: str, state: str, code: str) -> None:
    from providers.twilio.webhooks import jurisdiction

    assert jurisdiction(country, state) == code
