"""The audit chain: one entry per committed voice call, in its transaction; checkpoints
signed with Ed25519; the verifier finds edits, removals, reorderings and truncations and
says where; a real durable data directory verifies read-only."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from voice_support import call, disclose, grant, open_db, rejected, segment, start

from consent.audit import GENESIS, args_hash, entry_hash
from consent.audit_verify import main_verify, verify_data_dir, verify_entries
from core import Database

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_PUB = OTHER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def drive(db: Database, calls: int = 3) -> None:
    for i in range(calls):
        c = start(db, pcid=f"CA{i}")
        cid = c["call_id"]
        disclose(db, cid)
        grant(db, cid, c["ext"])
        call(db, "recording_start", {"call_id": cid})
        call(db, "transcript_append", segment(cid, "s1", "hello"))
        call(db, "call_ended", {"call_id": cid})


def audit_rows(db: Database) -> list[dict[str, Any]]:
    with db.snapshot() as snap:
        got = [r._asdict() for r in snap.table("audit_log").rows()]
    return sorted(got, key=lambda e: e["seq"])


def checkpoints(db: Database) -> list[dict[str, Any]]:
    with db.snapshot() as snap:
        return [r._asdict() for r in snap.table("audit_checkpoints").rows()]


@pytest.fixture
def signed_db() -> Iterator[Database]:
    db = open_db(signer=KEY.sign, public_key=PUB, checkpoint_every=10)
    drive(db)
    yield db
    db.close()


def test_every_commit_has_one_entry_in_its_transaction(signed_db: Database) -> None:
    db = signed_db
    entries = audit_rows(db)
    assert entries[0]["reducer"] == "voice_install" and entries[0]["prev_hash"] == GENESIS
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    # one entry per voice commit: offsets strictly increasing, the last one is the newest
    assert all(a["offset"] < b["offset"] for a, b in itertools.pairwise(entries))
    assert entries[-1]["offset"] == db.offset and entries[-1]["reducer"] == "call_ended"
    e = audit_rows(db)[5]
    assert e["hash"] == entry_hash(e)
    # a refused call leaves no entry
    before = len(audit_rows(db))
    rejected(db, "say", {"call_id": 1, "text": "after the end"}, "has ended")
    assert len(audit_rows(db)) == before


def test_entry_records_actor_args_hash_and_summary() -> None:
    db = open_db()
    res = db.execute(
        "call_started",
        {
            "provider": "p",
            "provider_call_id": "c1",
            "direction": "outbound",
            "from_number": "+1",
            "to_number": "+2",
        },
        caller="d" * 64,
        bypass_rls=True,
    )
    e = audit_rows(db)[-1]
    assert e["actor"] == "d" * 64 and e["offset"] == res.offset and e["at"] == res.timestamp
    expected = args_hash(
        {
            "provider": "p",
            "provider_call_id": "c1",
            "direction": "outbound",
            "from_number": "+1",
            "to_number": "+2",
            "from_jurisdiction": "",
            "to_jurisdiction": "",
        }
    )
    assert e["args_hash"] == expected
    assert e["summary"]["call_id"] == 1 and e["outcome"] == "ok"
    db.close()


def test_checkpoints_every_n_and_on_demand(signed_db: Database) -> None:
    db = signed_db
    entries = audit_rows(db)
    cps = checkpoints(db)
    assert sorted(c["seq"] for c in cps) == [s for s in range(10, len(entries) + 1, 10)]
    res = call(db, "audit_checkpoint")
    head = audit_rows(db)[-1]
    assert res == {"seq": head["seq"], "signed": True}
    cp = next(c for c in checkpoints(db) if c["seq"] == head["seq"])
    assert cp["head_hash"] == head["hash"] and cp["public_key"] == PUB
    report = verify_entries(audit_rows(db), PUB, checkpoints=checkpoints(db))
    assert report.ok, str(report)
    assert report.signed == len(checkpoints(db)) and report.head_seq == head["seq"]


def test_unsigned_module_still_checkpoints() -> None:
    db = open_db(checkpoint_every=5)
    drive(db, 1)
    cps = checkpoints(db)
    assert cps and all(c["signature"] is None for c in cps)
    report = verify_entries(audit_rows(db), None, checkpoints=cps)
    assert report.ok and report.signed == 0
    db.close()


def problems(report: Any) -> list[tuple[int | None, str]]:
    return [(p.seq, p.kind) for p in report.problems]


def test_edit_is_detected_at_its_seq(signed_db: Database) -> None:
    entries, cps = audit_rows(signed_db), checkpoints(signed_db)
    entries[6]["actor"] = "e" * 64
    report = verify_entries(entries, PUB, checkpoints=cps)
    assert not report.ok and problems(report) == [(7, "edited")]
    assert "seq 7" in str(report) and "TAMPERED" in str(report)


def test_edit_with_rehash_breaks_the_next_link_and_the_checkpoint(signed_db: Database) -> None:
    entries, cps = audit_rows(signed_db), checkpoints(signed_db)
    entries[6]["summary"] = {"forged": True}
    entries[6]["hash"] = entry_hash(entries[6])
    report = verify_entries(entries, PUB, checkpoints=cps)
    assert (8, "broken_link") in problems(report)
    # rewriting the whole rest of the chain is caught by the signed checkpoint at seq 10
    prev = entries[6]["hash"]
    for e in entries[7:]:
        e["prev_hash"] = prev
        e["hash"] = prev = entry_hash(e)
    report = verify_entries(entries, PUB, checkpoints=cps)
    assert problems(report)[0] == (10, "edited")
    assert all(kind == "edited" for _, kind in problems(report))


def test_removal_is_detected(signed_db: Database) -> None:
    entries, cps = audit_rows(signed_db), checkpoints(signed_db)
    del entries[4]
    report = verify_entries(entries, PUB, checkpoints=cps)
    assert problems(report) == [(6, "removed")]
    assert "entries 5 are missing" in str(report) or "5 are missing" in str(report)


def test_reorder_is_detected(signed_db: Database) -> None:
    entries, cps = audit_rows(signed_db), checkpoints(signed_db)
    swapped = list(entries)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    report = verify_entries(swapped, PUB, checkpoints=cps)
    assert (4, "reordered") in problems(report)
    # renumbering the swapped entries (seq edited) breaks their hashes and links
    renum = [dict(e) for e in entries]
    renum[3]["seq"], renum[4]["seq"] = 5, 4
    renum.sort(key=lambda e: e["seq"])
    report = verify_entries(renum, PUB, checkpoints=cps)
    kinds = problems(report)
    assert (4, "edited") in kinds and (5, "edited") in kinds and (5, "reordered") in kinds


def test_truncation_below_a_checkpoint_is_detected(signed_db: Database) -> None:
    entries, cps = audit_rows(signed_db), checkpoints(signed_db)
    last_cp = max(c["seq"] for c in cps)
    report = verify_entries(entries[: last_cp - 3], PUB, checkpoints=cps)
    assert (last_cp, "truncated") in problems(report)
    assert "cut off" in str(report)
    # cutting only entries after the last checkpoint cannot be seen: the report says so
    report = verify_entries(entries[: last_cp + 1], PUB, checkpoints=cps)
    assert report.ok and any("external anchor" in n for n in report.notes)


def test_signatures_are_checked(signed_db: Database) -> None:
    entries, cps = audit_rows(signed_db), checkpoints(signed_db)
    assert verify_entries(entries, PUB, checkpoints=cps).ok
    report = verify_entries(entries, OTHER_PUB, checkpoints=cps)
    assert {k for _, k in problems(report)} == {"signature"}
    forged = [dict(c) for c in cps]
    forged[0]["head_hash"] = "f" * 64
    report = verify_entries(entries, PUB, checkpoints=forged)
    assert (forged[0]["seq"], "signature") in problems(report)
    # re-signed by an attacker's key with the key swapped in: refused given the trusted key
    resigned = [dict(c) for c in cps]
    from consent.audit import checkpoint_message

    for c in resigned:
        c["signature"] = OTHER.sign(
            checkpoint_message(c["seq"], c["head_hash"], c["offset"], c["at"])
        )
        c["public_key"] = OTHER_PUB
    assert not verify_entries(entries, PUB, checkpoints=resigned).ok
    untrusted = verify_entries(entries, None, checkpoints=resigned)
    assert untrusted.ok and any("not who signed" in n for n in untrusted.notes)


def test_durable_data_dir_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "data"
    db = open_db(d, signer=KEY.sign, public_key=PUB, checkpoint_every=7)
    drive(db, 2)
    db.call_sync("audit_checkpoint", {})
    head = audit_rows(db)[-1]
    db.close()
    report = verify_data_dir(d, PUB)
    assert report.ok, str(report)
    assert report.head_seq == head["seq"] and report.signed >= 2
    assert any("match their audit entries" in n for n in report.notes)
    assert main_verify(str(d)) == 0
    out = capsys.readouterr().out
    assert "INTACT" in out and f"head seq {head['seq']}" in out
    # reopening and appending keeps the chain going across a restart
    db = open_db(d, signer=KEY.sign, public_key=PUB, checkpoint_every=7)
    db.call_sync(
        "call_started",
        {
            "provider": "p",
            "provider_call_id": "after-restart",
            "direction": "inbound",
            "from_number": "1",
            "to_number": "2",
        },
    )
    db.close()
    report = verify_data_dir(d, PUB)
    assert report.ok and report.head_seq == head["seq"] + 1


def _rewrite_log(d: Path, forge_seq: int, actor: str, *, header_too: bool) -> None:
    """An attacker with the disk: change one audit entry's actor inside the log, rehash
    the chain after it, recompute every frame checksum (and optionally the commit's own
    caller). Recovery accepts the result: the frames are valid."""
    import msgspec

    from core.recovery import list_segments
    from core.wal.format import (
        DECODER,
        ENCODER,
        SEGMENT_HEADER_SIZE,
        FrameError,
        frame,
        iter_frames,
    )

    cols = [
        "seq",
        "at",
        "actor",
        "reducer",
        "args_hash",
        "outcome",
        "summary",
        "offset",
        "prev_hash",
        "hash",
    ]
    prev: str | None = None
    for first, seg in list_segments(d / "wal"):
        data = seg.read_bytes()
        out = bytearray(data[:SEGMENT_HEADER_SIZE])
        frames = []
        try:
            for offset, payload, _ in iter_frames(data, SEGMENT_HEADER_SIZE, first):
                frames.append((offset, payload))
        except FrameError:
            pass  # the preallocated zeros after the last commit
        for offset, payload in frames:
            rec = DECODER.decode(payload)
            for table, inserts, _ in rec.changes:
                if table != "audit_log":
                    continue
                for row in inserts:
                    e = dict(zip(cols, row))
                    if e["seq"] == forge_seq:
                        e["actor"] = actor
                        if header_too:
                            rec = msgspec.structs.replace(rec, caller=actor)
                    if e["seq"] >= forge_seq:
                        if prev is not None:
                            e["prev_hash"] = prev
                        e["hash"] = prev = entry_hash(e)
                        row[:] = [e[c] for c in cols]
            out += frame(offset, ENCODER.encode(rec))
        seg.write_bytes(bytes(out) + bytes(max(0, len(data) - len(out))))


@pytest.mark.parametrize("header_too", [False, True])
def test_a_rewritten_log_is_caught(tmp_path: Path, header_too: bool) -> None:
    d = tmp_path / "data"
    db = open_db(d, signer=KEY.sign, public_key=PUB, checkpoint_every=8)
    drive(db, 2)
    db.close(snapshot=False)  # the state lives in the log only
    clean = tmp_path / "clean"
    shutil.copytree(d, clean)
    _rewrite_log(d, 5, "e" * 64, header_too=header_too)
    report = verify_data_dir(d, PUB)
    assert not report.ok
    kinds = {(p.seq, p.kind) for p in report.problems}
    # the chain itself is consistent again; what disagrees is the signed checkpoint at 8
    # and, unless the attacker also rewrote the commit header, the log's own caller
    assert (8, "edited") in kinds
    assert ((5, "wal") in kinds) is (not header_too)
    assert verify_data_dir(clean, PUB).ok
    assert main_verify(str(d)) == 1
    assert main_verify(str(tmp_path / "missing")) == 2
