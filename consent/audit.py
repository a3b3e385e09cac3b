"""The audit chain: one hash-linked ``audit_log`` entry per committed voice reducer call.

Every reducer of the voice module is wrapped by ``Auditor.wrap``; after the reducer
returns, the wrapper appends, *in the same transaction*, the entry

    seq, at (ctx.timestamp), actor (ctx.sender), reducer, args_hash, outcome, summary,
    offset (ctx.offset), prev_hash, hash = sha256(bytes(prev_hash) || canonical(entry))

where ``canonical`` is the canonical JSON (sorted keys, no spaces, UTF-8) of every field
but ``hash``, and ``args_hash`` is the sha256 of the canonical JSON of the call's
arguments by name. The first entry links to 64 zeros. Every ``checkpoint_every`` entries
(and on demand, reducer ``audit_checkpoint``) a checkpoint row stores the head hash at that
seq, signed with the module's ``signer`` when one was given.

Invariants: the audit entry commits or rolls back together with the reducer's effects (a
refused call leaves no entry, a committed one always has exactly one); ``seq`` is dense
from 1 and ``offset`` strictly increasing; no reducer writes an audit table otherwise.
``consent.audit_verify`` checks all of this from the rows alone.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from core.module import ReducerFn
from core.transaction import ReducerContext

GENESIS = "0" * 64
ENTRY_FIELDS = (
    "seq",
    "at",
    "actor",
    "reducer",
    "args_hash",
    "outcome",
    "summary",
    "offset",
    "prev_hash",
)
CHECKPOINT_DOMAIN = b"voicehub-audit-checkpoint-v1\n"
DEFAULT_CHECKPOINT_EVERY = 1000

Signer = Callable[[bytes], bytes]


def _default(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$bytes": bytes(v).hex()}
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: equal values give equal bytes."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_default,
    ).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def args_hash(args: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(dict(args)))


def entry_body(row: Any) -> dict[str, Any]:
    """The hashed fields of an entry (a row, a mapping, or anything with ``_asdict``)."""
    d = row._asdict() if hasattr(row, "_asdict") else dict(row)
    return {k: d.get(k) for k in ENTRY_FIELDS}


def entry_hash(body: Mapping[str, Any]) -> str:
    prev = str(body["prev_hash"])
    try:
        prev_bytes = bytes.fromhex(prev)
    except ValueError:
        prev_bytes = prev.encode("utf-8")
    return sha256_hex(prev_bytes + canonical_json({k: body.get(k) for k in ENTRY_FIELDS}))


def checkpoint_message(seq: int, head_hash: str, offset: int, at: int) -> bytes:
    """The bytes a checkpoint signature covers."""
    return CHECKPOINT_DOMAIN + canonical_json(
        {"at": at, "head_hash": head_hash, "offset": offset, "seq": seq}
    )


def _summary(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    v = value if isinstance(value, dict) else {"value": value}
    out: dict[str, Any] = json.loads(canonical_json(v))
    return out


class Auditor:
    """Appends audit entries and checkpoints for one voice module instance."""

    def __init__(
        self,
        signer: Signer | None = None,
        public_key: bytes | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if signer is not None and public_key is None:
            raise ValueError("a signer needs its public_key (stored with every checkpoint)")
        self.signer = signer
        self.public_key = public_key
        self.checkpoint_every = checkpoint_every

    def wrap(self, fn: ReducerFn, *, checkpoint: bool = False) -> ReducerFn:
        """``fn`` with an audit entry appended in its transaction after it returns;
        ``checkpoint``: also checkpoint the head right after that entry."""
        names = [p.name for p in list(inspect.signature(fn).parameters.values())[1:]]

        @functools.wraps(fn)
        def audited(ctx: ReducerContext, *args: Any, **kwargs: Any) -> Any:
            value = fn(ctx, *args, **kwargs)
            bound = dict(zip(names, args))
            bound.update(kwargs)
            self.append(ctx, bound, value, force_checkpoint=checkpoint)
            return value

        return audited

    def append(
        self,
        ctx: ReducerContext,
        args: Mapping[str, Any],
        value: Any,
        *,
        force_checkpoint: bool = False,
    ) -> Any:
        state = ctx.db.audit_state.get(1)
        seq = (state.seq if state is not None else 0) + 1
        prev = state.head if state is not None else GENESIS
        duplicate = isinstance(value, dict) and bool(value.get("duplicate"))
        body: dict[str, Any] = {
            "seq": seq,
            "at": ctx.timestamp,
            "actor": ctx.sender,
            "reducer": ctx.reducer,
            "args_hash": args_hash(args),
            "outcome": "duplicate" if duplicate else "ok",
            "summary": _summary(value),
            "offset": ctx.offset,
            "prev_hash": prev,
        }
        h = entry_hash(body)
        row = ctx.db.audit_log.insert(**body, hash=h)
        if state is None:
            ctx.db.audit_state.insert(id=1, seq=seq, head=h)
        else:
            ctx.db.audit_state.update(state, seq=seq, head=h)
        if force_checkpoint or seq % self.checkpoint_every == 0:
            self.write_checkpoint(ctx, seq, h)
        return row

    def write_checkpoint(self, ctx: ReducerContext, seq: int, head: str) -> Any:
        existing = ctx.db.audit_checkpoints.get(seq)
        if existing is not None:
            return existing
        signature = None
        if self.signer is not None:
            signature = bytes(self.signer(checkpoint_message(seq, head, ctx.offset, ctx.timestamp)))
        return ctx.db.audit_checkpoints.insert(
            seq=seq,
            at=ctx.timestamp,
            offset=ctx.offset,
            head_hash=head,
            signature=signature,
            public_key=self.public_key if signature is not None else None,
        )

    def next_seq(self, ctx: ReducerContext) -> int:
        """The seq the current call's own entry will get."""
        state = ctx.db.audit_state.get(1)
        return (state.seq if state is not None else 0) + 1
