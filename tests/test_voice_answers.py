"""The consent-answer parser: a table of phrases, DTMF, and the fail-safe ordering rules.

The costly mistake is a "yes" where the person said no, so every phrase that mixes an
affirmation with a negation must come out as no, and doubt must never come out as yes.
"""

from __future__ import annotations

import pytest

from consent.answers import Answer, normalize, parse_consent_answer, parse_dtmf

YES, NO, UNKNOWN = Answer.YES, Answer.NO, Answer.UNKNOWN

SPEECH = [
    # plain affirmations
    ("yes", YES),
    ("Yes.", YES),
    ("YES!!!", YES),
    ("yeah", YES),
    ("yep", YES),
    ("yup sure", YES),
    ("Sure", YES),
    ("ok", YES),
    ("Okay, go ahead", YES),
    ("I agree", YES),
    ("I consent", YES),
    ("I accept", YES),
    ("agreed", YES),
    ("absolutely", YES),
    ("of course", YES),
    ("that's fine", YES),
    ("alright", YES),
    ("all right", YES),
    ("yes please", YES),
    ("sounds good", YES),
    ("I do", YES),
    ("one", YES),
    ("press one", YES),
    ("1", YES),
    ("number 1", YES),
    # affirmative idioms that contain a negation word
    ("no problem", YES),
    ("why not", YES),
    ("I don't mind", YES),
    ("no objection", YES),
    ("sure, no worries", YES),
    # negations win over any affirmation
    ("no", NO),
    ("No.", NO),
    ("nope", NO),
    ("nah", NO),
    ("no, I don't agree", NO),
    ("I do not consent", NO),
    ("I don't consent", NO),
    ("I dont agree", NO),
    ("don't record", NO),
    ("don’t record me", NO),  # curly apostrophe
    ("please do not record this call", NO),
    ("yes, but don't record", NO),
    ("yes I don't agree", NO),
    ("I agree not to be recorded", NO),
    ("absolutely not", NO),
    ("of course not", NO),
    ("not okay", NO),
    ("I'm not ok with that", NO),
    ("I'd rather not", NO),
    ("I would rather you didn't", NO),
    ("never", NO),
    ("I decline", NO),
    ("I refuse", NO),
    ("I object", NO),
    ("I disagree", NO),
    ("stop recording", NO),
    ("I want to opt out", NO),
    ("uh-uh", NO),
    ("won't agree", NO),
    ("no, I'm not sure", NO),
    ("two", NO),
    ("press two", NO),
    ("no problem, but don't record", NO),
    ("yes no", NO),
    # doubt and everything else: ask again
    ("", UNKNOWN),
    ("   ", UNKNOWN),
    ("I'm not sure", UNKNOWN),
    ("I don't know", UNKNOWN),
    ("maybe", UNKNOWN),
    ("yes maybe", UNKNOWN),
    ("what?", UNKNOWN),
    ("can you repeat that", UNKNOWN),
    ("pardon", UNKNOWN),
    ("one moment please", UNKNOWN),
    ("hold on", UNKNOWN),
    ("hello", UNKNOWN),
    ("I know", UNKNOWN),
    ("I want to pay my bill", UNKNOWN),
    ("nothing", UNKNOWN),
    ("uh huh", UNKNOWN),
]


@pytest.mark.parametrize(("text", "expected"), SPEECH)
def test_speech_answers(text: str, expected: Answer) -> None:
    got = parse_consent_answer(text=text)
    assert got.answer is expected, f"{text!r}: {got}"


DIGITS = [
    ("1", YES),
    ("2", NO),
    ("#1", YES),
    ("*2", NO),
    ("12", YES),  # the first 1 or 2 decides
    ("21", NO),
    ("3", UNKNOWN),
    ("9#", UNKNOWN),
    ("0", UNKNOWN),
]


@pytest.mark.parametrize(("digits", "expected"), DIGITS)
def test_dtmf_answers(digits: str, expected: Answer) -> None:
    assert parse_dtmf(digits).answer is expected
    assert parse_consent_answer(digits=digits).answer is expected


def test_digits_win_over_speech() -> None:
    assert parse_consent_answer(text="yes", digits="2").answer is NO
    assert parse_consent_answer(text="no", digits="1").answer is YES


def test_reason_names_what_decided() -> None:
    assert "not" in parse_consent_answer(text="I do not consent").reason
    assert parse_consent_answer(digits="1").reason == "dtmf 1"


def test_normalize_expands_contractions() -> None:
    assert normalize("I Don’t AGREE!") == "i do not agree"
    assert normalize("won't") == "will not"
    assert normalize("isn't") == "is not"
    assert normalize("I'd rather not") == "i would rather not"
