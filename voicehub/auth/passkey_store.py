"""Storage of WebAuthn passkeys: the ``__passkeys__`` table, its hidden reducers, and ceremonies.

Durable part: one ``__passkeys__`` row per registered credential (a server table,
``system=True``: invisible to SQL, subscriptions and clients), written only through the
hidden reducers declared by ``add_passkey_reducers``. It stores the credential's *public*
key (COSE), never a secret, so neither the store nor the log holds anything that lets
someone log in.

In-memory part: ``CeremonyStore`` keeps the challenge of every pending registration or
login ceremony under a random ceremony id. Pending ceremonies are lost on restart (the
client just starts a new one); that is acceptable because a challenge lives at most
``ttl_s`` (5 minutes) anyway.

Invariants:

* a credential id is registered at most once, to exactly one identity (the primary key,
  and ``voicehub_passkey_add`` refuses an existing id instead of overwriting it);
* a credential's stored signature counter never decreases (``voicehub_passkey_used``
  refuses a counter that does not increase, unless the authenticator keeps no counter);
* a ceremony id is answered at most once: ``CeremonyStore.take`` removes it before it is
  checked, so a replay, an expired ceremony and a ceremony of the wrong kind all fail.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from core.database import Database
from core.errors import ReducerError
from core.module import Module, ReducerFn, reducer_def_from_function
from core.schema import ColumnDef, IndexDef, TableDef
from core.transaction import ReducerContext
from core.types import ColumnType, Identity

PASSKEYS = "__passkeys__"

ADD = "voicehub_passkey_add"
USED = "voicehub_passkey_used"
REMOVE = "voicehub_passkey_remove"
PASSKEY_REDUCERS: frozenset[str] = frozenset({ADD, USED, REMOVE})
"""The hidden reducers ``add_passkey_reducers`` declares (to keep them off the client API)."""

_T = ColumnType


def _col(name: str, t: ColumnType, nullable: bool = False) -> ColumnDef:
    return ColumnDef(name, t, nullable=nullable)


PASSKEYS_TABLE = TableDef(
    name=PASSKEYS,
    columns=(
        _col("credential_id", _T.BYTES),
        _col("identity", _T.IDENTITY),
        _col("user_handle", _T.BYTES),
        _col("public_key", _T.BYTES),
        _col("sign_count", _T.INT64),
        _col("transports", _T.JSON),
        _col("aaguid", _T.TEXT),
        _col("created_at", _T.TIMESTAMP),
        _col("last_used_at", _T.TIMESTAMP, nullable=True),
    ),
    primary_key=("credential_id",),
    indexes=(IndexDef("by_identity", ("identity",)),),
    public=False,
    system=True,
)


def passkey_tables() -> list[TableDef]:
    """The server tables passkeys need (install them with ``add_passkey_reducers``)."""
    return [PASSKEYS_TABLE]


def counter_regressed(stored: int, presented: int) -> bool:
    """True if ``presented`` does not advance the counter (a cloned authenticator).

    An authenticator that keeps no counter reports 0 forever; that is allowed as long
    as the stored counter is 0 too (WebAuthn §6.1.1, "signature counter").
    """
    return (stored > 0 or presented > 0) and presented <= stored


def _reducer(m: Module, name: str) -> Callable[[ReducerFn], ReducerFn]:
    def add(fn: ReducerFn) -> ReducerFn:
        m.add_reducer(reducer_def_from_function(fn, name, "reducer", None), fn)
        return fn

    return add


def add_passkey_reducers(m: Module) -> None:
    """Declare the hidden passkey reducers (``PASSKEY_REDUCERS``) on the module ``m``.

    The module must also carry ``passkey_tables()``; the caller keeps the reducers hidden
    from clients (they are only run by ``PasskeyStore`` on behalf of a verified ceremony).
    """

    @_reducer(m, ADD)
    def passkey_add(
        ctx: ReducerContext,
        credential_id: bytes,
        identity: Identity,
        user_handle: bytes,
        public_key: bytes,
        sign_count: int,
        transports: list,
        aaguid: str,
    ) -> None:
        t = ctx.db[PASSKEYS]
        if t.get(credential_id) is not None:
            raise ReducerError("this credential is already registered")
        t.insert(
            credential_id=credential_id,
            identity=identity,
            user_handle=user_handle,
            public_key=public_key,
            sign_count=sign_count,
            transports=transports,
            aaguid=aaguid,
            created_at=ctx.timestamp,
            last_used_at=None,
        )

    @_reducer(m, USED)
    def passkey_used(ctx: ReducerContext, credential_id: bytes, sign_count: int) -> None:
        t = ctx.db[PASSKEYS]
        row = t.get(credential_id)
        if row is None:
            raise ReducerError("no such credential")
        if counter_regressed(row.sign_count, sign_count):
            raise ReducerError("the signature counter did not increase")
        t.update(row, sign_count=sign_count, last_used_at=ctx.timestamp)

    @_reducer(m, REMOVE)
    def passkey_remove(ctx: ReducerContext, credential_id: bytes) -> bool:
        return bool(ctx.db[PASSKEYS].delete(credential_id))


class PasskeyRow(NamedTuple):
    """A ``__passkeys__`` row as the service sees it."""

    credential_id: bytes
    identity: str
    user_handle: bytes
    public_key: bytes
    sign_count: int
    transports: list[str]
    aaguid: str
    created_at: int
    last_used_at: int | None


def _row(r: Any) -> PasskeyRow:
    return PasskeyRow(
        r.credential_id,
        r.identity,
        r.user_handle,
        r.public_key,
        r.sign_count,
        list(r.transports or []),
        r.aaguid,
        r.created_at,
        r.last_used_at,
    )


class PasskeyStore:
    """Reads (the newest committed state) and writes (hidden reducers) of ``__passkeys__``.

    Every method is synchronous and runs on the event loop, like every commit; each
    write is one commit, and returns its offset so the caller can wait for durability.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, credential_id: bytes) -> PasskeyRow | None:
        r = self.db.stores[PASSKEYS].get(credential_id)
        return None if r is None else _row(r)

    def for_identity(self, identity: str) -> list[PasskeyRow]:
        rows = [_row(r) for r in self.db.stores[PASSKEYS].lookup("by_identity", identity)]
        return sorted(rows, key=lambda r: (r.created_at, r.credential_id))

    def add(
        self,
        credential_id: bytes,
        identity: str,
        user_handle: bytes,
        public_key: bytes,
        sign_count: int,
        transports: list[str],
        aaguid: str,
    ) -> int:
        res = self.db.execute(
            ADD,
            {
                "credential_id": credential_id,
                "identity": identity,
                "user_handle": user_handle,
                "public_key": public_key,
                "sign_count": sign_count,
                "transports": transports,
                "aaguid": aaguid,
            },
        )
        return res.offset

    def used(self, credential_id: bytes, sign_count: int) -> int:
        res = self.db.execute(USED, {"credential_id": credential_id, "sign_count": sign_count})
        return res.offset

    def remove(self, credential_id: bytes) -> tuple[bool, int]:
        res = self.db.execute(REMOVE, {"credential_id": credential_id})
        return bool(res.value), res.offset


# ---------------------------------------------------------------- pending ceremonies

CeremonyKind = Literal["register", "login"]


@dataclass(frozen=True)
class Ceremony:
    """A pending ceremony: the challenge it issued and what verifying it will do."""

    kind: CeremonyKind
    challenge: bytes
    expires_at: float
    identity: str | None
    """register: the logged-in identity the passkey is added to (None: a new identity);
    login: the identity that must own the credential (None: discoverable login)."""
    user_handle: bytes = b""
    display_name: str = ""
    email: str | None = None


class CeremonyError(Exception):
    """A ceremony id that cannot be used: ``reason`` is unknown, expired or wrong_kind."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CeremonyStore:
    """Pending ceremonies in memory, single use, expiring after ``ttl_s``.

    At most ``max_pending`` are kept (the oldest is dropped first), so unauthenticated
    option requests cannot grow memory without bound.
    """

    def __init__(
        self,
        ttl_s: float = 300.0,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_pending < 1:
            raise ValueError("ttl_s must be positive and max_pending at least 1")
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.clock = clock
        self._pending: OrderedDict[str, Ceremony] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def _purge(self, now: float) -> None:
        # insertion order is expiry order (one ttl for all), so expired ones are in front
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.expires_at > now:
                break
            self._pending.popitem(last=False)
        while len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)

    def put(
        self,
        kind: CeremonyKind,
        challenge: bytes,
        identity: str | None,
        user_handle: bytes = b"",
        display_name: str = "",
        email: str | None = None,
    ) -> str:
        """Remember a new ceremony; returns its id (a random, unguessable token)."""
        now = self.clock()
        self._purge(now)
        cid = secrets.token_urlsafe(32)
        self._pending[cid] = Ceremony(
            kind=kind,
            challenge=challenge,
            expires_at=now + self.ttl_s,
            identity=identity,
            user_handle=user_handle,
            display_name=display_name,
            email=email,
        )
        return cid

    def take(self, ceremony_id: str, kind: CeremonyKind) -> Ceremony:
        """Remove and return a live ceremony of ``kind``; raises ``CeremonyError``.

        The ceremony is removed before it is checked: whatever the outcome of this call
        and of the verification that follows, the id can never be used again.
        """
        c = self._pending.pop(ceremony_id, None)
        if c is None:
            raise CeremonyError("unknown", "unknown or already used ceremony")
        if c.expires_at <= self.clock():
            raise CeremonyError("expired", "the ceremony expired; start again")
        if c.kind != kind:
            raise CeremonyError("wrong_kind", f"this is not a {kind} ceremony")
        return c
