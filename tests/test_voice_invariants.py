"""The voice module's invariants as transactions: each refusal rolls back with no trace
(every table, the audit log included, and the offset unchanged), each forced effect
(a revocation stopping a recording) lands in the same commit as its cause."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from voice_support import (
    announce,
    call,
    consent_args,
    disclose,
    grant,
    open_db,
    rejected,
    rows,
    segment,
    start,
    state,
)

from core import Database


@pytest.fixture
def db() -> Iterator[Database]:
    d = open_db()
    yield d
    d.close()


def recording(db: Database, call_id: int) -> tuple:
    got = rows(
        db,
        "SELECT id, status, pause_reason, stop_reason, provisional FROM recordings"
        " WHERE call_id = $1 ORDER BY id DESC LIMIT 1",
        [call_id],
    )
    return got[0]


# ---------------------------------------------------------------- no recording without consent


def test_recording_without_consent_is_refused(db: Database) -> None:
    c = start(db)
    err = rejected(db, "recording_start", {"call_id": c["call_id"]}, "may not become active")
    assert "no party to the call has granted" in err.message
    assert "18 U.S.C. § 2511(2)(d)" in err.message
    assert rows(db, "SELECT * FROM recordings") == []
    grant(db, c["call_id"], c["ext"])
    res = call(db, "recording_start", {"call_id": c["call_id"]})
    assert res["status"] == "active" and not res["provisional"]
    basis = rows(db, "SELECT consent_basis FROM recordings")[0][0]
    assert basis["consents"] == [1] and basis["mode"] == "one_party"


def test_all_party_callee_with_only_one_partys_consent(db: Database) -> None:
    c = start(db, direction="outbound", external="US-CA", business="US")
    cid = c["call_id"]
    assert c["jurisdiction"] == "US-CA"
    announce(db, cid)
    grant(db, cid, c["ai"], method="prior_consent", evidence="business recording policy")
    err = rejected(db, "recording_start", {"call_id": cid}, "may not become active")
    assert f"participant {c['ext']} (callee, US-CA) has not granted" in err.message
    assert "Cal. Penal Code § 632" in err.message
    grant(db, cid, c["ext"])
    assert call(db, "recording_start", {"call_id": cid})["status"] == "active"


def test_all_party_needs_the_notice(db: Database) -> None:
    c = start(db, external="US-FL")
    grant(db, c["call_id"], c["ext"])
    err = rejected(db, "recording_start", {"call_id": c["call_id"]}, "notice has not been made")
    assert "§ 934.03" in err.message
    announce(db, c["call_id"])
    assert call(db, "recording_start", {"call_id": c["call_id"]})["status"] == "active"


def test_a_joining_all_party_participant_pauses_the_recording(db: Database) -> None:
    c = start(db, external="US-NY")
    cid = c["call_id"]
    grant(db, cid, c["ext"])
    call(db, "recording_start", {"call_id": cid})
    res = db.execute(
        "participant_join",
        {"call_id": cid, "role": "callee", "identity": "+13055550100", "jurisdiction": "US-FL"},
    )
    assert res.value["recording"]["status"] == "paused"
    assert res.value["jurisdiction"] == "US-FL"
    assert recording(db, cid)[1:3] == ("paused", "consent_pending")
    at = res.offset
    # the same commit: the recording was active just before and paused right at it
    assert rows(db, f"SELECT status FROM recordings FOR SYSTEM_TIME AS OF {at - 1}") == [
        ("active",)
    ]
    announce(db, cid)
    res = call(db, "consent_grant", consent_args(cid, res.value["participant_id"]))
    assert res["recording"]["status"] == "active"  # resumed when the consent is complete
    assert recording(db, cid)[1:3] == ("active", None)


def test_deferred_recording_activates_in_the_commit_that_completes_consent(db: Database) -> None:
    c = start(db, external="US-CA")
    cid = c["call_id"]
    res = call(db, "recording_start", {"call_id": cid, "defer": True})
    assert res["status"] == "pending" and len(res["waiting_for"]) == 2
    announce(db, cid)
    assert recording(db, cid)[1] == "pending"
    out = db.execute("consent_grant", consent_args(cid, c["ext"]))
    assert out.value["recording"]["status"] == "active"
    assert rows(db, f"SELECT status FROM recordings FOR SYSTEM_TIME AS OF {out.offset - 1}") == [
        ("pending",)
    ]


# ---------------------------------------------------------------- Washington: record the notice


def test_washington_notice_played_before_recording_is_refused(db: Database) -> None:
    c = start(db, external="US-WA")
    cid = c["call_id"]
    announce(db, cid)  # no recording is active: the notice is not on tape
    grant(db, cid, c["ext"])
    err = rejected(db, "recording_start", {"call_id": cid}, "RCW 9.73.030")
    assert "announcement must itself be recorded" in err.message


def test_washington_recording_starts_before_the_notice(db: Database) -> None:
    c = start(db, external="US-WA")
    cid = c["call_id"]
    disclose(db, cid)
    res = call(db, "recording_start", {"call_id": cid})
    assert res == {"recording_id": 1, "status": "active", "provisional": True}
    # while provisional, the agent may not talk past the consent question
    rejected(db, "say", {"call_id": cid, "text": "So, about your account"}, "consent answer")
    a = announce(db, cid)
    assert a["recorded"] is True
    res = grant(db, cid, c["ext"])
    assert res["recording"] == {"recording_id": 1, "status": "active", "provisional": False}
    basis = rows(db, "SELECT consent_basis FROM recordings")[0][0]
    assert basis["announcements"] == [a["announcement_id"]] and basis["jurisdiction"] == "US-WA"
    call(db, "say", {"call_id": cid, "text": "How can I help?"})


def test_washington_decline_stops_the_provisional_recording(db: Database) -> None:
    c = start(db, external="US-WA")
    cid = c["call_id"]
    call(db, "recording_start", {"call_id": cid})
    announce(db, cid)
    res = db.execute("consent_decline", consent_args(cid, c["ext"], evidence="2"))
    assert res.value["recording_stopped"] == 1
    assert recording(db, cid)[1:4] == ("stopped", None, "consent_declined")
    rejected(db, "recording_start", {"call_id": cid}, "declined recording")


# ---------------------------------------------------------------- revocation


def test_revocation_stops_the_recording_in_the_same_commit(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    grant(db, cid, c["ext"])
    call(db, "recording_start", {"call_id": cid})
    res = db.execute(
        "consent_revoke", consent_args(cid, c["ext"], method="verbal", evidence="stop recording me")
    )
    assert res.value["recording_stopped"] == 1
    off = res.offset
    q = "SELECT status, stop_reason FROM recordings FOR SYSTEM_TIME AS OF {}"
    assert rows(db, q.format(off - 1)) == [("active", None)]
    assert rows(db, q.format(off)) == [("stopped", "consent_revoked")]
    got = rows(db, f"SELECT decision FROM consent_records FOR SYSTEM_TIME AS OF {off} ORDER BY id")
    assert got == [("granted",), ("revoked",)]
    rejected(db, "recording_start", {"call_id": cid}, "revoked recording")
    # consent given again: a new recording (the stopped one keeps its own basis)
    grant(db, cid, c["ext"], evidence="yes again", method="verbal")
    assert call(db, "recording_start", {"call_id": cid})["recording_id"] == 2


def test_consent_state_machine(db: Database) -> None:
    c = start(db)
    cid, ext = c["call_id"], c["ext"]
    rejected(db, "consent_revoke", consent_args(cid, ext), "cannot go from 'none' to 'revoked'")
    grant(db, cid, ext)
    rejected(db, "consent_grant", consent_args(cid, ext), "from 'granted' to 'granted'")
    rejected(db, "consent_decline", consent_args(cid, ext), "from 'granted' to 'declined'")
    rejected(db, "consent_grant", consent_args(cid, ext, method="telepathy"), "consent method")
    rejected(db, "consent_grant", consent_args(cid, 99), "no participant 99")
    rejected(db, "consent_grant", consent_args(cid, ext, prompt_text=""), "exact text")
    rejected(db, "consent_grant", consent_args(cid, ext, evidence=" "), "evidence")


def test_prompt_hash_is_stored(db: Database) -> None:
    import hashlib

    c = start(db)
    grant(db, c["call_id"], c["ext"], prompt_version="v7", prompt_text="Press 1 to agree.")
    got = rows(
        db, "SELECT prompt_version, prompt_hash, prompt_text, evidence, method FROM consent_records"
    )
    digest = hashlib.sha256(b"Press 1 to agree.").hexdigest()
    assert got == [("v7", digest, "Press 1 to agree.", "1", "dtmf")]


# ---------------------------------------------------------------- PCI pause


def test_pci_pause_blocks_transcription_and_dtmf_until_resume(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    grant(db, cid, c["ext"])
    call(db, "recording_start", {"call_id": cid})
    call(db, "transcript_append", segment(cid, "s1", "I'd like to pay"))
    res = call(db, "recording_pause", {"call_id": cid, "reason": "pci"})
    assert res == {"call_id": cid, "recording_id": 1, "transcription_paused": True}
    assert recording(db, cid)[1:3] == ("paused", "pci")
    card = segment(cid, "s2", "4111 1111 1111 1111")
    rejected(db, "transcript_append", card, "pci pause")
    rejected(db, "dtmf", {"call_id": cid, "digits": "4111"}, "pci pause")
    rejected(db, "recording_start", {"call_id": cid}, "already has recording")
    assert "4111" not in repr(state(db))
    call(db, "recording_resume", {"call_id": cid})
    assert recording(db, cid)[1:3] == ("active", None)
    call(db, "transcript_append", segment(cid, "s3", "thanks"))
    texts = rows(db, "SELECT text FROM transcript_segments ORDER BY id")
    assert texts == [("I'd like to pay",), ("thanks",)]


def test_pci_pause_without_a_recording_still_pauses_transcription(db: Database) -> None:
    c = start(db, external="US-CA")
    cid = c["call_id"]
    call(db, "recording_start", {"call_id": cid, "defer": True})
    res = call(db, "recording_pause", {"call_id": cid, "reason": "pci"})
    assert res["recording_id"] is None and res["transcription_paused"]
    rejected(db, "transcript_append", segment(cid, "s1", "4111"), "pci pause")
    # consent completing during the pause does not start the deferred recording
    announce(db, cid)
    grant(db, cid, c["ext"])
    assert recording(db, cid)[1] == "pending"
    res = call(db, "recording_resume", {"call_id": cid})
    assert res["transcription_resumed"]
    call(db, "transcript_append", segment(cid, "s1", "done"))
    rejected(db, "recording_pause", {"call_id": cid, "reason": "hold"}, "no active recording")


def test_resume_rechecks_consent(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    grant(db, cid, c["ext"])
    call(db, "recording_start", {"call_id": cid})
    call(db, "recording_pause", {"call_id": cid, "reason": "hold"})
    call(
        db,
        "participant_join",
        {"call_id": cid, "role": "callee", "identity": "+1", "jurisdiction": "US-CA"},
    )
    rejected(db, "recording_resume", {"call_id": cid}, "has not granted")
    rejected(db, "recording_resume", {"call_id": 42}, "no such call")


# ---------------------------------------------------------------- AI disclosure before speech


def test_utterance_before_disclosure_is_refused(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    rejected(db, "say", {"call_id": cid, "text": "Hi there"}, "AI disclosure")
    res = disclose(db, cid)
    got = rows(db, "SELECT id, kind, status, interruptible FROM utterances")
    assert got == [(res["utterance_id"], "disclosure", "queued", False)]
    assert call(db, "say", {"call_id": cid, "text": "Hi there"})["utterance_id"] == 2


def test_nothing_is_said_before_the_call_is_answered(db: Database) -> None:
    c = start(db, answer=False)
    rejected(
        db,
        "ai_disclose",
        {"call_id": c["call_id"], "prompt_version": "v1", "prompt_text": "AI"},
        "not been answered",
    )
    rejected(db, "recording_start", {"call_id": c["call_id"]}, "not been answered")


# ---------------------------------------------------------------- idempotent replays


def test_call_started_replayed_changes_nothing(db: Database) -> None:
    first = start(db, answer=False)
    voice = {k: v for k, v in state(db).items() if not k.startswith("audit")}
    again = start(db, answer=False)
    assert again["call_id"] == first["call_id"] and again["duplicate"] is True
    assert again["participants"] == first["participants"]
    assert {k: v for k, v in state(db).items() if not k.startswith("audit")} == voice
    last = rows(db, "SELECT reducer, outcome FROM audit_log ORDER BY seq DESC LIMIT 1")
    assert last == [("call_started", "duplicate")]


def test_provider_events_replayed_change_nothing(db: Database) -> None:
    c = start(db, answer=False)
    ev = {
        "provider": "twilio",
        "provider_event_id": "EV1",
        "provider_call_id": "CA1",
        "kind": "in-progress",
        "payload": {"CallStatus": "in-progress"},
    }
    res = call(db, "provider_event", ev)
    assert res["applied"] and res["note"] == "call answered"
    assert rows(db, "SELECT status FROM calls") == [("in_progress",)]
    voice = {k: v for k, v in state(db).items() if not k.startswith("audit")}
    for _ in range(2):
        res = call(db, "provider_event", ev)
        assert res["duplicate"] and res["event_id"] == 1
        assert {k: v for k, v in state(db).items() if not k.startswith("audit")} == voice
    # an out-of-order callback is logged, not applied
    late = {**ev, "provider_event_id": "EV0", "kind": "ringing"}
    assert call(db, "provider_event", late)["applied"] is False
    stale = {**ev, "provider_event_id": "EV2", "kind": "no-answer"}
    assert "answered call cannot end" in call(db, "provider_event", stale)["note"]
    done = {**ev, "provider_event_id": "EV3", "kind": "completed"}
    assert call(db, "provider_event", done)["applied"]
    assert rows(db, "SELECT status, end_reason FROM calls WHERE id = $1", [c["call_id"]]) == [
        ("ended", "completed")
    ]
    got = rows(db, "SELECT provider_event_id, applied FROM call_events ORDER BY id")
    assert got == [("EV1", True), ("EV0", False), ("EV2", False), ("EV3", True)]


def test_transcript_partials_finals_and_replays(db: Database) -> None:
    cid = start(db)["call_id"]
    a = call(db, "transcript_append", segment(cid, "k1", "I want", final=False))
    b = call(db, "transcript_append", segment(cid, "k1", "I want to pay", final=False))
    c = call(db, "transcript_append", segment(cid, "k1", "I want to pay my bill."))
    assert a["segment_id"] == b["segment_id"] == c["segment_id"] and c["replaced"]
    voice = {k: v for k, v in state(db).items() if not k.startswith("audit")}
    assert call(db, "transcript_append", segment(cid, "k1", "I want to pay my bill."))["duplicate"]
    assert call(db, "transcript_append", segment(cid, "k1", "I want", final=False))["duplicate"]
    assert {k: v for k, v in state(db).items() if not k.startswith("audit")} == voice
    rejected(db, "transcript_append", segment(cid, "k1", "changed"), "final already")
    assert rows(db, "SELECT text, is_final FROM transcript_segments") == [
        ("I want to pay my bill.", True)
    ]


def test_commands_are_idempotent_by_key(db: Database) -> None:
    cid = start(db)["call_id"]
    h1 = call(db, "hangup", {"call_id": cid})
    h2 = call(db, "hangup", {"call_id": cid})
    assert h1["command_id"] == h2["command_id"] and h2["duplicate"]
    t = call(db, "transfer", {"call_id": cid, "target": "+18005550100"})
    assert t["command_id"] != h1["command_id"]
    call(db, "command_result", {"command_id": h1["command_id"], "status": "sent"})
    call(
        db,
        "command_result",
        {
            "command_id": h1["command_id"],
            "status": "done",
            "result": {"provider_status": "completed"},
        },
    )
    again = call(db, "command_result", {"command_id": h1["command_id"], "status": "done"})
    assert again["duplicate"]
    rejected(
        db,
        "command_result",
        {"command_id": h1["command_id"], "status": "failed"},
        "from 'done' to 'failed'",
    )
    rejected(
        db,
        "command_result",
        {"command_id": t["command_id"], "status": "queued"},
        "unknown command state",
    )


# ---------------------------------------------------------------- state machines and end of call


def test_call_state_machine(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    rejected(db, "call_answered", {"call_id": cid}, "from 'in_progress' to 'in_progress'")
    rejected(db, "call_ended", {"call_id": cid, "reason": "no_answer"}, "was answered")
    rejected(db, "call_ended", {"call_id": cid, "reason": "exploded"}, "end reason")
    call(db, "call_ended", {"call_id": cid})
    rejected(db, "call_answered", {"call_id": cid}, "'ended' is final")
    rejected(db, "call_ended", {"call_id": cid}, "'ended' is final")
    other = start(db, pcid="CA2", answer=False)
    call(db, "call_ended", {"call_id": other["call_id"], "reason": "busy"})


def test_recording_state_machine(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    grant(db, cid, c["ext"])
    rid = call(db, "recording_start", {"call_id": cid})["recording_id"]
    fin = {
        "recording_id": rid,
        "storage_uri": "s3://rec/1.wav",
        "checksum": "sha256:ab",
        "key_id": "k1",
        "duration_ms": 1000,
    }
    rejected(db, "recording_finalize", fin, "from 'active' to 'finalized'")
    rejected(db, "recording_resume", {"call_id": cid}, "nothing is paused")
    rejected(db, "recording_start", {"call_id": cid}, "already has recording")
    call(db, "recording_stop", {"call_id": cid})
    rejected(db, "recording_stop", {"call_id": cid}, "no recording to stop")
    call(db, "recording_finalize", fin)
    rejected(db, "recording_finalize", fin, "'finalized' is final")


def test_utterance_state_machine(db: Database) -> None:
    cid = start(db)["call_id"]
    disclose(db, cid)
    uid = call(db, "say", {"call_id": cid, "text": "hello"})["utterance_id"]
    call(db, "mark_playing", {"utterance_id": uid})
    rejected(db, "mark_playing", {"utterance_id": uid}, "from 'playing' to 'playing'")
    call(db, "mark_played", {"utterance_id": uid, "played_ms": 700})
    rejected(db, "mark_played", {"utterance_id": uid, "played_ms": 1}, "'played' is final")
    u2 = call(db, "say", {"call_id": cid, "text": "more"})["utterance_id"]
    res = call(db, "interrupt", {"call_id": cid})
    assert res["interrupted"] == [u2] and res["command_id"] is not None
    # the disclosure is not interruptible: barge-in does not cut the legal text
    assert rows(db, "SELECT status FROM utterances WHERE id = 1") == [("queued",)]
    got = rows(db, "SELECT kind, status FROM call_commands")
    assert got == [("clear", "pending")]


def test_nothing_after_the_call_ended_but_finalize_and_results(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    disclose(db, cid)
    grant(db, cid, c["ext"])
    rid = call(db, "recording_start", {"call_id": cid})["recording_id"]
    hang = call(db, "hangup", {"call_id": cid})
    res = call(db, "call_ended", {"call_id": cid})
    assert res["recording_stopped"] == rid and res["utterances_interrupted"] == [1]
    for reducer, args in [
        ("say", {"call_id": cid, "text": "hi"}),
        ("recording_start", {"call_id": cid}),
        ("recording_pause", {"call_id": cid, "reason": "pci"}),
        ("transcript_append", segment(cid, "x", "late")),
        ("dtmf", {"call_id": cid, "digits": "1"}),
        ("consent_grant", consent_args(cid, c["ext"], evidence="2")),
        ("consent_revoke", consent_args(cid, c["ext"])),
        ("transfer", {"call_id": cid, "target": "+1800"}),
        ("participant_join", {"call_id": cid, "role": "callee", "identity": "+1"}),
        ("assign_agent", {"call_id": cid, "agent": "c" * 64}),
        ("flow_start", {"call_id": cid}),
    ]:
        rejected(db, reducer, args, "has ended")
    assert call(db, "hangup", {"call_id": cid})["duplicate"]  # a retried hangup: its result
    call(db, "command_result", {"command_id": hang["command_id"], "status": "done"})
    call(
        db,
        "recording_finalize",
        {
            "recording_id": rid,
            "storage_uri": "s3://r/1",
            "checksum": "sha256:00",
            "key_id": "k",
            "duration_ms": 9,
        },
    )
    assert rows(db, "SELECT status FROM recordings") == [("finalized",)]


def test_lawful_basis_change_cannot_strand_a_recording(db: Database) -> None:
    c = start(db, external="EU", business="EU")
    cid = c["call_id"]
    announce(db, cid)
    rejected(db, "recording_start", {"call_id": cid}, "lawful basis")
    call(
        db,
        "set_lawful_basis",
        {"call_id": cid, "basis": "legitimate_interests", "reference": "LIA-2026-01"},
    )
    assert call(db, "recording_start", {"call_id": cid})["status"] == "active"
    rejected(db, "set_lawful_basis", {"call_id": cid, "basis": "consent"}, "stop the recording")
    rejected(db, "set_lawful_basis", {"call_id": cid, "basis": "vibes"}, "lawful basis must be")
