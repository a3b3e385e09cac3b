"""Durable sessions: tokens, identities, remembered subscriptions, and resume catch-up.

A session is a row of ``__sessions__`` (keyed by the SHA-256 of its token, so neither the
store nor the log holds a usable secret) plus one ``__session_subs__`` row per live
subscription, written before the client hears ``subscribed`` and deleted before it hears
``unsubscribed``. Every change is a commit, so sessions survive graceful restarts and
``kill -9`` alike.

Resume: a client that presents its token and the last offset ``K`` it saw gets, for every
remembered subscription it had at ``K``, the deltas it missed. Within the in-memory
history (``--history-commits``, rebuilt from the log after a restart) and up to
``REPLAY_LIMIT`` relevant commits, they are replayed commit by commit: one ``tx_update``
(flagged ``catch_up``) per missed commit that changed any of its subscriptions, at that
commit's offset, all subscriptions of the commit together - exactly what it would have
received. Past that, it gets the *net* difference between the result at ``K`` (an MVCC
read, from memory or from snapshots + the log) and the result now, as one ``catch_up``
``tx_update`` (no gap and no duplicate; intermediate states folded). Subscriptions it had
not yet seen at ``K`` arrive as fresh ``subscribed``. If ``K`` is no longer readable,
every subscription arrives fresh and the session says ``resumed: false``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.database import Database
from core.errors import HistoryUnavailable, StoreError
from core.reads import ReadSnapshot
from core.sql import ir
from core.sql.executor import execute_plan
from core.subscriptions import SubscriptionManager
from voicehub.server.calls import request_key
from voicehub.server.codec import row_key
from voicehub.server.system import SESSION_SUBS, SESSIONS, latest

log = logging.getLogger("voicehub.server.sessions")


@dataclass
class SubSpec:
    query_id: Any
    sql: str
    params: Any
    since: int

    @property
    def key(self) -> str:
        return request_key(self.query_id)


@dataclass
class SessionRecord:
    token_hash: str
    identity: str
    last_offset: int = 0
    subs: dict[str, SubSpec] = field(default_factory=dict)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, identity: str | None = None) -> tuple[str, SessionRecord, int]:
        """A new session of ``identity`` (None: a fresh anonymous identity).

        Returns (token, record, offset of the commit that stored it).
        """
        token = secrets.token_urlsafe(32)
        rec = SessionRecord(token_hash(token), identity or secrets.token_hex(32))
        res = self.db.execute(
            "voicehub_session_open", {"token_hash": rec.token_hash, "identity": rec.identity}
        )
        return token, rec, res.offset

    def load(self, token: str) -> SessionRecord | None:
        h = token_hash(token)
        row: Any = latest(self.db.stores, SESSIONS).get(h)
        if row is None:
            return None
        rec = SessionRecord(h, row.identity, row.last_offset)
        subs: list[Any] = latest(self.db.stores, SESSION_SUBS).lookup("by_session", h)
        for s in sorted(subs, key=lambda s: s.since):
            spec = SubSpec(s.query_id, s.sql, s.params, s.since)
            rec.subs[spec.key] = spec
        return rec

    def identity_of(self, token: str) -> str | None:
        row: Any = latest(self.db.stores, SESSIONS).get(token_hash(token))
        return None if row is None else row.identity

    def reopen(self, rec: SessionRecord) -> int:
        res = self.db.execute(
            "voicehub_session_open", {"token_hash": rec.token_hash, "identity": rec.identity}
        )
        return res.offset

    def rebind(self, rec: SessionRecord, identity: str) -> int:
        """Move the session to ``identity`` (after an ``authenticate``); the commit offset."""
        res = self.db.execute(
            "voicehub_session_rebind", {"token_hash": rec.token_hash, "identity": identity}
        )
        rec.identity = identity
        return res.offset

    def seen(self, rec: SessionRecord, last_offset: int) -> None:
        rec.last_offset = max(rec.last_offset, last_offset)
        self.db.execute(
            "voicehub_session_seen", {"token_hash": rec.token_hash, "last_offset": last_offset}
        )

    def put_sub(self, rec: SessionRecord, spec: SubSpec) -> int:
        res = self.db.execute(
            "voicehub_sub_put",
            {
                "token_hash": rec.token_hash,
                "query_key": spec.key,
                "query_id": spec.query_id,
                "sql": spec.sql,
                "params": spec.params,
                "since": spec.since,
            },
        )
        rec.subs[spec.key] = spec
        return res.offset

    def drop_sub(self, rec: SessionRecord, key: str) -> int:
        rec.subs.pop(key, None)
        res = self.db.execute("voicehub_sub_drop", {"token_hash": rec.token_hash, "query_key": key})
        return res.offset


# ---------------------------------------------------------------- catch-up


async def rows_at(
    db: Database,
    mgr: SubscriptionManager,
    specs: list[SubSpec],
    offset: int,
    sender: str | None,
) -> dict[str, list[tuple]] | None:
    """Each spec's result at ``offset`` as ``sender`` saw it (None: no longer readable).

    ``sender`` is the session's identity (None for an unrestricted principal): the
    policies are compiled for it and their tables read at ``offset`` too, so the result
    is what that identity's subscription held then. In-memory history is read on the
    event loop; older points are rebuilt from snapshots and the log on a worker thread
    (the rebuilt state is private to that thread).
    """
    plans = {}
    for s in specs:
        try:
            plans[s.key] = mgr.compile(s.sql, s.params, sender).root
        except StoreError:
            continue  # reported when the subscription is re-created
    if not plans:
        return {}
    if offset > db.visible_offset or offset < 0:
        return None
    if offset >= db.history_floor:
        with db.snapshot(offset) as snap:
            return {k: execute_plan(p, snap) for k, p in plans.items()}

    def from_disk() -> dict[str, list[tuple]]:
        snap: ReadSnapshot = db.as_of(offset=offset)
        try:
            return {k: execute_plan(p, snap) for k, p in plans.items()}
        finally:
            snap.close()

    try:
        return await asyncio.to_thread(from_disk)
    except HistoryUnavailable:
        return None
    except StoreError as e:
        log.warning("catch-up read at offset %d failed: %s", offset, e)
        return None


REPLAY_LIMIT = 512
"""At most this many missed commits are replayed one by one per resume; past it (or past
the in-memory history) the catch-up is one net delta."""


def _tables(node: ir.Node) -> set[str]:
    out: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ir.Scan):
            out.add(n.table)
        todo.extend(n.children())
    return out


def commit_deltas(
    db: Database,
    mgr: SubscriptionManager,
    specs: list[SubSpec],
    offset: int,
    sender: str | None,
    limit: int | None = None,
) -> tuple[list[tuple[int, dict[str, tuple[list[tuple], list[tuple]]]]], dict[str, list[tuple]]]:
    """The missed commits after ``offset``, one by one: for every commit that changed some
    spec's result, (offset, {spec key: (inserts, deletes)}), and each spec's result after
    the last replayed commit. More than ``limit`` relevant commits are not replayed: the
    results are then those at ``offset``, for the caller's net delta. Raises
    ``HistoryUnavailable`` when the commits are no longer in memory.

    Synchronous on purpose: it runs where no other commit can slip in, and reads only
    in-memory MVCC history (each point is a snapshot read of the compiled plan, RLS
    included, so a commit that changed a policy's table shows up as the rows it hid or
    revealed). Commits not yet visible (durable) are left to the caller's final net delta.
    """
    plans: dict[str, ir.Node] = {}
    for sp in specs:
        try:
            plans[sp.key] = mgr.compile(sp.sql, sp.params, sender).root
        except StoreError:
            continue  # reported when the subscription is re-created
    commits = db.commits_after(offset)
    if commits is None:
        raise HistoryUnavailable(f"commits after {offset} are not in memory")
    visible = db.visible_offset
    tables = {k: _tables(p) for k, p in plans.items()}
    wanted = set().union(*tables.values()) if tables else set()
    todo = [(j, t) for j, t in commits if j <= visible and wanted.intersection(t)]
    if len(todo) > (REPLAY_LIMIT if limit is None else limit):
        log.info("resume after %d: %d missed commits, sent as one net delta", offset, len(todo))
        todo = []
    with db.snapshot(offset) as snap:
        prev = {k: execute_plan(p, snap) for k, p in plans.items()}
    out: list[tuple[int, dict[str, tuple[list[tuple], list[tuple]]]]] = []
    for j, changed in todo:
        hit = [k for k in plans if tables[k].intersection(changed)]
        per: dict[str, tuple[list[tuple], list[tuple]]] = {}
        with db.snapshot(j) as snap:
            for k in hit:
                cur = execute_plan(plans[k], snap)
                ins, dels = net_delta(cur, prev[k])
                if ins or dels:
                    per[k] = (ins, dels)
                prev[k] = cur
        if per:
            out.append((j, per))
    return out, prev


def net_delta(now: list[tuple], then: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(inserts, deletes) turning the multiset ``then`` into ``now``."""
    left: Counter[bytes] = Counter()
    sample: dict[bytes, tuple] = {}
    for r in then:
        k = row_key(r)
        left[k] += 1
        sample[k] = r
    inserts = []
    for r in now:
        k = row_key(r)
        if left[k] > 0:
            left[k] -= 1
        else:
            inserts.append(r)
    deletes = [sample[k] for k, n in left.items() for _ in range(n)]
    return inserts, deletes
