"""Verify the voice module's audit chain: from rows (pure), or from a data directory.

``verify_entries(rows, public_key, checkpoints=...)`` re-derives every hash and link and
reports, with the seq and what is wrong, an entry that was **edited** (its hash no longer
matches its content), **removed** (a gap in seq), **reordered** (seq or offset out of
order, or a link that points elsewhere), and a log **truncated** below a checkpoint (the
checkpoint names a seq the log no longer has, or a head hash it no longer ends in).
Checkpoint signatures are checked with ``public_key`` (raw Ed25519 bytes); without one, the
key stored in the checkpoint is used and the report says so (integrity, not origin).
What cannot be detected is said too: entries after the last checkpoint are protected only by
the chain, so cutting off the newest entries needs an external anchor to be noticed.

``verify_data_dir(path)`` rebuilds the committed state read-only with ``core.recovery``
(the same path as ``voicehub db check``: nothing on disk changes, a running server may keep
the directory open), verifies the chain and its checkpoints, and cross-checks every voice
commit still in the write-ahead log against its entry (reducer, caller, argument hash).
``main_verify(data_dir)`` prints the report and returns the exit status: 0 intact,
1 tampering or inconsistency found, 2 the directory cannot be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consent.audit import GENESIS, args_hash, checkpoint_message, entry_body, entry_hash


@dataclass
class Problem:
    seq: int | None
    kind: str  # edited | removed | reordered | broken_link | truncated | signature | wal
    detail: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "log"
        return f"{self.kind.upper():12} {where}: {self.detail}"


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    signed: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreadable: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unreadable

    @property
    def status(self) -> int:
        return 2 if self.unreadable else 1 if self.problems else 0

    def add(self, seq: int | None, kind: str, detail: str) -> None:
        self.problems.append(Problem(seq, kind, detail))

    def lines(self) -> list[str]:
        out = [str(p) for p in self.problems]
        out += [f"note         {n}" for n in self.notes]
        verdict = "INTACT" if self.ok else "UNREADABLE" if self.unreadable else "TAMPERED"
        out.append(
            f"{verdict}: {self.entries} entries (head seq {self.head_seq}, {self.head_hash}),"
            f" {self.checkpoints} checkpoints ({self.signed} signed),"
            f" {len(self.problems)} problem(s)"
        )
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _as_dict(row: Any) -> dict[str, Any]:
    if hasattr(row, "_asdict"):
        return dict(row._asdict())
    if isinstance(row, Mapping):
        return dict(row)
    raise TypeError(f"an audit row must be a mapping or a row, not {type(row).__name__}")


def _verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _chain(entries: list[dict[str, Any]], r: VerifyReport) -> dict[int, dict[str, Any]]:
    """Check order, gaps, hashes and links; returns the entries by seq."""
    by_seq: dict[int, dict[str, Any]] = {}
    last_seq = 0
    for i, e in enumerate(entries):
        seq = int(e.get("seq") or 0)
        if seq <= last_seq:
            r.add(seq, "reordered", f"row {i} has seq {seq} after seq {last_seq}")
        else:
            last_seq = seq
        if seq in by_seq:
            r.add(seq, "reordered", "seq appears twice")
        by_seq.setdefault(seq, e)
    prev_hash = GENESIS
    prev_seq = 0
    prev_offset = 0
    prev_at = 0
    for seq in sorted(by_seq):
        e = by_seq[seq]
        if seq != prev_seq + 1:
            missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
            r.add(seq, "removed", f"entries {missing} are missing before this one")
        computed = entry_hash(entry_body(e))
        if computed != e.get("hash"):
            r.add(
                seq,
                "edited",
                f"content does not match its hash (stored {e.get('hash')},"
                f" content hashes to {computed})",
            )
        if seq == prev_seq + 1 and e.get("prev_hash") != prev_hash:
            r.add(
                seq,
                "broken_link",
                f"prev_hash {e.get('prev_hash')} is not the hash of seq"
                f" {prev_seq} ({prev_hash}): an earlier entry was changed or replaced",
            )
        offset, at = int(e.get("offset") or 0), int(e.get("at") or 0)
        if offset <= prev_offset:
            r.add(
                seq,
                "reordered",
                f"offset {offset} is not after the previous entry's offset {prev_offset}",
            )
        if at < prev_at:
            r.add(seq, "reordered", f"timestamp {at} is before the previous entry's {prev_at}")
        prev_hash, prev_seq, prev_offset, prev_at = str(e.get("hash")), seq, offset, at
    r.entries = len(by_seq)
    r.head_seq = prev_seq
    r.head_hash = prev_hash
    return by_seq


def _checkpoints(
    cps: list[dict[str, Any]],
    by_seq: dict[int, dict[str, Any]],
    public_key: bytes | None,
    r: VerifyReport,
) -> None:
    untrusted = False
    for cp in sorted(cps, key=lambda c: int(c["seq"])):
        seq = int(cp["seq"])
        r.checkpoints += 1
        entry = by_seq.get(seq)
        if seq > r.head_seq:
            r.add(
                seq,
                "truncated",
                f"a checkpoint covers entries up to seq {seq} but the log"
                f" ends at seq {r.head_seq}: entries were cut off",
            )
        elif entry is None:
            r.add(seq, "removed", "the entry this checkpoint names is missing")
        elif entry.get("hash") != cp.get("head_hash"):
            r.add(
                seq,
                "truncated" if seq == r.head_seq else "edited",
                f"the checkpointed head hash {cp.get('head_hash')} differs from the"
                f" entry's hash {entry.get('hash')}: entries up to here were rewritten",
            )
        sig = cp.get("signature")
        if sig is None:
            continue
        key = cp.get("public_key")
        if public_key is not None:
            if key is not None and bytes(key) != public_key:
                r.add(seq, "signature", "checkpoint signed with a different key")
                continue
            key = public_key
        elif key is None:
            r.add(seq, "signature", "signed checkpoint without a public key")
            continue
        else:
            untrusted = True
        msg = checkpoint_message(seq, str(cp["head_hash"]), int(cp["offset"]), int(cp["at"]))
        if _verify_signature(bytes(key), bytes(sig), msg):
            r.signed += 1
        else:
            r.add(seq, "signature", "the checkpoint signature does not verify")
    if untrusted:
        r.notes.append(
            "no trusted public key given: signatures were checked against the key stored"
            " with each checkpoint (proves integrity, not who signed)"
        )
    if not cps:
        r.notes.append("no checkpoints: cutting off the newest entries cannot be detected")
    elif r.head_seq > max(int(c["seq"]) for c in cps):
        last = max(int(c["seq"]) for c in cps)
        r.notes.append(
            f"entries after the last checkpoint (seq {last}) are protected by the chain only;"
            " removing the newest of them needs an external anchor to be noticed"
        )


def verify_entries(
    rows: Iterable[Any],
    public_key: bytes | None = None,
    *,
    checkpoints: Iterable[Any] = (),
) -> VerifyReport:
    """Verify audit rows in the order given (``audit_log`` rows or mappings)."""
    r = VerifyReport()
    by_seq = _chain([_as_dict(x) for x in rows], r)
    _checkpoints([_as_dict(c) for c in checkpoints], by_seq, public_key, r)
    return r


# ---------------------------------------------------------------- data directories


def _wal_cross_check(path: Path, by_seq: dict[int, dict[str, Any]], r: VerifyReport) -> None:
    from consent.module import build_voice_module, reducer_names
    from core.recovery import list_segments
    from core.wal.format import DECODER, SEGMENT_HEADER_SIZE, FrameError, iter_frames

    params = {n: [p.name for p in d.params] for n, (d, _) in build_voice_module().reducers.items()}
    params["voice_install"] = []
    names = set(reducer_names())
    by_offset = {int(e["offset"]): e for e in by_seq.values()}
    checked = 0
    first_seen: int | None = None
    for first, seg in list_segments(path / "wal"):
        data = seg.read_bytes()
        try:
            for offset, payload, _ in iter_frames(data, SEGMENT_HEADER_SIZE, first):
                first_seen = offset if first_seen is None else first_seen
                rec = DECODER.decode(payload)
                e = by_offset.get(offset)
                if rec.reducer not in names:
                    if e is not None:
                        r.add(
                            int(e["seq"]),
                            "wal",
                            f"commit {offset} is {rec.reducer!r}, not a voice reducer",
                        )
                    continue
                checked += 1
                if e is None:
                    r.add(None, "wal", f"commit {offset} ({rec.reducer}) has no audit entry")
                    continue
                want = args_hash(dict(zip(params.get(rec.reducer, []), rec.args)))
                for what, logged, stored in (
                    ("reducer", rec.reducer, e.get("reducer")),
                    ("caller", rec.caller, e.get("actor")),
                    ("argument hash", want, e.get("args_hash")),
                    ("timestamp", rec.timestamp, e.get("at")),
                ):
                    if logged != stored:
                        r.add(
                            int(e["seq"]),
                            "wal",
                            f"{what} differs from commit {offset} in"
                            f" the log ({stored!r} vs logged {logged!r})",
                        )
        except FrameError:
            pass  # a torn tail: `voicehub db check` reports it
    if first_seen is not None:
        r.notes.append(
            f"{checked} voice commits in the retained log (from offset"
            f" {first_seen}) match their audit entries"
        )


def verify_data_dir(path: str | Path, public_key: bytes | None = None) -> VerifyReport:
    """Open ``path`` read-only (core.recovery, no repair) and verify its audit chain."""
    from core.errors import CorruptionError
    from core.recovery import recover

    d = Path(path)
    r = VerifyReport()
    if not d.is_dir():
        r.unreadable = True
        r.notes.append(f"data directory {d} does not exist")
        return r
    try:
        state = recover(d, repair=False, keep_history=False)
    except (CorruptionError, OSError) as e:
        r.unreadable = True
        r.notes.append(f"the data directory does not recover: {e}")
        return r
    log_store = state.stores.get("audit_log")
    if log_store is None:
        r.unreadable = True
        r.notes.append("this data directory holds no voice audit log")
        return r
    rows = sorted((_as_dict(x) for x in log_store.rows()), key=lambda e: e["seq"])
    cp_store = state.stores.get("audit_checkpoints")
    cps = [_as_dict(x) for x in cp_store.rows()] if cp_store is not None else []
    by_seq = _chain(rows, r)
    _checkpoints(cps, by_seq, public_key, r)
    _wal_cross_check(d, by_seq, r)
    r.notes.append(f"state recovered read-only at offset {state.offset}")
    return r


def main_verify(data_dir: str, public_key: bytes | None = None) -> int:
    """``voicehub audit verify --data-dir D``: print the report, return the exit status."""
    report = verify_data_dir(data_dir, public_key)
    print(f"audit verify {data_dir}")
    for line in report.lines():
        print(f"  {line}")
    return report.status
