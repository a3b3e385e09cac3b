"""Live SQL subscriptions: each query becomes a DBSP circuit fed by every commit.

``subscribe`` returns the current result; afterwards, for every commit that changes a
subscription's result, the manager's hooks receive exactly one ``Delta`` per affected
subscription, all of one commit together, in commit order. Identical queries (same plan,
same bound parameters) share one circuit. Equality conditions on a base table column
(``WHERE call_id = $1``) register the circuit in a dispatch index, so a commit only runs
the circuits whose key values it touches: commit cost does not grow with the number of
subscriptions it does not affect. Unsubscribing the last subscriber releases all state.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from core.changeset import Changeset
from core.database import Database
from core.dbsp.arrangement import ArrangementRegistry
from core.dbsp.circuit import Circuit
from core.dbsp.source import thaw
from core.dbsp.zset import ZSet, expand, zmerge
from core.errors import SqlError
from core.rls import lower_for
from core.sql import ir

log = logging.getLogger("voicehub.subscriptions")


class Delta(NamedTuple):
    """A change of one subscription's result. Rows repeat by multiplicity.

    For a table with a primary key, an updated row arrives as a delete of the old row and
    an insert of the new one in the same Delta: clients fold the pair (same key) into an
    update.
    """

    inserts: list[tuple]
    deletes: list[tuple]


class Instance:
    """One shared circuit and the subscriptions reading it."""

    def __init__(self, key: str, query: ir.Query, circuit: Circuit, view: ZSet) -> None:
        self.key = key
        self.query = query
        self.circuit = circuit
        self.view = view
        self.subs: list[Subscription] = []
        self.routes: list[tuple[str, int, Any]] = []
        self.broadcast: list[str] = []
        self.seq = 0
        self.thaw = any(s.has_json for s in circuit.sources)


class Subscription:
    __slots__ = ("columns", "id", "instance", "params", "sql", "types")

    def __init__(self, sid: int, sql: str, params: Any, instance: Instance) -> None:
        self.id = sid
        self.sql = sql
        self.params = params
        self.instance = instance
        root = instance.query.root
        self.columns = [c.name for c in root.columns]
        self.types = [c.type.value if c.type else None for c in root.columns]

    def rows(self) -> list[tuple]:
        """The current result (integrated view), rows repeated by multiplicity."""
        rows = expand(self.instance.view)[0]
        return [thaw(r) for r in rows] if self.instance.thaw else rows

    def __repr__(self) -> str:
        return f"Subscription({self.id}, {self.sql!r})"


Hook = Callable[[int, dict[Subscription, Delta]], None]


def _routes(root: ir.Node) -> tuple[list[tuple[str, int, Any]], set[str]]:
    """Dispatch routes (table, column, value) and the tables that must be broadcast."""
    scans = [n for n in ir.walk(root) if isinstance(n, ir.Scan)]
    by_table: dict[str, list[ir.Scan]] = {}
    for s in scans:
        by_table.setdefault(s.table, []).append(s)
    routes: list[tuple[str, int, Any]] = []
    broadcast: set[str] = set()
    for table, ss in by_table.items():
        if all(s.dispatch for s in ss):
            for s in ss:
                col, value = s.dispatch[0]
                routes.append((table, col, value))
        else:
            broadcast.add(table)
    return routes, broadcast


class SubscriptionManager:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.registry = ArrangementRegistry()
        self.instances: dict[str, Instance] = {}
        self.broadcast: dict[str, set[Instance]] = {}
        self.dispatch: dict[str, dict[int, dict[Any, set[Instance]]]] = {}
        self.hooks: list[Hook] = []
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._closed = False
        db.add_listener(self._on_commit)

    def close(self) -> None:
        """Stop following commits (idempotent)."""
        if not self._closed:
            self._closed = True
            self.db.remove_listener(self._on_commit)

    def compile(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
        sender: str | None = None,
    ) -> ir.Query:
        """Lower a subscription query as ``sender`` sees the data (None: unrestricted)."""
        q = lower_for(self.db.stores, sql, params, sender)
        if q.as_of_offset is not None or q.as_of_timestamp is not None:
            raise SqlError("AS OF is for one-off queries; a subscription follows the live state")
        return q

    def subscribe(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        sender: str | None = None,
    ) -> tuple[Subscription, list[tuple]]:
        """Compile (or share) the circuit; returns the subscription and its current rows.

        The rows are the result at ``db.offset``; every later commit arrives via hooks.
        """
        q = self.compile(sql, params, sender)
        key = repr(q.root)
        inst = self.instances.get(key)
        if inst is None:
            circuit = Circuit(q.root, self.db.stores, self.registry)
            view = circuit.init()
            inst = Instance(key, q, circuit, view)
            inst.seq = next(self._seq)
            routes, broadcast = _routes(q.root)
            inst.routes = routes
            inst.broadcast = sorted(broadcast)
            for table in broadcast:
                self.broadcast.setdefault(table, set()).add(inst)
            for table, col, value in routes:
                self.dispatch.setdefault(table, {}).setdefault(col, {}).setdefault(
                    value, set()
                ).add(inst)
            self.instances[key] = inst
        sub = Subscription(next(self._ids), sql, params, inst)
        inst.subs.append(sub)
        return sub, sub.rows()

    def unsubscribe(self, sub: Subscription) -> None:
        inst = sub.instance
        if sub not in inst.subs:
            return
        inst.subs.remove(sub)
        if inst.subs:
            return
        del self.instances[inst.key]
        for table in inst.broadcast:
            s = self.broadcast.get(table)
            if s is not None:
                s.discard(inst)
                if not s:
                    del self.broadcast[table]
        for table, col, value in inst.routes:
            vm = self.dispatch[table][col]
            vm[value].discard(inst)
            if not vm[value]:
                del vm[value]
            if not vm:
                del self.dispatch[table][col]
            if not self.dispatch[table]:
                del self.dispatch[table]
        inst.circuit.release()

    @property
    def subscription_count(self) -> int:
        return sum(len(i.subs) for i in self.instances.values())

    def _affected(self, cs: Changeset) -> list[Instance]:
        tables = cs.tables
        if len(tables) == 1 and not self.dispatch:  # common case: no routing to do
            b = self.broadcast.get(next(iter(tables)))
            return sorted(b, key=lambda i: i.seq) if b else []
        hit: set[Instance] = set()
        for table, ch in tables.items():
            b = self.broadcast.get(table)
            if b:
                hit |= b
            dm = self.dispatch.get(table)
            if dm:
                for col, vmap in dm.items():
                    for rows in (ch.inserts, ch.deletes):
                        for r in rows:
                            s = vmap.get(r[col])
                            if s:
                                hit |= s
        if len(hit) == 1:
            return list(hit)
        return sorted(hit, key=lambda i: i.seq)

    def _on_commit(self, cs: Changeset) -> None:
        if not self.instances or not cs.tables:
            return
        self.registry.begin(cs.offset)
        updates: dict[Subscription, Delta] = {}
        try:
            for inst in self._affected(cs):
                d = inst.circuit.step(cs.tables)
                if not d:
                    continue
                zmerge(inst.view, d)
                ins, dels = expand(d)
                if inst.thaw:
                    ins = [thaw(r) for r in ins]
                    dels = [thaw(r) for r in dels]
                delta = Delta(ins, dels)
                for sub in inst.subs:
                    updates[sub] = delta
        finally:
            self.registry.end(cs.tables)
        if updates:
            for hook in self.hooks:
                hook(cs.offset, updates)
