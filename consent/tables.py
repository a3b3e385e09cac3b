"""The tables of the ``voice`` system module and their row-level security.

Every fact about a call is a row here: signalling (calls, call_events, participants),
consent evidence (consent_policies, consent_records, announcements, ai_disclosures,
lawful_bases), media state (recordings, transcription_pauses, transcript_segments,
utterances, dtmf_events), the outbox of provider actions (call_commands), who may see a
call (agent_assignments), the default flow (prompts, call_flows) and the audit chain
(audit_log, audit_checkpoints, audit_state; private).

Invariant kept here (row-level security, applied by core to every read path and to the
reducers' table handles of a non-system caller): an agent identity sees a call's rows only
while an active ``agent_assignments`` row names it, and it can write only the tables an
agent's own actions touch (utterances, call_commands, recordings, transcription_pauses);
every consent, disclosure and signalling table is written by system identities only, so an
agent can never fabricate consent evidence. Audit tables are invisible to non-system SQL.
"""

from __future__ import annotations

from core.module import Module, btree, column, index, read_policy, write_policy
from core.schema import PolicyDef
from core.types import Identity, Timestamp

ASSIGNED = "call_id IN (SELECT call_id FROM agent_assignments WHERE agent = :sender AND active)"
"""A call-scoped row is visible to the agents actively assigned to its call."""

SYSTEM_WRITES = write_policy("system_writes_only", "FALSE")
"""No non-system caller may insert, update or delete (system identities bypass RLS)."""


def call_scoped(*, agent_writable: bool = False, key: str = "call_id") -> list[PolicyDef]:
    pred = ASSIGNED if key == "call_id" else ASSIGNED.replace("call_id IN", f"{key} IN", 1)
    out = [read_policy("assigned_agents", pred)]
    if not agent_writable:
        out.append(SYSTEM_WRITES)
    return out


def declare_tables(mod: Module) -> None:
    """Add every table of the voice module to ``mod``."""

    @mod.table(
        name="calls",
        primary_key="id",
        unique=[("provider", "provider_call_id")],
        indexes=[btree("by_started", "started_at"), index("by_status", "status")],
        policies=call_scoped(key="id"),
    )
    class Calls:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        provider: str
        provider_call_id: str
        direction: str
        from_number: str
        to_number: str
        jurisdiction: str  # the strictest of the present participants' jurisdictions
        status: str
        started_at: Timestamp
        answered_at: Timestamp | None = None
        ended_at: Timestamp | None = None
        end_reason: str | None = None

    @mod.table(
        name="call_events",
        primary_key="id",
        unique=[("provider", "provider_event_id")],
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(),
    )
    class CallEvents:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        provider: str
        provider_event_id: str
        provider_call_id: str
        call_id: int | None
        kind: str
        payload: dict | None
        received_at: Timestamp
        applied: bool
        note: str

    @mod.table(
        name="participants",
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(),
    )
    class Participants:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        role: str  # caller | callee (external) | agent | ai (the business side)
        identity: str  # phone number, SIP URI or voicehub identity
        jurisdiction: str
        joined_at: Timestamp
        left_at: Timestamp | None = None

    @mod.table(name="consent_policies", primary_key="jurisdiction", policies=[SYSTEM_WRITES])
    class ConsentPolicies:
        jurisdiction: str  # "US", "US-CA", "EU", "GB", "DEFAULT"
        mode: str  # one_party | all_party
        announce_required: bool
        announcement_must_be_recorded: bool
        lawful_basis_required: bool
        citation: str
        source: str
        updated_at: Timestamp

    @mod.table(
        name="consent_records",
        primary_key="id",
        indexes=[index("by_call", "call_id"), index("by_party_kind", "participant_id", "kind")],
        policies=call_scoped(),
    )
    class ConsentRecords:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        participant_id: int
        kind: str  # recording | ai
        decision: str  # granted | declined | revoked
        method: str  # dtmf | verbal | web | prior_consent
        prompt_version: str
        prompt_hash: str  # sha256 of prompt_text
        prompt_text: str
        evidence: str  # the digit pressed or the recognized text
        at: Timestamp
        audio_offset_ms: int | None = None
        recording_id: int | None = None  # the recording active when it was captured

    @mod.table(
        name="announcements",
        primary_key="id",
        indexes=[index("by_call", "call_id"), index("by_utterance", "utterance_id")],
        policies=call_scoped(),
    )
    class Announcements:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        kind: str  # recording
        prompt_version: str
        prompt_hash: str
        text: str
        queued_at: Timestamp
        made_at: Timestamp | None = None  # when it was played (None while still queued)
        recording_id: int | None = None  # set when a recording was active as it was made
        utterance_id: int | None = None
        audio_offset_ms: int | None = None

    @mod.table(
        name="ai_disclosures",
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(),
    )
    class AiDisclosures:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        prompt_version: str
        prompt_hash: str
        text: str
        at: Timestamp
        utterance_id: int | None = None

    @mod.table(
        name="recording_keys",
        primary_key="key_id",
        indexes=[index("by_recording", "recording_id")],
        public=False,
    )
    class RecordingKeys:
        """A recording's data key, wrapped by a master key (private: never readable by
        agents). Deleting the row, with the file's key slot, is crypto-shredding."""

        key_id: str
        recording_id: int
        call_id: int
        master_key_id: str
        wrapped_key: bytes
        created_at: Timestamp

    @mod.table(
        name="recording_accesses",
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(),
    )
    class RecordingAccesses:
        """Who decrypted a recording, when and why (also an entry of the audit chain)."""

        id: int = column(auto_inc=True)  # type: ignore[assignment]
        recording_id: int
        call_id: int
        accessor: Identity
        purpose: str
        at: Timestamp

    @mod.table(name="lawful_bases", primary_key="call_id", policies=call_scoped())
    class LawfulBases:
        call_id: int
        basis: str  # a GDPR Art. 6(1) basis: consent, contract, legal_obligation, ...
        reference: str
        at: Timestamp

    @mod.table(
        name="recordings",
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(agent_writable=True),
    )
    class Recordings:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        status: str  # pending | active | paused | stopped | finalized
        provisional: bool  # active before the consent answer (recorded-notice policies)
        created_at: Timestamp
        consent_basis: dict | None = None  # the evidence the engine accepted at activation
        pause_reason: str | None = None
        stop_reason: str | None = None
        started_at: Timestamp | None = None
        paused_at: Timestamp | None = None
        resumed_at: Timestamp | None = None
        stopped_at: Timestamp | None = None
        finalized_at: Timestamp | None = None
        storage_uri: str | None = None
        checksum: str | None = None
        key_id: str | None = None
        duration_ms: int | None = None

    @mod.table(
        name="transcription_pauses",
        primary_key="call_id",
        policies=call_scoped(agent_writable=True),
    )
    class TranscriptionPauses:
        call_id: int
        reason: str  # pci
        since: Timestamp

    @mod.table(
        name="transcript_segments",
        primary_key="id",
        unique=[("call_id", "segment_key")],
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(),
    )
    class TranscriptSegments:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        segment_key: str
        speaker: str  # a participant role: caller, callee, agent, ai
        text: str
        start_ms: int
        end_ms: int
        is_final: bool
        engine: str
        created_at: Timestamp
        updated_at: Timestamp

    @mod.table(
        name="utterances",
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(agent_writable=True),
    )
    class Utterances:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        text: str
        kind: str  # speech | disclosure | prompt
        status: str  # queued | playing | played | interrupted
        interruptible: bool
        requested_by: str
        queued_at: Timestamp
        prompt_version: str | None = None
        started_at: Timestamp | None = None
        ended_at: Timestamp | None = None
        played_ms: int | None = None

    @mod.table(
        name="dtmf_events",
        primary_key="id",
        indexes=[index("by_call", "call_id")],
        policies=call_scoped(),
    )
    class DtmfEvents:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        digits: str
        at: Timestamp
        audio_offset_ms: int | None = None

    @mod.table(
        name="call_commands",
        primary_key="id",
        unique=["idem_key"],
        indexes=[index("by_call", "call_id"), index("by_status", "status")],
        policies=call_scoped(agent_writable=True),
    )
    class CallCommands:
        id: int = column(auto_inc=True)  # type: ignore[assignment]
        call_id: int
        kind: str  # hangup | transfer | play | clear
        args: dict | None
        status: str  # pending | sent | done | failed
        idem_key: str
        requested_by: str
        created_at: Timestamp
        updated_at: Timestamp
        result: dict | None = None
        error: str | None = None

    @mod.table(
        name="agent_assignments",
        primary_key=("call_id", "agent"),
        indexes=[index("by_agent", "agent"), index("by_call", "call_id")],
        policies=[read_policy("own_assignments", "agent = :sender"), SYSTEM_WRITES],
    )
    class AgentAssignments:
        call_id: int
        agent: Identity
        active: bool
        assigned_at: Timestamp
        assigned_by: str
        unassigned_at: Timestamp | None = None

    @mod.table(
        name="prompts",
        primary_key=("name", "version"),
        indexes=[index("by_name", "name")],
        policies=[SYSTEM_WRITES],
    )
    class Prompts:
        name: str
        version: str
        text: str
        sha256: str
        active: bool
        created_at: Timestamp

    @mod.table(name="call_flows", primary_key="call_id", policies=call_scoped())
    class CallFlows:
        call_id: int
        state: str
        attempts: int
        updated_at: Timestamp
        agent: Identity | None = None
        outcome: str | None = None

    @mod.table(
        name="audit_log", primary_key="seq", indexes=[index("by_offset", "offset")], public=False
    )
    class AuditLog:
        seq: int
        at: Timestamp
        actor: str
        reducer: str
        args_hash: str
        outcome: str
        summary: dict | None
        offset: int
        prev_hash: str
        hash: str

    @mod.table(name="audit_checkpoints", primary_key="seq", public=False)
    class AuditCheckpoints:
        seq: int
        at: Timestamp
        offset: int
        head_hash: str
        signature: bytes | None = None
        public_key: bytes | None = None

    @mod.table(name="audit_state", primary_key="id", public=False)
    class AuditState:
        id: int
        seq: int
        head: str
