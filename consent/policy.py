"""The consent policy engine: which facts must exist before a call's recording may be active.

Pure functions over plain values (no store access), so the rules can be read, tested and
reused by exporters on their own. The voice reducers collect a call's facts (its
participants, their latest recording-consent decisions, the notices made, the lawful basis)
and ask ``evaluate``; the store is only allowed to make a recording active when it says so.

Invariant kept here: the requirement for a call is the *strictest combination* of the
policies of every present participant's jurisdiction (all-party beats one-party, every
notice / recorded-notice / lawful-basis flag is OR-ed), so adding a party can only make the
rule stricter, never looser.

Rules of ``evaluate`` (each refusal names the participant, the record and the citation):

1. A recorded "no" blocks recording everywhere: an external party whose latest decision is
   ``declined`` or ``revoked`` refuses it (stricter than one-party law; GDPR Art. 7(3)).
2. Lawful basis (EU/GB): a basis must be recorded for the call (GDPR Art. 6(1)).
3. Grants: all-party (or GDPR basis ``consent``) needs a grant from every present external
   party (caller/callee). One-party needs one grant from any party, the business's own
   participant (``ai``/``agent``, typically method ``prior_consent``) included, or, where a
   lawful-basis regime applies, a recorded basis other than consent.
4. Notice: where required, every present external party must have heard a recording notice
   made after they joined.
5. Recorded notice (WA, RCW 9.73.030(3)): that notice must have been made while a recording
   of the call was active. Because the notice must be *on* the recording, such a policy
   allows a *provisional* activation before the notice and the answer, as long as no party
   said no and no notice was made unrecorded since the parties joined; the answer then
   either completes the consent or stops the recording.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MODES = ("one_party", "all_party")
EXTERNAL_ROLES = frozenset({"caller", "callee"})
BUSINESS_ROLES = frozenset({"agent", "ai"})
PARTICIPANT_ROLES = EXTERNAL_ROLES | BUSINESS_ROLES
LAWFUL_BASES = frozenset(
    {
        "consent",
        "contract",
        "legal_obligation",
        "vital_interests",
        "public_task",
        "legitimate_interests",
    }
)
DEFAULT_JURISDICTION = "DEFAULT"


@dataclass(frozen=True)
class Policy:
    """One row of ``consent_policies``."""

    jurisdiction: str
    mode: str
    announce_required: bool
    announcement_must_be_recorded: bool
    lawful_basis_required: bool
    citation: str
    source: str

    def row(self) -> dict[str, Any]:
        return {
            "jurisdiction": self.jurisdiction,
            "mode": self.mode,
            "announce_required": self.announce_required,
            "announcement_must_be_recorded": self.announcement_must_be_recorded,
            "lawful_basis_required": self.lawful_basis_required,
            "citation": self.citation,
            "source": self.source,
        }

    @property
    def strictness(self) -> tuple[int, int, int, int]:
        return (
            int(self.mode == "all_party"),
            int(self.announcement_must_be_recorded),
            int(self.lawful_basis_required),
            int(self.announce_required),
        )


_ALL_PARTY_SRC = (
    "all-party state per the RCFP/Bender lists of states requiring the consent of all"
    " parties (voicehub research notes, A.1)"
)


def _all_party(code: str, citation: str, note: str = "") -> Policy:
    return Policy(
        jurisdiction=code,
        mode="all_party",
        announce_required=True,
        announcement_must_be_recorded=False,
        lawful_basis_required=False,
        citation=citation,
        source=_ALL_PARTY_SRC + (f"; {note}" if note else ""),
    )


DEFAULT_POLICIES: tuple[Policy, ...] = (
    Policy(
        "US",
        "one_party",
        False,
        False,
        False,
        "18 U.S.C. § 2511(2)(d)",
        "US federal baseline: interception is lawful when one party to the call consents",
    ),
    _all_party(
        "US-CA",
        "Cal. Penal Code § 632 (§ 632.7 for cellular and cordless calls)",
        "applies to calls into California from one-party states: Kearney v. Salomon"
        " Smith Barney, 39 Cal.4th 95 (2006)",
    ),
    _all_party("US-CT", "Conn. Gen. Stat. § 52-570d"),
    _all_party("US-DE", "11 Del. C. § 1335, § 2402", "the statutes conflict; treated as all-party"),
    _all_party("US-FL", "Fla. Stat. § 934.03(2)(d)"),
    _all_party("US-IL", "720 ILCS 5/14-2"),
    _all_party("US-MD", "Md. Code, Cts. & Jud. Proc. § 10-402"),
    _all_party("US-MA", "M.G.L. c. 272 § 99", "prohibits secret recording"),
    _all_party(
        "US-MI",
        "MCL § 750.539c",
        "courts read it as one-party for participants; treated as all-party",
    ),
    _all_party("US-MT", "Mont. Code Ann. § 45-8-213"),
    _all_party("US-NV", "NRS 200.620", "telephone calls all-party per the state supreme court"),
    _all_party("US-NH", "RSA 570-A:2"),
    _all_party("US-PA", "18 Pa.C.S. § 5704"),
    Policy(
        "US-WA",
        "all_party",
        True,
        True,
        False,
        "RCW 9.73.030; RCW 9.73.030(3): the announcement must itself be recorded",
        _ALL_PARTY_SRC,
    ),
    Policy(
        "EU",
        "one_party",
        True,
        False,
        True,
        "GDPR Art. 6(1) (lawful basis), Art. 13 (information at collection),"
        " Art. 7(1) (demonstrable consent where consent is the basis)",
        "Regulation (EU) 2016/679; notice at call start plus a recorded lawful basis",
    ),
    Policy(
        "GB",
        "one_party",
        True,
        False,
        True,
        "UK GDPR Art. 6(1), Art. 13; Investigatory Powers (Interception by Businesses etc."
        " for Monitoring and Record-keeping Purposes) Regulations 2018",
        "UK practice: business recording with notice and a lawful basis",
    ),
    Policy(
        DEFAULT_JURISDICTION,
        "all_party",
        True,
        False,
        False,
        "no policy for the participant's jurisdiction: the strictest common rule applies",
        "caller location is uncertain (area code is not location): all-party with notice",
    ),
)


def policy_from_row(row: Any) -> Policy:
    d = row._asdict() if hasattr(row, "_asdict") else dict(row)
    return Policy(
        jurisdiction=d["jurisdiction"],
        mode=d["mode"],
        announce_required=bool(d["announce_required"]),
        announcement_must_be_recorded=bool(d["announcement_must_be_recorded"]),
        lawful_basis_required=bool(d["lawful_basis_required"]),
        citation=d["citation"],
        source=d["source"],
    )


def resolve(jurisdiction: str, policies: Mapping[str, Policy]) -> Policy:
    """The policy for a code: exact ("US-CA"), then its country ("US"), then DEFAULT."""
    code = jurisdiction.strip().upper()
    if code and code in policies:
        return policies[code]
    country = code.split("-", 1)[0]
    if country and country in policies:
        return policies[country]
    if DEFAULT_JURISDICTION in policies:
        return policies[DEFAULT_JURISDICTION]
    return DEFAULT_POLICIES[-1]


def candidate_codes(jurisdiction: str) -> list[str]:
    """The codes ``resolve`` may look up for ``jurisdiction``, most specific first."""
    code = jurisdiction.strip().upper()
    out = [c for c in (code, code.split("-", 1)[0]) if c]
    out.append(DEFAULT_JURISDICTION)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Requirement:
    """What one call needs: the combination of its participants' policies."""

    strictest: str
    mode: str
    announce_required: bool
    announcement_must_be_recorded: bool
    lawful_basis_required: bool
    citations: tuple[str, ...]
    jurisdictions: tuple[str, ...]


def combine(policies: Iterable[Policy]) -> Requirement:
    ps = list(policies)
    if not ps:
        ps = [DEFAULT_POLICIES[-1]]
    strictest = max(ps, key=lambda p: (p.strictness, p.jurisdiction))
    return Requirement(
        strictest=strictest.jurisdiction,
        mode="all_party" if any(p.mode == "all_party" for p in ps) else "one_party",
        announce_required=any(p.announce_required for p in ps),
        announcement_must_be_recorded=any(p.announcement_must_be_recorded for p in ps),
        lawful_basis_required=any(p.lawful_basis_required for p in ps),
        citations=tuple(
            dict.fromkeys(p.citation for p in sorted(ps, key=lambda p: p.strictness, reverse=True))
        ),
        jurisdictions=tuple(sorted({p.jurisdiction for p in ps})),
    )


@dataclass(frozen=True)
class Party:
    participant_id: int
    role: str
    jurisdiction: str
    joined_at: int
    decision: str | None = None  # latest recording-consent decision, None = never asked
    consent_id: int | None = None


@dataclass(frozen=True)
class Notice:
    announcement_id: int
    made_at: int
    recorded: bool


@dataclass(frozen=True)
class CallFacts:
    parties: tuple[Party, ...]
    notices: tuple[Notice, ...] = ()
    lawful_basis: str | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    provisional: bool = False
    reasons: tuple[str, ...] = ()
    basis: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        return "; ".join(self.reasons)


def requirement_for(facts: CallFacts, policies: Mapping[str, Policy]) -> Requirement:
    return combine(resolve(p.jurisdiction, policies) for p in facts.parties)


def _who(p: Party) -> str:
    return f"participant {p.participant_id} ({p.role}, {p.jurisdiction or 'unknown jurisdiction'})"


def evaluate(req: Requirement, facts: CallFacts) -> Verdict:
    """May a recording of this call be active now? (See the module docstring for the rules.)"""
    external = [p for p in facts.parties if p.role in EXTERNAL_ROLES]
    cite = req.citations[0] if req.citations else ""
    hard: list[str] = []  # refusals a provisional start cannot bridge
    soft: list[str] = []  # what is still missing before the consent is complete
    for p in external:
        if p.decision in ("declined", "revoked"):
            hard.append(f"{_who(p)} {p.decision} recording (consent record {p.consent_id})")
    basis = facts.lawful_basis
    if req.lawful_basis_required and basis is None:
        hard.append(
            "no lawful basis is recorded for this call (GDPR Art. 6(1)): call set_lawful_basis"
        )
    granted = [p for p in facts.parties if p.decision == "granted"]
    if req.mode == "all_party" or basis == "consent":
        why = "all-party consent" if req.mode == "all_party" else "lawful basis consent"
        for p in external:
            if p.decision != "granted" and p.decision not in ("declined", "revoked"):
                soft.append(f"{_who(p)} has not granted recording consent ({why}: {cite})")
    elif not granted and not (req.lawful_basis_required and basis is not None):
        soft.append(f"no party to the call has granted recording consent (one-party: {cite})")
    made = sorted((n for n in facts.notices if n.made_at), key=lambda n: n.made_at)
    qualifying: list[Notice] = []
    unrecorded_since_join = False
    if req.announce_required or req.announcement_must_be_recorded:
        for p in external:
            after = [n for n in made if n.made_at >= p.joined_at]
            if req.announcement_must_be_recorded:
                if any(not n.recorded for n in after):
                    unrecorded_since_join = True
                after = [n for n in after if n.recorded]
            if after:
                qualifying.append(after[-1])
            elif req.announcement_must_be_recorded:
                soft.append(
                    f"no recorded notice has been made to {_who(p)} (the announcement must"
                    " itself be recorded: RCW 9.73.030(3))"
                )
            else:
                soft.append(f"the recording notice has not been made to {_who(p)} ({cite})")
    evidence: dict[str, Any] = {
        "jurisdiction": req.strictest,
        "mode": req.mode,
        "citations": list(req.citations),
        "consents": sorted(p.consent_id for p in granted if p.consent_id is not None),
        "announcements": sorted({n.announcement_id for n in qualifying}),
        "lawful_basis": basis,
    }
    if not hard and not soft:
        return Verdict(True, False, (), evidence)
    if not hard and req.announcement_must_be_recorded:
        if unrecorded_since_join:
            hard.append(
                "the recording notice was made while no recording was active; the"
                " announcement must itself be recorded (RCW 9.73.030(3)): start the"
                " recording before the notice and the consent question"
            )
        else:
            evidence["provisional"] = True
            return Verdict(True, True, tuple(soft), evidence)
    return Verdict(False, False, tuple(hard + soft), evidence)
