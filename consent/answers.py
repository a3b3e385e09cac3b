"""The consent-answer parser: DTMF digits or recognized speech -> yes / no / unknown.

Pure and English-only. The costly mistake is hearing "yes" where the person said no, so the
rules are ordered to fail safe:

1. DTMF: the first 1 or 2 decides (1 = yes, 2 = no); any other key is unknown.
2. Speech is normalized (lower case, curly quotes, contractions expanded: "don't" -> "do
   not", "won't" -> "will not", "n't" -> " not").
3. A few affirmative idioms that contain a negation word ("no problem", "why not", "I don't
   mind", "no objection") are taken out first and count as yes.
4. Expressions of doubt ("not sure", "I don't know", "maybe", "what?", "repeat") are taken
   out and make the answer unknown unless a negation remains.
5. Any remaining negation ("no", "not", "nope", "never", "decline", "refuse", "object",
   "disagree", "stop", "opt out", "rather not"...) means **no**, whatever else was said:
   "yes, but don't record" and "no, I don't agree" are no.
6. Doubt means unknown (the question is asked again).
7. An affirmation ("yes", "yeah", "sure", "ok", "I agree", "I consent", "go ahead") means
   yes; anything else is unknown. A spoken digit counts only as the whole answer ("one",
   "press one" = yes, "two" = no), so "one moment" is not a yes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Answer(enum.StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Parsed:
    answer: Answer
    reason: str  # what decided it: the digit, or the words matched


_CONTRACTIONS = (
    (r"\bwon'?t\b", "will not"),
    (r"\bcan'?t\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bshan'?t\b", "shall not"),
    (r"\bain'?t\b", "am not"),
    (r"\b(do|does|did|is|are|was|were|would|should|could|have|has|had|must|need)n'?t\b", r"\1 not"),
    (r"n't\b", " not"),
    (r"\bi'?m\b", "i am"),
    (r"\bi'?d\b", "i would"),
    (r"\bthat'?s\b", "that is"),
    (r"\bit'?s\b", "it is"),
)

_YES_IDIOMS = (
    "no problem",
    "no problems",
    "not a problem",
    "no worries",
    "why not",
    "no objection",
    "no objections",
    "i do not mind",
    "do not mind",
    "do not worry",
    "i would not mind",
    "would not mind",
    "not at all a problem",
)

_DOUBT = (
    "not sure",
    "not certain",
    "do not know",
    "no idea",
    "do not understand",
    "not understand",
    "maybe",
    "perhaps",
    "possibly",
    "what",
    "pardon",
    "repeat",
    "say again",
    "come again",
    "huh",
    "hold on",
    "wait",
    "moment",
    "who is this",
)

_NEGATIONS = (
    "no",
    "not",
    "nope",
    "nah",
    "never",
    "negative",
    "nay",
    "decline",
    "declined",
    "deny",
    "denied",
    "refuse",
    "refused",
    "reject",
    "disagree",
    "disagreed",
    "object",
    "objection",
    "stop",
    "opt out",
    "uh uh",
)

_AFFIRMATIONS = (
    "yes",
    "yeah",
    "yea",
    "yep",
    "yup",
    "ya",
    "sure",
    "ok",
    "okay",
    "agree",
    "agreed",
    "consent",
    "consented",
    "accept",
    "accepted",
    "absolutely",
    "certainly",
    "definitely",
    "of course",
    "fine",
    "alright",
    "all right",
    "affirmative",
    "correct",
    "go ahead",
    "please do",
    "sounds good",
    "i do",
)

_SPOKEN_DIGITS = {
    "1": Answer.YES,
    "one": Answer.YES,
    "2": Answer.NO,
    "two": Answer.NO,
}
"""A spoken digit counts only as the whole answer ("one", "press one", "number 1"):
"one moment" is not a yes."""
_DIGIT_FILLER = re.compile(r"^(?:press|option|number|i press|i pressed|i will press)\s+")


def _phrase_re(phrases: tuple[str, ...]) -> re.Pattern[str]:
    alts = sorted((re.escape(p).replace(r"\ ", r"\s+") for p in phrases), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alts) + r")\b")


_YES_IDIOM_RE = _phrase_re(_YES_IDIOMS)
_DOUBT_RE = _phrase_re(_DOUBT)
_NEG_RE = _phrase_re(_NEGATIONS)
_YES_RE = _phrase_re(_AFFIRMATIONS)


def normalize(text: str) -> str:
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    t = t.replace("-", " ")
    for pat, rep in _CONTRACTIONS:
        t = re.sub(pat, rep, t)
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    t = t.replace("'", "")
    return re.sub(r"\s+", " ", t).strip()


def parse_dtmf(digits: str) -> Parsed:
    for c in digits:
        if c == "1":
            return Parsed(Answer.YES, "dtmf 1")
        if c == "2":
            return Parsed(Answer.NO, "dtmf 2")
    return Parsed(Answer.UNKNOWN, f"dtmf {digits!r} is neither 1 nor 2")


def parse_speech(text: str) -> Parsed:
    t = normalize(text)
    if not t:
        return Parsed(Answer.UNKNOWN, "nothing was said")
    spoken = _SPOKEN_DIGITS.get(_DIGIT_FILLER.sub("", t))
    if spoken is not None:
        return Parsed(spoken, f"spoken digit {t!r}")
    idioms = _YES_IDIOM_RE.findall(t)
    t = _YES_IDIOM_RE.sub(" ", t)
    doubts = _DOUBT_RE.findall(t)
    t = _DOUBT_RE.sub(" ", t)
    negs = _NEG_RE.findall(t)
    if negs:
        return Parsed(Answer.NO, f"negation {negs[0]!r}")
    if doubts:
        return Parsed(Answer.UNKNOWN, f"doubt {doubts[0]!r}")
    yes = _YES_RE.findall(t)
    if yes or idioms:
        return Parsed(Answer.YES, f"affirmation {(yes or idioms)[0]!r}")
    return Parsed(Answer.UNKNOWN, "no yes or no recognized")


def parse_consent_answer(text: str = "", digits: str = "") -> Parsed:
    """DTMF wins when digits are given; otherwise the speech rules above."""
    if digits:
        return parse_dtmf(digits)
    return parse_speech(text)
