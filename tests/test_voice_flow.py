"""The default consent flow, and one full simulated call driven through reducers only,
checked with SQL at chosen offsets (``FOR SYSTEM_TIME AS OF``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from voice_support import AGENT_A, call, open_db, rejected, rows, segment, start

from consent.flow import DEFAULT_PROMPTS
from core import Database


@pytest.fixture
def db() -> Iterator[Database]:
    d = open_db()
    yield d
    d.close()


def play_all(db: Database, call_id: int) -> None:
    for (uid,) in rows(
        db,
        "SELECT id FROM utterances WHERE call_id = $1 AND status = 'queued' ORDER BY id",
        [call_id],
    ):
        call(db, "mark_playing", {"utterance_id": uid})
        call(db, "mark_played", {"utterance_id": uid, "played_ms": 1500})


def flow(db: Database, call_id: int) -> tuple:
    return rows(
        db, "SELECT state, attempts, outcome FROM call_flows WHERE call_id = $1", [call_id]
    )[0]


def test_prompts_are_seeded_with_versions_and_hashes(db: Database) -> None:
    got = {r[0]: r[1:] for r in rows(db, "SELECT name, version, sha256, text FROM prompts")}
    assert set(got) == set(DEFAULT_PROMPTS)
    for _name, (version, digest, text) in got.items():
        assert version == "v1" and digest == hashlib.sha256(text.encode()).hexdigest()
    res = call(db, "prompt_set", {"name": "greeting", "version": "v2", "text": "Hi, I am an AI."})
    assert res["duplicate"] is False
    active = rows(db, "SELECT version FROM prompts WHERE name = 'greeting' AND active")
    assert active == [("v2",)]
    rejected(
        db,
        "prompt_set",
        {"name": "greeting", "version": "v2", "text": "changed"},
        "exists with another text",
    )


def test_custom_prompts_from_module_config() -> None:
    d = open_db(
        prompts={"greeting": "Welcome to Acme. I am an AI assistant."}, prompt_version="acme-3"
    )
    c = start(d)
    call(d, "flow_start", {"call_id": c["call_id"]})
    got = rows(d, "SELECT text, prompt_version FROM ai_disclosures")
    assert got == [("Welcome to Acme. I am an AI assistant.", "acme-3")]
    d.close()


def test_dtmf_yes_records_and_hands_off(db: Database) -> None:
    c = start(db, external="US-CA")
    cid = c["call_id"]
    res = call(db, "flow_start", {"call_id": cid, "agent": AGENT_A})
    assert res["state"] == "awaiting_consent" and len(res["utterances"]) == 3
    kinds = rows(db, "SELECT kind, interruptible FROM utterances ORDER BY id")
    assert kinds == [("disclosure", False), ("prompt", False), ("prompt", False)]
    assert rows(db, "SELECT made_at FROM announcements") == [(None,)]  # not played yet
    play_all(db, cid)
    out = call(db, "dtmf", {"call_id": cid, "digits": "1", "audio_offset_ms": 8200})
    f = out["flow"]
    assert f["answer"] == "yes" and f["recording"]["status"] == "active"
    assert f["state"] == "handed_off" and f["agent"] == AGENT_A
    consent = rows(
        db,
        "SELECT participant_id, decision, method, evidence, audio_offset_ms,"
        " prompt_hash FROM consent_records",
    )
    q = DEFAULT_PROMPTS["consent_question"].encode()
    assert consent == [(c["ext"], "granted", "dtmf", "1", 8200, hashlib.sha256(q).hexdigest())]
    assert rows(db, "SELECT id FROM calls", sender=AGENT_A) == [(cid,)]


def test_answer_before_the_notice_was_played_defers_the_recording(db: Database) -> None:
    c = start(db, external="US-CA")
    cid = c["call_id"]
    call(db, "flow_start", {"call_id": cid})
    out = call(db, "dtmf", {"call_id": cid, "digits": "1"})["flow"]
    assert out["recording"]["status"] == "pending"
    assert any("notice has not been made" in w for w in out["waiting_for"])
    assert flow(db, cid)[0] == "recording"
    res = db.execute("mark_played", {"utterance_id": 2, "played_ms": 3000})  # the notice
    assert res.value["announcement"]["recording"]["status"] == "active"
    assert rows(db, f"SELECT status FROM recordings FOR SYSTEM_TIME AS OF {res.offset - 1}") == [
        ("pending",)
    ]


def test_verbal_no_wins_and_nothing_is_recorded(db: Database) -> None:
    c = start(db)
    cid = c["call_id"]
    call(db, "flow_start", {"call_id": cid, "agent": AGENT_A})
    play_all(db, cid)
    out = call(db, "transcript_append", segment(cid, "a1", "No, I don't agree to that."))
    assert out["flow"]["answer"] == "no" and out["flow"]["state"] == "handed_off"
    assert rows(db, "SELECT decision, method, evidence FROM consent_records") == [
        ("declined", "verbal", "No, I don't agree to that.")
    ]
    assert rows(db, "SELECT * FROM recordings") == []
    rejected(db, "recording_start", {"call_id": cid}, "declined recording")


def test_partials_and_the_ais_own_words_are_not_answers(db: Database) -> None:
    cid = start(db)["call_id"]
    call(db, "flow_start", {"call_id": cid})
    assert "flow" not in call(db, "transcript_append", segment(cid, "p", "yes", final=False))
    assert "flow" not in call(
        db, "transcript_append", segment(cid, "ai1", "press 1 or say yes", speaker="ai")
    )
    assert flow(db, cid)[0] == "awaiting_consent"


def test_unclear_answers_reask_then_give_up_without_a_decision(db: Database) -> None:
    cid = start(db)["call_id"]
    call(db, "flow_start", {"call_id": cid})
    first = call(db, "flow_answer", {"call_id": cid, "text": "what is this about?"})
    assert first["answer"] == "unknown" and first["state"] == "awaiting_consent"
    assert rows(db, "SELECT text FROM utterances WHERE id = $1", [first["utterance_id"]]) == [
        (DEFAULT_PROMPTS["consent_retry"],)
    ]
    second = call(db, "flow_timeout", {"call_id": cid})
    assert second["state"] == "not_recording"
    assert flow(db, cid) == ("not_recording", 2, "no_answer")
    assert rows(db, "SELECT * FROM consent_records") == []  # no decision was invented
    rejected(db, "flow_answer", {"call_id": cid, "digits": "1"}, "not waiting for an answer")
    # the call is handed over later by assignment
    assert call(db, "assign_agent", {"call_id": cid, "agent": AGENT_A})["flow"] == "handed_off"


def test_washington_flow_records_the_notice(db: Database) -> None:
    c = start(db, external="US-WA")
    cid = c["call_id"]
    res = call(db, "flow_start", {"call_id": cid})
    assert res["recording"] == {"recording_id": 1, "status": "active", "provisional": True}
    play_all(db, cid)
    assert rows(db, "SELECT recording_id FROM announcements") == [(1,)]  # on the recording
    out = call(db, "dtmf", {"call_id": cid, "digits": "1"})["flow"]
    assert out["recording"] == {"recording_id": 1, "status": "active", "provisional": False}
    basis = rows(db, "SELECT consent_basis FROM recordings")[0][0]
    assert basis["jurisdiction"] == "US-WA" and basis["announcements"] == [1]


def test_washington_flow_no_stops_the_provisional_recording_in_that_commit(db: Database) -> None:
    cid = start(db, external="US-WA")["call_id"]
    call(db, "flow_start", {"call_id": cid})
    play_all(db, cid)
    res = db.execute("dtmf", {"call_id": cid, "digits": "2"})
    assert res.value["flow"]["recording_stopped"] == 1
    q = "SELECT status, stop_reason FROM recordings FOR SYSTEM_TIME AS OF {}"
    assert rows(db, q.format(res.offset - 1)) == [("active", None)]
    assert rows(db, q.format(res.offset)) == [("stopped", "consent_declined")]


def test_full_simulated_call(db: Database) -> None:
    """call_started -> ... -> finalized recording, through reducers only; then the story is
    read back with SQL at the offsets where things happened."""
    at: dict[str, int] = {}

    def step(name: str, reducer: str, args: dict[str, Any]) -> Any:
        res = db.execute(reducer, args)
        at[name] = res.offset
        return res.value

    started = step(
        "started",
        "call_started",
        {
            "provider": "twilio",
            "provider_call_id": "CA-full",
            "direction": "inbound",
            "from_number": "+14155550100",
            "to_number": "+18005550100",
            "from_jurisdiction": "US-CA",
            "to_jurisdiction": "US",
        },
    )
    cid = started["call_id"]
    step(
        "answered",
        "provider_event",
        {
            "provider": "twilio",
            "provider_event_id": "EV-1",
            "provider_call_id": "CA-full",
            "kind": "in-progress",
        },
    )
    step("flow", "flow_start", {"call_id": cid, "agent": AGENT_A})
    for uid in (1, 2, 3):
        step(f"play{uid}", "mark_played", {"utterance_id": uid, "played_ms": 2000})
    step("consent", "dtmf", {"call_id": cid, "digits": "1", "audio_offset_ms": 9100})
    play_all(db, cid)  # "thank you" and "connecting you"
    step("t1", "transcript_append", segment(cid, "u1", "I want to pay my", final=False))
    step("t1final", "transcript_append", segment(cid, "u1", "I want to pay my bill."))
    step("say1", "say", {"call_id": cid, "text": "Sure. Please enter your card number."})
    step("pci", "recording_pause", {"call_id": cid, "reason": "pci"})
    with pytest.raises(Exception, match="pci pause"):
        db.execute("dtmf", {"call_id": cid, "digits": "4111111111111111"})
    step("resume", "recording_resume", {"call_id": cid})
    step("dtmf", "dtmf", {"call_id": cid, "digits": "#"})
    step(
        "t2",
        "transcript_append",
        segment(cid, "u2", "Thanks, that's all.", start_ms=900, end_ms=1500),
    )
    step("say2", "say", {"call_id": cid, "text": "Goodbye!"})
    hang = step("hangup", "hangup", {"call_id": cid})
    step("sent", "command_result", {"command_id": hang["command_id"], "status": "sent"})
    step(
        "ended",
        "provider_event",
        {
            "provider": "twilio",
            "provider_event_id": "EV-2",
            "provider_call_id": "CA-full",
            "kind": "completed",
        },
    )
    step(
        "done",
        "command_result",
        {"command_id": hang["command_id"], "status": "done", "result": {"sid": "CA-full"}},
    )
    step(
        "final",
        "recording_finalize",
        {
            "recording_id": 1,
            "storage_uri": "s3://rec/CA-full.wav",
            "checksum": "sha256:" + "ab" * 32,
            "key_id": "kms-1",
            "duration_ms": 61000,
        },
    )

    def q(sql: str, point: str) -> list[tuple]:
        return rows(db, sql.replace("{AT}", f"FOR SYSTEM_TIME AS OF {at[point]}"), [cid])

    status = "SELECT status FROM calls {AT} WHERE id = $1"
    assert q(status, "started") == [("ringing",)]
    assert q(status, "answered") == [("in_progress",)]
    assert q(status, "ended") == [("ended",)]
    rec = "SELECT status, pause_reason FROM recordings {AT} WHERE call_id = $1"
    assert q(rec, "play3") == []  # no recording before the consent answer
    assert q(rec, "consent") == [("active", None)]  # started in the answer's commit
    assert q(rec, "pci") == [("paused", "pci")]
    assert q(rec, "resume") == [("active", None)]
    assert q(rec, "ended") == [("stopped", None)]
    assert q(rec, "final") == [("finalized", None)]
    consent = "SELECT decision, method, evidence FROM consent_records {AT} WHERE call_id = $1"
    assert q(consent, "play3") == []
    assert q(consent, "consent") == [("granted", "dtmf", "1")]
    disc = "SELECT COUNT(*) FROM ai_disclosures {AT} WHERE call_id = $1"
    assert q(disc, "answered") == [(0,)] and q(disc, "flow") == [(1,)]
    seg = "SELECT text, is_final FROM transcript_segments {AT} WHERE call_id = $1 ORDER BY id"
    assert q(seg, "t1") == [("I want to pay my", False)]
    assert q(seg, "t1final") == [("I want to pay my bill.", True)]
    assert q(seg, "final") == [("I want to pay my bill.", True), ("Thanks, that's all.", True)]
    speech = (
        "SELECT text, status FROM utterances {AT} WHERE call_id = $1 AND kind = 'speech'"
        " ORDER BY id"
    )
    assert q(speech, "say2") == [
        ("Sure. Please enter your card number.", "queued"),
        ("Goodbye!", "queued"),
    ]
    assert q(speech, "ended") == [
        ("Sure. Please enter your card number.", "interrupted"),
        ("Goodbye!", "interrupted"),
    ]
    assert q("SELECT digits FROM dtmf_events {AT} WHERE call_id = $1 ORDER BY id", "final") == [
        ("1",),
        ("#",),
    ]
    cmd = "SELECT kind, status FROM call_commands {AT} WHERE call_id = $1"
    assert q(cmd, "hangup") == [("hangup", "pending")]
    assert q(cmd, "sent") == [("hangup", "sent")]
    assert q(cmd, "done") == [("hangup", "done")]
    assigned = "SELECT agent, active FROM agent_assignments {AT} WHERE call_id = $1"
    assert q(assigned, "flow") == [] and q(assigned, "consent") == [(AGENT_A, True)]
    # the agent's own view at the end: its call, with the transcript
    seen = rows(
        db,
        "SELECT text FROM transcript_segments WHERE call_id = $1 ORDER BY id",
        [cid],
        sender=AGENT_A,
    )
    assert [t for (t,) in seen] == ["I want to pay my bill.", "Thanks, that's all."]
    # the audit log has one entry per step, chained, ending at the last commit
    from consent.audit_verify import verify_entries

    with db.snapshot() as snap:
        entries = sorted(
            (r._asdict() for r in snap.table("audit_log").rows()), key=lambda e: e["seq"]
        )
    assert entries[-1]["offset"] == at["final"] and entries[-1]["reducer"] == "recording_finalize"
    assert verify_entries(entries).ok


def test_washington_flow_without_an_answer_stops_the_provisional_recording(db: Database) -> None:
    cid = start(db, external="US-WA")["call_id"]
    call(db, "flow_start", {"call_id": cid})
    play_all(db, cid)
    call(db, "flow_timeout", {"call_id": cid})
    res = call(db, "flow_timeout", {"call_id": cid})
    assert res["recording_stopped"] == 1 and res["state"] == "not_recording"
    got = rows(db, "SELECT status, stop_reason FROM recordings")
    assert got == [("stopped", "no_consent_answer")]
