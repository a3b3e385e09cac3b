"""The consent policy engine (pure): resolution, the strictest combination, and each rule of
``evaluate``; plus the seeded ``consent_policies`` rows and their citations."""

from __future__ import annotations

from voice_support import open_db, rows

from consent.policy import (
    DEFAULT_POLICIES,
    CallFacts,
    Notice,
    Party,
    Verdict,
    combine,
    evaluate,
    requirement_for,
    resolve,
)

POLICIES = {p.jurisdiction: p for p in DEFAULT_POLICIES}


def party(pid: int, role: str, j: str, decision: str | None = None, joined: int = 1) -> Party:
    return Party(pid, role, j, joined, decision, pid * 10 if decision else None)


def verdict(
    parties: list[Party], notices: tuple[Notice, ...] | list[Notice] = (), basis: str | None = None
) -> Verdict:
    facts = CallFacts(tuple(parties), tuple(notices), basis)
    return evaluate(requirement_for(facts, POLICIES), facts)


def test_resolution_exact_country_default() -> None:
    assert resolve("US-CA", POLICIES).jurisdiction == "US-CA"
    assert resolve("us-ca", POLICIES).jurisdiction == "US-CA"
    assert resolve("US-TX", POLICIES).jurisdiction == "US"
    assert resolve("EU-DE", POLICIES).jurisdiction == "EU"
    assert resolve("", POLICIES).jurisdiction == "DEFAULT"
    assert resolve("JP", POLICIES).jurisdiction == "DEFAULT"
    assert resolve("JP", {}).mode == "all_party"  # even without rows: strict


def test_combination_is_the_strictest() -> None:
    req = combine([POLICIES["US"], POLICIES["US-CA"]])
    assert req.mode == "all_party" and req.strictest == "US-CA" and req.announce_required
    assert req.citations[0].startswith("Cal. Penal Code § 632")
    req = combine([POLICIES["US"], POLICIES["US-WA"], POLICIES["EU"]])
    assert req.mode == "all_party"
    assert req.announcement_must_be_recorded and req.lawful_basis_required
    assert req.strictest == "US-WA"
    assert combine([POLICIES["US"]]).mode == "one_party"


def test_one_party_needs_one_grant_from_anyone() -> None:
    v = verdict([party(1, "caller", "US-TX"), party(2, "ai", "US")])
    assert not v.allowed and "one-party" in v.message() and "2511(2)(d)" in v.message()
    # the business's own recorded consent is enough where one party suffices
    assert verdict([party(1, "caller", "US-TX"), party(2, "ai", "US", "granted")]).allowed
    assert verdict([party(1, "caller", "US-TX", "granted"), party(2, "ai", "US")]).allowed


def test_a_recorded_no_blocks_everywhere() -> None:
    v = verdict([party(1, "caller", "US-TX", "declined"), party(2, "ai", "US", "granted")])
    assert not v.allowed and "declined" in v.message()
    v = verdict([party(1, "caller", "US", "revoked"), party(2, "ai", "US", "granted")])
    assert not v.allowed and "revoked" in v.message()


def test_all_party_needs_every_external_party_and_the_notice() -> None:
    parties = [party(1, "callee", "US-CA"), party(2, "ai", "US", "granted")]
    v = verdict(parties)
    assert not v.allowed
    assert "participant 1 (callee, US-CA) has not granted" in v.message()
    assert "§ 632" in v.message() and "notice has not been made" in v.message()
    parties[0] = party(1, "callee", "US-CA", "granted")
    assert not verdict(parties).allowed  # no notice yet
    v = verdict(parties, [Notice(5, 2, False)])
    assert v.allowed and not v.provisional
    assert v.basis["consents"] == [10, 20] and v.basis["announcements"] == [5]
    # a notice made before the party joined does not count for that party
    late = [party(1, "callee", "US-CA", "granted", joined=9), party(2, "ai", "US")]
    assert not verdict(late, [Notice(5, 2, False)]).allowed


def test_two_external_parties_one_all_party() -> None:
    parties = [party(1, "caller", "US-NY", "granted"), party(3, "callee", "US-FL")]
    v = verdict(parties, [Notice(5, 2, False)])
    assert not v.allowed and "participant 3 (callee, US-FL)" in v.message()
    parties[1] = party(3, "callee", "US-FL", "granted")
    assert verdict(parties, [Notice(5, 2, False)]).allowed


def test_unknown_jurisdiction_is_all_party() -> None:
    v = verdict([party(1, "caller", ""), party(2, "ai", "US", "granted")])
    assert not v.allowed and "unknown jurisdiction" in v.message()


def test_washington_notice_must_be_recorded() -> None:
    wa = [party(1, "caller", "US-WA"), party(2, "ai", "US")]
    # before the notice and the answer: a provisional start to capture the notice
    v = verdict(wa)
    assert v.allowed and v.provisional
    v = verdict(wa, [Notice(5, 2, True)])
    assert v.allowed and v.provisional  # notice on tape, answer pending
    granted = [party(1, "caller", "US-WA", "granted"), party(2, "ai", "US")]
    v = verdict(granted, [Notice(5, 2, True)])
    assert v.allowed and not v.provisional
    # the notice was played while nothing was recording: refused, even with consent
    v = verdict(granted, [Notice(5, 2, False)])
    assert not v.allowed and "9.73.030(3)" in v.message()
    assert not verdict(wa, [Notice(5, 2, False)]).allowed
    # a no is never bridged by the provisional start
    assert not verdict([party(1, "caller", "US-WA", "declined"), party(2, "ai", "US")]).allowed


def test_gdpr_notice_and_lawful_basis() -> None:
    eu = [party(1, "caller", "EU"), party(2, "ai", "EU")]
    v = verdict(eu, [Notice(5, 2, False)])
    assert not v.allowed and "lawful basis" in v.message()
    v = verdict(eu, [], "legitimate_interests")
    assert not v.allowed and "notice" in v.message()
    assert verdict(eu, [Notice(5, 2, False)], "legitimate_interests").allowed
    # consent as the basis: every data subject must have granted (Art. 7(1))
    v = verdict(eu, [Notice(5, 2, False)], "consent")
    assert not v.allowed and "lawful basis consent" in v.message()
    eu[0] = party(1, "caller", "EU", "granted")
    v = verdict(eu, [Notice(5, 2, False)], "consent")
    assert v.allowed and v.basis["lawful_basis"] == "consent"
    gb = verdict([party(1, "caller", "GB"), party(2, "ai", "GB")], [Notice(1, 2, False)])
    assert not gb.allowed and "Art. 6(1)" in gb.message()


def test_seeded_policies_with_citations() -> None:
    db = open_db()
    got = {
        r[0]: r
        for r in rows(
            db,
            "SELECT jurisdiction, mode, announce_required,"
            " announcement_must_be_recorded, lawful_basis_required,"
            " citation FROM consent_policies",
        )
    }
    all_party = {
        "US-CA",
        "US-CT",
        "US-FL",
        "US-IL",
        "US-MD",
        "US-MA",
        "US-MT",
        "US-NH",
        "US-PA",
        "US-WA",
        "US-DE",
        "US-MI",
        "US-NV",
        "DEFAULT",
    }
    assert {j for j, r in got.items() if r[1] == "all_party"} == all_party
    assert got["US"][1:] == ("one_party", False, False, False, "18 U.S.C. § 2511(2)(d)")
    assert "Penal Code § 632" in got["US-CA"][5]
    assert "§ 934.03" in got["US-FL"][5]
    assert "720 ILCS 5/14-2" in got["US-IL"][5]
    assert "ch. 272" in got["US-MA"][5] or "c. 272 § 99" in got["US-MA"][5]
    assert "18 Pa.C.S. § 5704" in got["US-PA"][5]
    assert got["US-WA"][3] is True and "9.73.030(3)" in got["US-WA"][5]
    for code in ("EU", "GB"):
        assert got[code][2] is True and got[code][4] is True and "Art. 6" in got[code][5]
    assert "Art. 13" in got["EU"][5]
    db.close()
