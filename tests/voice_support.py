"""Helpers for the voice module tests: open a store with the module, drive a call, and check
that a refused reducer left no trace (every table and the offset unchanged)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consent import build_voice_module
from core import Database, StoreConfig, StoreError
from core.sql.query import run_query

AGENT_A = "a" * 64
AGENT_B = "b" * 64
NOTICE = "This call is recorded and transcribed for quality and compliance purposes."
QUESTION = "To agree to the recording, press 1 or say yes."
DISCLOSURE = "You are speaking with an automated AI assistant."


def open_db(data_dir: Path | None = None, **module_kw: Any) -> Database:
    cfg = StoreConfig(data_dir=data_dir) if data_dir is not None else StoreConfig()
    return Database.open([build_voice_module(**module_kw)], cfg)


def state(db: Database) -> dict[str, list[tuple]]:
    """Every row of every non-system table (audit tables included), in a stable order."""
    if db.visible_offset < db.offset:  # the newest commit (an audit row) may be in flight
        db.gate.wait(db.offset, timeout=10)
    with db.snapshot(db.offset) as snap:
        return {
            name: sorted(snap.table(name).rows(), key=repr)
            for name, store in db.stores.items()
            if not store.tdef.system
        }


def rejected(
    db: Database, reducer: str, args: dict[str, Any], match: str, caller: str | None = None
) -> StoreError:
    """Run a call that must be refused; assert the store did not change at all."""
    before, offset = state(db), db.offset
    with pytest.raises(StoreError, match=match) as info:
        if caller is None:
            db.execute(reducer, args)
        else:
            db.execute(reducer, args, caller=caller)
    assert db.offset == offset, "a refused call must not commit"
    assert state(db) == before, "a refused call must leave no trace"
    return info.value


def call(db: Database, reducer: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
    return db.execute(reducer, args or {}, **kw).value


def rows(db: Database, sql: str, params: Any = None, sender: str | None = None) -> list[tuple]:
    return run_query(db, sql, params, sender=sender).rows


def start(
    db: Database,
    *,
    pcid: str = "CA1",
    direction: str = "inbound",
    external: str = "US",
    business: str = "US",
    answer: bool = True,
) -> dict[str, Any]:
    """A call from (inbound) or to (outbound) a party in ``external``; the AI in
    ``business``. Returns call_started's value plus ``ext`` and ``ai`` participant ids."""
    inbound = direction == "inbound"
    res = call(
        db,
        "call_started",
        {
            "provider": "twilio",
            "provider_call_id": pcid,
            "direction": direction,
            "from_number": "+14155550100" if inbound else "+12065550199",
            "to_number": "+12065550199" if inbound else "+14155550100",
            "from_jurisdiction": external if inbound else business,
            "to_jurisdiction": business if inbound else external,
        },
    )
    if answer:
        call(db, "call_answered", {"call_id": res["call_id"]})
    parts = res["participants"]
    return {**res, "ext": parts["caller" if inbound else "callee"], "ai": parts["ai"]}


def disclose(db: Database, call_id: int) -> Any:
    args = {"call_id": call_id, "prompt_version": "v1", "prompt_text": DISCLOSURE}
    return call(db, "ai_disclose", args)


def announce(db: Database, call_id: int) -> Any:
    args = {"call_id": call_id, "prompt_version": "v1", "prompt_text": NOTICE}
    return call(db, "consent_announce", args)


def consent_args(call_id: int, participant_id: int, **kw: Any) -> dict[str, Any]:
    out = {
        "call_id": call_id,
        "participant_id": participant_id,
        "method": "dtmf",
        "evidence": "1",
        "prompt_version": "v1",
        "prompt_text": QUESTION,
    }
    out.update(kw)
    return out


def grant(db: Database, call_id: int, participant_id: int, **kw: Any) -> Any:
    return call(db, "consent_grant", consent_args(call_id, participant_id, **kw))


def segment(
    call_id: int,
    key: str,
    text: str,
    *,
    final: bool = True,
    speaker: str = "caller",
    start_ms: int = 0,
    end_ms: int = 500,
) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "segment_key": key,
        "speaker": speaker,
        "text": text,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "is_final": final,
        "engine": "test-stt",
    }
