"""Reducer calls with idempotency keys: run once, answer every retry with the same outcome.

``CallService.call`` is synchronous (it runs on the event loop, like every commit):

1. a request id already in ``__requests__`` for this identity -> its stored outcome
   (``replayed``), without running anything; the same id naming another reducer is a
   ``request_id_conflict``;
2. a request id whose earlier call failed inside the reducer -> the same error again
   (failures changed nothing, so they are remembered in memory only, for the window);
3. otherwise the reducer runs with an in-transaction hook (``record_request``) that writes
   the outcome row in the reducer's own transaction.

Invariant: a request id is never executed twice within the window, across reconnects and
restarts, because the check and the commit happen with no ``await`` in between and the
row commits (and becomes durable) together with the reducer's effects. The caller must
not release the outcome before its offset is durable (``Hub.wait_durable``).

Invariant: a call runs only for a principal that is active at that moment - its status is
re-read right before ``db.execute`` with no ``await`` in between, so once a suspension or
revocation has committed, none of that identity's calls runs (``identity_not_active``).
The reducer runs as the caller's identity, under row-level security unless the principal
holds ``bypass_rls``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from core.database import Database
from core.errors import NoSuchReducer, StoreError
from core.types import ColumnType
from voicehub.auth.principal import Principal
from voicehub.server.codec import decode_bytes_arg
from voicehub.server.errors import REMEMBERED_FAILURES, ApiError, ReplayedFailure
from voicehub.server.settings import ServerConfig
from voicehub.server.system import REQUESTS, ServerSystem, latest, record_request


class Outcome(NamedTuple):
    offset: int
    value: Any
    replayed: bool


def request_key(request_id: str | int) -> str:
    """The stored form of a request id: its JSON text (so ``1`` and ``"1"`` differ)."""
    return msgspec.json.encode(request_id).decode()


Refresh = Callable[[Principal], Principal]
"""Re-reads a principal's status and privileges; raises ``ApiError`` if it is not active."""


def _as_is(p: Principal) -> Principal:
    return p


class CallService:
    def __init__(
        self,
        db: Database,
        system: ServerSystem,
        cfg: ServerConfig,
        refresh: Refresh = _as_is,
    ) -> None:
        self.db = db
        self.system = system
        self.cfg = cfg
        self.refresh = refresh
        self._failures: OrderedDict[tuple[str, str], tuple[float, str, str]] = OrderedDict()
        self._bytes_params: dict[str, tuple[tuple[int, str], ...]] = {}
        self.executed = 0
        self.replayed = 0

    def callable(self, reducer: str) -> bool:
        entry = self.db.reducers.get(reducer)
        return (
            entry is not None and entry[0].kind == "reducer" and reducer not in self.system.hidden
        )

    def call(
        self, principal: Principal, reducer: str, args: Any, request_id: str | int | None
    ) -> Outcome:
        """Run (or replay) one call; raises ``StoreError``/``ApiError`` on failure."""
        principal = self.refresh(principal)
        identity = principal.identity
        if not self.callable(reducer):
            raise NoSuchReducer(f"no reducer named {reducer!r}")
        key = None if request_id is None else request_key(request_id)
        if key is not None:
            row: Any = latest(self.db.stores, REQUESTS).get((identity, key))
            if row is not None:
                if row.reducer != reducer:
                    raise ApiError(
                        "request_id_conflict",
                        f"request id {request_id!r} was already used for reducer {row.reducer!r}",
                    )
                self.replayed += 1
                return Outcome(row.commit_offset, row.value, True)
            failed = self._failure(identity, key)
            if failed is not None:
                self.replayed += 1
                raise ReplayedFailure(*failed)
        args = self._convert(reducer, args)
        then = None if key is None else record_request(identity, key)
        try:
            res = self.db.execute(
                reducer, args, identity, then=then, bypass_rls=principal.bypass_rls
            )
        except StoreError as e:
            if key is not None and e.code in REMEMBERED_FAILURES:
                self._remember(identity, key, e.code, e.message)
            raise
        self.executed += 1
        return Outcome(res.offset, res.value, False)

    # ---- failed outcomes (memory only) ----

    def _failure(self, identity: str, key: str) -> tuple[str, str] | None:
        f = self._failures.get((identity, key))
        if f is None:
            return None
        if f[0] < time.monotonic():
            del self._failures[(identity, key)]
            return None
        return f[1], f[2]

    def _remember(self, identity: str, key: str, code: str, message: str) -> None:
        fs = self._failures
        now = time.monotonic()
        fs[(identity, key)] = (now + self.cfg.idempotency_window_s, code, message)
        while fs:
            first = next(iter(fs.values()))
            if len(fs) <= self.cfg.failed_calls_kept and first[0] >= now:
                break
            fs.popitem(last=False)

    # ---- JSON cannot carry bytes: base64 strings for bytes parameters ----

    def _convert(self, reducer: str, args: Any) -> Any:
        spec = self._bytes_params.get(reducer)
        if spec is None:
            rdef = self.db.reducers[reducer][0]
            spec = tuple(
                (i, p.name) for i, p in enumerate(rdef.params) if p.type == ColumnType.BYTES
            )
            self._bytes_params[reducer] = spec
        if not spec:
            return args
        if isinstance(args, dict):
            args = dict(args)
            for _, name in spec:
                if name in args:
                    args[name] = decode_bytes_arg(args[name], f"argument {name!r}")
        elif isinstance(args, list):
            args = list(args)
            for i, name in spec:
                if i < len(args):
                    args[i] = decode_bytes_arg(args[i], f"argument {name!r}")
        return args
