"""``build_voice_module``: the ``voice`` system module (tables, reducers, policies, audit).

Composes the pieces of this package into one ``core.module.Module`` named ``voice``:
the tables (``consent.tables``), every reducer of ``consent.reducers_call``,
``consent.reducers_consent``, ``consent.reducers_media`` and ``consent.flow``, the init
reducer that seeds the default consent policies and prompts, and ``audit_checkpoint``.

Invariant kept here: every reducer of the module, the init included, is registered through
``Auditor.wrap``, so each committed call appends exactly one audit entry in its own
transaction. No reducer does I/O; ``signer`` is called inside ``audit_checkpoint`` (and
every ``checkpoint_every`` entries) and must be a pure in-memory signature function such as
``Ed25519PrivateKey.sign``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from consent import flow, reducers_call, reducers_consent, reducers_media
from consent.audit import DEFAULT_CHECKPOINT_EVERY, Auditor
from consent.policy import DEFAULT_POLICIES
from consent.tables import declare_tables
from core.module import Module, ReducerFn
from core.transaction import ReducerContext

MODULE_NAME = "voice"

ALL_REDUCERS: tuple[ReducerFn, ...] = (
    *reducers_call.REDUCERS,
    *reducers_consent.REDUCERS,
    *reducers_media.REDUCERS,
    *flow.REDUCERS,
)


def build_voice_module(
    signer: Callable[[bytes], bytes] | None = None,
    public_key: bytes | None = None,
    *,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    prompts: Mapping[str, str] | None = None,
    prompt_version: str = flow.DEFAULT_PROMPT_VERSION,
) -> Module:
    """The voice module. ``signer``/``public_key``: sign audit checkpoints (e.g. Ed25519:
    ``key.sign`` and the raw public key bytes). ``prompts`` override the default flow's
    texts at install (later changes: reducer ``prompt_set``)."""
    auditor = Auditor(signer, public_key, checkpoint_every)
    mod = Module(MODULE_NAME)
    declare_tables(mod)
    seed_prompts = dict(prompts or {})

    def init(ctx: ReducerContext) -> dict[str, Any]:
        for p in DEFAULT_POLICIES:
            ctx.db.consent_policies.insert(**p.row(), updated_at=ctx.timestamp)
        flow.seed_prompts(ctx, seed_prompts, prompt_version)
        return {"policies": len(DEFAULT_POLICIES), "prompt_version": prompt_version}

    mod.init(auditor.wrap(init))

    def audit_checkpoint(ctx: ReducerContext) -> dict[str, Any]:
        """Checkpoint (and sign, with a signer) the audit head, this call's entry included."""
        return {"seq": auditor.next_seq(ctx), "signed": auditor.signer is not None}

    mod.reducer(auditor.wrap(audit_checkpoint, checkpoint=True), name="audit_checkpoint")
    for fn in ALL_REDUCERS:
        mod.reducer(auditor.wrap(fn))
    return mod


def reducer_names() -> list[str]:
    """Every reducer name the voice module declares (init included, as ``voice_install``
    is the name its transaction is logged under)."""
    return [f"{MODULE_NAME}_install", "audit_checkpoint", *(fn.__name__ for fn in ALL_REDUCERS)]
