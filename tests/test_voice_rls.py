"""Row-level security of the voice module: an agent identity sees and acts on only the calls
assigned to it; consent evidence is written by system identities only; audit tables are
invisible to non-system SQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from voice_support import (
    AGENT_A,
    AGENT_B,
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
)

from core import Database
from core.errors import PolicyViolation, SqlError
from core.subscriptions import SubscriptionManager

TwoCalls = tuple[Database, int, int]

CALL_TABLES = [
    "calls",
    "participants",
    "transcript_segments",
    "utterances",
    "recordings",
    "consent_records",
    "dtmf_events",
    "call_commands",
    "announcements",
    "ai_disclosures",
]


@pytest.fixture
def two_calls() -> Iterator[TwoCalls]:
    db = open_db()
    a = start(db, pcid="CA-A")
    b = start(db, pcid="CA-B")
    for c in (a, b):
        cid = c["call_id"]
        disclose(db, cid)
        announce(db, cid)
        grant(db, cid, c["ext"])
        call(db, "recording_start", {"call_id": cid})
        call(db, "transcript_append", segment(cid, "s1", f"hello from call {cid}"))
        call(db, "dtmf", {"call_id": cid, "digits": "5"})
        call(db, "hangup", {"call_id": cid, "key": "test"})
    call(db, "assign_agent", {"call_id": a["call_id"], "agent": AGENT_A})
    call(db, "assign_agent", {"call_id": b["call_id"], "agent": AGENT_B})
    yield db, a["call_id"], b["call_id"]
    db.close()


def test_agents_see_only_their_calls(two_calls: TwoCalls) -> None:
    db, ca, cb = two_calls
    for table in CALL_TABLES:
        key = "id" if table == "calls" else "call_id"
        assert {r[0] for r in rows(db, f"SELECT {key} FROM {table}")} == {ca, cb}
        assert {r[0] for r in rows(db, f"SELECT {key} FROM {table}", sender=AGENT_A)} == {ca}
        assert {r[0] for r in rows(db, f"SELECT {key} FROM {table}", sender=AGENT_B)} == {cb}
    assert rows(db, "SELECT call_id FROM agent_assignments", sender=AGENT_A) == [(ca,)]
    q = "SELECT text FROM transcript_segments WHERE call_id = $1"
    assert rows(db, q, [cb], sender=AGENT_A) == []
    assert rows(db, q, [ca], sender=AGENT_A) == [(f"hello from call {ca}",)]
    # a stranger sees nothing; everyone may read the (public) policy table
    stranger = "c" * 64
    assert rows(db, "SELECT * FROM calls", sender=stranger) == []
    assert len(rows(db, "SELECT * FROM consent_policies", sender=stranger)) > 10


def test_audit_tables_are_private(two_calls: TwoCalls) -> None:
    db, _, _ = two_calls
    for table in ("audit_log", "audit_checkpoints", "audit_state"):
        with pytest.raises(SqlError, match="no table"):
            rows(db, f"SELECT * FROM {table}", sender=AGENT_A)
        rows(db, f"SELECT * FROM {table}")  # the system reads them


def test_agent_b_cannot_act_on_agent_as_call(two_calls: TwoCalls) -> None:
    db, ca, _cb = two_calls
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("say", {"call_id": ca, "text": "hi"}),
        ("interrupt", {"call_id": ca}),
        ("hangup", {"call_id": ca}),
        ("transfer", {"call_id": ca, "target": "+1800"}),
        ("recording_pause", {"call_id": ca, "reason": "pci"}),
    ]
    for reducer, args in attempts:
        rejected(db, reducer, args, f"no such call: {ca}", caller=AGENT_B)
    rejected(db, "say", {"call_id": 999, "text": "hi"}, "no such call: 999", caller=AGENT_B)
    # a retried hangup with A's key does not reveal A's command either
    rejected(db, "hangup", {"call_id": ca, "key": "test"}, "no such call", caller=AGENT_B)


def test_agents_act_on_their_own_calls(two_calls: TwoCalls) -> None:
    db, ca, _cb = two_calls
    u = db.execute("say", {"call_id": ca, "text": "How can I help?"}, caller=AGENT_A).value
    got = rows(db, "SELECT requested_by, text FROM utterances WHERE id = $1", [u["utterance_id"]])
    assert got == [(AGENT_A, "How can I help?")]
    t = db.execute("transfer", {"call_id": ca, "target": "+18005550100"}, caller=AGENT_A).value
    assert t["status"] == "pending"
    # the AI agent knows when payment capture starts: it may pause for PCI, and resume
    db.execute("recording_pause", {"call_id": ca, "reason": "pci"}, caller=AGENT_A)
    db.execute("recording_resume", {"call_id": ca}, caller=AGENT_A)
    last = rows(db, "SELECT actor, reducer FROM audit_log ORDER BY seq DESC LIMIT 1")
    assert last == [(AGENT_A, "recording_resume")]


def test_agents_cannot_write_evidence_or_signalling(two_calls: TwoCalls) -> None:
    db, ca, _ = two_calls
    ext = rows(db, "SELECT id FROM participants WHERE call_id = $1 AND role = 'caller'", [ca])
    for reducer, args in [
        ("consent_revoke", consent_args(ca, ext[0][0])),
        ("ai_disclose", {"call_id": ca, "prompt_version": "v1", "prompt_text": "AI"}),
        ("consent_announce", {"call_id": ca, "prompt_version": "v1", "prompt_text": "rec"}),
        ("call_ended", {"call_id": ca}),
        ("assign_agent", {"call_id": ca, "agent": AGENT_B}),
        ("transcript_append", segment(ca, "s9", "forged")),
        (
            "policy_set",
            {
                "jurisdiction": "US-CA",
                "mode": "one_party",
                "announce_required": False,
                "announcement_must_be_recorded": False,
                "lawful_basis_required": False,
                "citation": "none",
                "source": "agent",
            },
        ),
    ]:
        err = rejected(db, reducer, args, "row-level security|no visible row", caller=AGENT_A)
        assert isinstance(err, PolicyViolation), (reducer, err)
    with pytest.raises(PolicyViolation):
        db.execute(
            "call_started",
            {
                "provider": "x",
                "provider_call_id": "y",
                "direction": "inbound",
                "from_number": "1",
                "to_number": "2",
            },
            caller=AGENT_A,
        )


def test_media_and_provider_reports_are_system_only(two_calls: TwoCalls) -> None:
    db, ca, _ = two_calls
    cmd = rows(db, "SELECT id FROM call_commands WHERE call_id = $1", [ca])[0][0]
    call(db, "recording_stop", {"call_id": ca})
    rec = rows(db, "SELECT id FROM recordings WHERE call_id = $1", [ca])[0][0]
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("mark_played", {"utterance_id": 1, "played_ms": 1}),
        ("mark_playing", {"utterance_id": 1}),
        ("command_result", {"command_id": cmd, "status": "done"}),
        (
            "recording_finalize",
            {
                "recording_id": rec,
                "storage_uri": "s3://fake",
                "checksum": "x",
                "key_id": "k",
                "duration_ms": 1,
            },
        ),
    ]
    for reducer, args in attempts:
        rejected(db, reducer, args, "reserved for system identities", caller=AGENT_A)


def test_unassignment_hides_the_call_and_subscriptions_follow(two_calls: TwoCalls) -> None:
    db, ca, _ = two_calls
    mgr = SubscriptionManager(db)
    deltas: list[Any] = []
    mgr.hooks.append(lambda offset, changed: deltas.extend(changed.values()))
    sql = "SELECT id, text FROM transcript_segments WHERE call_id = $1"
    sub, initial = mgr.subscribe(sql, [ca], sender=AGENT_A)
    assert [r[1] for r in initial] == [f"hello from call {ca}"]
    _, none = mgr.subscribe(sql, [ca], sender=AGENT_B)
    assert none == []
    call(db, "transcript_append", segment(ca, "s2", "more words"))
    assert [r[1] for r in deltas[-1].inserts] == ["more words"]
    call(db, "unassign_agent", {"call_id": ca, "agent": AGENT_A})
    assert sorted(r[1] for r in deltas[-1].deletes) == [f"hello from call {ca}", "more words"]
    assert sub.rows() == []
    assert rows(db, "SELECT * FROM calls", sender=AGENT_A) == []
    rejected(db, "say", {"call_id": ca, "text": "still here?"}, "no such call", caller=AGENT_A)
    call(db, "assign_agent", {"call_id": ca, "agent": AGENT_A})
    assert rows(db, "SELECT id FROM calls", sender=AGENT_A) == [(ca,)]
    assert len(sub.rows()) == 2
    mgr.close()
