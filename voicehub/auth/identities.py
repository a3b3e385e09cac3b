"""The identity model as a system module: identities, credentials, magic links, audit, outbox.

Tables (installed by ``ServerSystem`` next to the ``voicehub`` module):

* ``__identities__`` identity -> kind, status, display name, email (unique), Ed25519
  public key (unique), privileges, times. Private (``public=False``): only unrestricted
  callers (the owner, system identities) can ``SELECT`` it; reducers and policies can
  read it.
* ``__auth_passwords__`` identity -> argon2id hash, consecutive failures, lock end.
* ``__auth_magic_links__`` SHA-256 of a link token -> identity or email, expiry, use.
* ``__owner_tokens__`` SHA-256 of an owner token -> the owner identity.
* ``auth_outbox`` mails that were not sent by SMTP (private, readable by the owner).
* ``auth_audit`` every authentication event (private, readable by the owner).

The first four are ``system=True``: invisible to SQL, nothing in them is a usable
secret (only hashes and public keys are stored).

Invariants:

* a status changes only inside a reducer of this module, along
  ``principal.TRANSITIONS``, and every change writes its ``lifecycle`` audit row in the
  same transaction (so the audit trail cannot miss or invent a change);
* the public lifecycle reducers (``identity_activate/suspend/revoke``) run only for an
  active caller holding ``admin`` (or the in-process system identity); anyone else gets
  ``permission_denied`` and nothing changes;
* revoking an identity deletes its sessions in the same transaction;
* a magic link is used at most once: ``auth_magic_use`` re-checks ``used_at`` and the
  expiry inside the transaction that marks it used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.database import SYSTEM_IDENTITY, Database
from core.errors import PolicyViolation, ReducerError
from core.module import Module, ReducerFn, reducer_def_from_function
from core.schema import ColumnDef, IndexDef, TableDef
from core.transaction import ReducerContext
from core.types import ColumnType, Identity, Timestamp
from voicehub.auth.principal import KINDS, PRIVILEGES, transition_error

IDENTITIES = "__identities__"
PASSWORDS = "__auth_passwords__"
MAGIC_LINKS = "__auth_magic_links__"
OWNER_TOKENS = "__owner_tokens__"
AUTH_OUTBOX = "auth_outbox"
AUTH_AUDIT = "auth_audit"

CREATE = "auth_identity_create"
OWNER_CREATE = "auth_owner_create"
AUDIT = "auth_audit_append"
SET_STATUS = "auth_identity_set_status"
PASSWORD_FAILURE = "auth_password_failure"
PASSWORD_SUCCESS = "auth_password_success"
MAGIC_PUT = "auth_magic_put"
MAGIC_USE = "auth_magic_use"
HIDDEN: frozenset[str] = frozenset(
    {
        CREATE,
        OWNER_CREATE,
        AUDIT,
        SET_STATUS,
        PASSWORD_FAILURE,
        PASSWORD_SUCCESS,
        MAGIC_PUT,
        MAGIC_USE,
    }
)
"""Reducers only the auth service runs (kept off the client API)."""
LIFECYCLE_REDUCERS: dict[str, str] = {
    "identity_activate": "active",
    "identity_suspend": "suspended",
    "identity_revoke": "revoked",
}
"""The public, admin-only lifecycle reducers and the status each one sets."""

_T = ColumnType


def _col(name: str, t: ColumnType, nullable: bool = False, auto_inc: bool = False) -> ColumnDef:
    return ColumnDef(name, t, nullable=nullable, auto_inc=auto_inc)


IDENTITIES_TABLE = TableDef(
    name=IDENTITIES,
    columns=(
        _col("identity", _T.IDENTITY),
        _col("kind", _T.TEXT),
        _col("status", _T.TEXT),
        _col("display_name", _T.TEXT),
        _col("email", _T.TEXT, nullable=True),
        _col("public_key", _T.BYTES, nullable=True),
        _col("privileges", _T.JSON),
        _col("created_at", _T.TIMESTAMP),
        _col("changed_at", _T.TIMESTAMP),
    ),
    primary_key=("identity",),
    indexes=(
        IndexDef("by_email", ("email",), unique=True),
        IndexDef("by_public_key", ("public_key",), unique=True),
    ),
    public=False,
)

PASSWORDS_TABLE = TableDef(
    name=PASSWORDS,
    columns=(
        _col("identity", _T.IDENTITY),
        _col("hash", _T.TEXT),
        _col("failed_count", _T.INT64),
        _col("locked_until", _T.TIMESTAMP, nullable=True),
        _col("changed_at", _T.TIMESTAMP),
    ),
    primary_key=("identity",),
    public=False,
    system=True,
)

MAGIC_LINKS_TABLE = TableDef(
    name=MAGIC_LINKS,
    columns=(
        _col("token_hash", _T.TEXT),
        _col("identity", _T.IDENTITY, nullable=True),
        _col("email", _T.TEXT),
        _col("created_at", _T.TIMESTAMP),
        _col("expires_at", _T.TIMESTAMP),
        _col("used_at", _T.TIMESTAMP, nullable=True),
    ),
    primary_key=("token_hash",),
    indexes=(IndexDef("by_expiry", ("expires_at",), kind="btree"),),
    public=False,
    system=True,
)

OWNER_TOKENS_TABLE = TableDef(
    name=OWNER_TOKENS,
    columns=(
        _col("token_hash", _T.TEXT),
        _col("identity", _T.IDENTITY),
        _col("created_at", _T.TIMESTAMP),
    ),
    primary_key=("token_hash",),
    public=False,
    system=True,
)

AUTH_OUTBOX_TABLE = TableDef(
    name=AUTH_OUTBOX,
    columns=(
        _col("id", _T.INT64, auto_inc=True),
        _col("at", _T.TIMESTAMP),
        _col("to_address", _T.TEXT),
        _col("subject", _T.TEXT),
        _col("body", _T.TEXT),
    ),
    primary_key=("id",),
    public=False,
)

AUTH_AUDIT_TABLE = TableDef(
    name=AUTH_AUDIT,
    columns=(
        _col("seq", _T.INT64, auto_inc=True),
        _col("at", _T.TIMESTAMP),
        _col("event", _T.TEXT),
        _col("identity", _T.IDENTITY, nullable=True),
        _col("method", _T.TEXT),
        _col("ok", _T.BOOL),
        _col("detail", _T.JSON, nullable=True),
        _col("remote", _T.TEXT, nullable=True),
    ),
    primary_key=("seq",),
    indexes=(IndexDef("by_identity", ("identity",)),),
    public=False,
)

TABLES = (
    IDENTITIES_TABLE,
    PASSWORDS_TABLE,
    MAGIC_LINKS_TABLE,
    OWNER_TOKENS_TABLE,
    AUTH_OUTBOX_TABLE,
    AUTH_AUDIT_TABLE,
)

PURGE_BATCH = 100
"""Expired magic links deleted per new link (keeps the table bounded without a sweeper)."""


def _reducer(m: Module, name: str) -> Callable[[ReducerFn], ReducerFn]:
    def add(fn: ReducerFn) -> ReducerFn:
        m.add_reducer(reducer_def_from_function(fn, name, "reducer", None), fn)
        return fn

    return add


# ---------------------------------------------------------------- in-transaction helpers


def audit_row(
    ctx: ReducerContext,
    event: str,
    identity: str | None,
    method: str,
    ok: bool,
    detail: dict[str, Any] | None = None,
    remote: str | None = None,
) -> None:
    """Append one ``auth_audit`` row in the current transaction."""
    ctx.db[AUTH_AUDIT].insert(
        at=ctx.timestamp,
        event=event,
        identity=identity,
        method=method,
        ok=ok,
        detail=detail,
        remote=remote,
    )


def set_status(ctx: ReducerContext, identity: str, target: str, reason: str, by: str) -> None:
    """Move ``identity`` to ``target`` (or raise ``ReducerError``), audited in this tx."""
    t = ctx.db[IDENTITIES]
    row = t.get(identity)
    if row is None:
        raise ReducerError(f"no identity {identity}")
    if row.kind == "owner" and target != "active":
        raise ReducerError("the owner identity cannot be suspended or revoked")
    why = transition_error(row.status, target)
    if why is not None:
        raise ReducerError(why)
    t.update(row, status=target, changed_at=ctx.timestamp)
    detail = {"from": row.status, "to": target, "reason": reason, "by": by}
    audit_row(ctx, "lifecycle", identity, "admin", True, detail)


def _require_admin(ctx: ReducerContext, action: str) -> None:
    if ctx.sender == SYSTEM_IDENTITY:
        return
    row = ctx.db[IDENTITIES].get(ctx.sender)
    if row is None or row.status != "active" or "admin" not in (row.privileges or []):
        raise PolicyViolation(f"only an active admin identity may {action} identities")


def _delete_sessions(
    ctx: ReducerContext, identity: str, sessions_table: str, subs_table: str
) -> int:
    sessions = ctx.db[sessions_table]
    subs = ctx.db[subs_table]
    gone = [r for r in sessions.scan() if r.identity == identity]
    for r in gone:
        for s in subs.find("by_session", r.token_hash):
            subs.delete_row(s)
        sessions.delete_row(r)
    return len(gone)


# ---------------------------------------------------------------- the module


def build_auth_module(sessions_table: str, session_subs_table: str) -> Module:
    """The ``voicehub_auth`` module: the tables above, hidden and lifecycle reducers.

    ``sessions_table``/``session_subs_table`` name the server's session tables (a
    revocation deletes the revoked identity's sessions in its own transaction).
    """
    m = Module("voicehub_auth")
    for t in TABLES:
        m.add_table(t)

    @_reducer(m, CREATE)
    def identity_create(
        ctx: ReducerContext,
        identity: Identity,
        kind: str,
        display_name: str,
        email: str | None,
        public_key: bytes | None,
        privileges: list,
        activate: bool,
        method: str,
        remote: str | None = None,
        password_hash: str | None = None,
    ) -> None:
        if kind not in KINDS or kind == "anonymous":
            raise ReducerError(f"cannot create an identity of kind {kind!r}")
        if not set(privileges) <= PRIVILEGES:
            raise ReducerError(f"unknown privilege(s) {sorted(set(privileges) - PRIVILEGES)}")
        t = ctx.db[IDENTITIES]
        if t.get(identity) is not None:
            raise ReducerError("this identity exists already")
        t.insert(
            identity=identity,
            kind=kind,
            status="registered",
            display_name=display_name,
            email=email,
            public_key=public_key,
            privileges=sorted(privileges),
            created_at=ctx.timestamp,
            changed_at=ctx.timestamp,
        )
        if password_hash is not None:
            ctx.db[PASSWORDS].insert(
                identity=identity,
                hash=password_hash,
                failed_count=0,
                locked_until=None,
                changed_at=ctx.timestamp,
            )
        detail = {"kind": kind, "status": "registered", "by": ctx.sender}
        audit_row(ctx, "registration", identity, method, True, detail, remote)
        if activate:
            set_status(ctx, identity, "active", "registration policy", ctx.sender)

    @_reducer(m, OWNER_CREATE)
    def owner_create(
        ctx: ReducerContext, identity: Identity, token_hash: str, display_name: str
    ) -> None:
        t = ctx.db[IDENTITIES]
        if any(r.kind == "owner" for r in t.scan()):
            raise ReducerError("an owner identity exists already")
        t.insert(
            identity=identity,
            kind="owner",
            status="active",
            display_name=display_name,
            email=None,
            public_key=None,
            privileges=["admin", "bypass_rls"],
            created_at=ctx.timestamp,
            changed_at=ctx.timestamp,
        )
        ctx.db[OWNER_TOKENS].insert(
            token_hash=token_hash, identity=identity, created_at=ctx.timestamp
        )
        audit_row(ctx, "owner_bootstrap", identity, "owner_token", True, {"status": "active"})

    @_reducer(m, AUDIT)
    def audit_append(
        ctx: ReducerContext,
        event: str,
        identity: Identity | None,
        method: str,
        ok: bool,
        detail: dict | None = None,
        remote: str | None = None,
    ) -> None:
        audit_row(ctx, event, identity, method, ok, detail, remote)

    @_reducer(m, SET_STATUS)
    def identity_set_status(
        ctx: ReducerContext, identity: Identity, status: str, reason: str = ""
    ) -> None:
        set_status(ctx, identity, status, reason, ctx.sender)
        if status == "revoked":
            _delete_sessions(ctx, identity, sessions_table, session_subs_table)

    def lifecycle(name: str, target: str) -> None:
        def change(ctx: ReducerContext, identity: Identity, reason: str = "") -> str:
            _require_admin(ctx, name.removeprefix("identity_"))
            set_status(ctx, identity, target, reason, ctx.sender)
            if target == "revoked":
                _delete_sessions(ctx, identity, sessions_table, session_subs_table)
            return target

        change.__name__ = name
        m.add_reducer(reducer_def_from_function(change, name, "reducer", None), change)

    for name, target in LIFECYCLE_REDUCERS.items():
        lifecycle(name, target)

    @_reducer(m, PASSWORD_FAILURE)
    def password_failure(
        ctx: ReducerContext,
        identity: Identity | None,
        now: Timestamp,
        max_failures: int,
        lockout_us: int,
        reason: str,
        remote: str | None = None,
    ) -> bool:
        """Count a failed password login; True if this failure locked the account."""
        locked = False
        detail: dict[str, Any] = {"reason": reason}
        row = None if identity is None else ctx.db[PASSWORDS].get(identity)
        if row is not None and reason == "wrong_password":
            failed = row.failed_count + 1
            if failed >= max_failures:
                until = now + lockout_us
                ctx.db[PASSWORDS].update(row, failed_count=0, locked_until=until)
                locked = True
            else:
                ctx.db[PASSWORDS].update(row, failed_count=failed)
            detail["failed_count"] = failed
        audit_row(ctx, "login", identity, "password", False, detail, remote)
        if locked:
            lock = {"failures": max_failures, "locked_until": now + lockout_us}
            audit_row(ctx, "lockout", identity, "password", True, lock, remote)
        return locked

    @_reducer(m, PASSWORD_SUCCESS)
    def password_success(
        ctx: ReducerContext,
        identity: Identity,
        remote: str | None = None,
        new_hash: str | None = None,
    ) -> None:
        t = ctx.db[PASSWORDS]
        row = t.get(identity)
        if row is None:
            raise ReducerError("no password for this identity")
        changes: dict[str, Any] = {"failed_count": 0, "locked_until": None}
        if new_hash is not None:
            changes.update(hash=new_hash, changed_at=ctx.timestamp)
        t.update(row, **changes)
        audit_row(
            ctx, "login", identity, "password", True, {"rehashed": new_hash is not None}, remote
        )

    @_reducer(m, MAGIC_PUT)
    def magic_put(
        ctx: ReducerContext,
        token_hash: str,
        identity: Identity | None,
        email: str,
        now: Timestamp,
        expires_at: Timestamp,
        subject: str | None = None,
        body: str | None = None,
        remote: str | None = None,
    ) -> None:
        t = ctx.db[MAGIC_LINKS]
        for old in t.range("by_expiry", None, now, hi_inclusive=False)[:PURGE_BATCH]:
            t.delete_row(old)
        t.insert(
            token_hash=token_hash,
            identity=identity,
            email=email,
            created_at=now,
            expires_at=expires_at,
            used_at=None,
        )
        if subject is not None and body is not None:
            ctx.db[AUTH_OUTBOX].insert(
                at=ctx.timestamp, to_address=email, subject=subject, body=body
            )
        detail = {"sent": True, "via": "outbox" if body is not None else "smtp"}
        audit_row(ctx, "magic_link_request", identity, "magic_link", True, detail, remote)

    @_reducer(m, MAGIC_USE)
    def magic_use(
        ctx: ReducerContext,
        token_hash: str,
        now: Timestamp,
        new_identity: Identity | None = None,
        activate: bool = False,
        remote: str | None = None,
    ) -> str:
        """Mark a link used; returns the identity it logs in (created if needed)."""
        t = ctx.db[MAGIC_LINKS]
        row = t.get(token_hash)
        if row is None or row.used_at is not None or row.expires_at <= now:
            raise ReducerError("the link is unknown, used or expired")
        t.update(row, used_at=now)
        identity = row.identity
        if identity is None:
            existing = ctx.db[IDENTITIES].find_one("by_email", row.email)
            if existing is not None:
                identity = existing.identity
            elif new_identity is None:
                raise ReducerError("this link is for an unknown email")
            else:
                identity_create(
                    ctx,
                    new_identity,
                    "human",
                    row.email,
                    row.email,
                    None,
                    [],
                    activate,
                    "magic_link",
                    remote,
                )
                identity = new_identity
        return str(identity)

    return m


# ---------------------------------------------------------------- reads (newest state)


def get_identity(db: Database, identity: str) -> Any:
    """The ``__identities__`` row of ``identity`` (None if unknown)."""
    return db.stores[IDENTITIES].get(identity)


def identity_by_email(db: Database, email: str) -> Any:
    rows = db.stores[IDENTITIES].lookup("by_email", email)
    return rows[0] if rows else None


def identity_by_key(db: Database, public_key: bytes) -> Any:
    rows = db.stores[IDENTITIES].lookup("by_public_key", public_key)
    return rows[0] if rows else None


def owner_of_token(db: Database, token_hash: str) -> str | None:
    row: Any = db.stores[OWNER_TOKENS].get(token_hash)
    return None if row is None else str(row.identity)


def owner_identity(db: Database) -> str | None:
    """The owner's identity (None before the bootstrap)."""
    for row in db.stores[OWNER_TOKENS].rows():
        return str(row[1])
    return None


def password_row(db: Database, identity: str) -> Any:
    return db.stores[PASSWORDS].get(identity)


def magic_row(db: Database, token_hash: str) -> Any:
    return db.stores[MAGIC_LINKS].get(token_hash)
