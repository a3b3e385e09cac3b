"""Differential tests of incremental subscriptions against SQLite.

Random schemas, data and queries (the generator of ``test_sql_adhoc``) are subscribed on
an empty store; then random transactions (inserts, updates, deletes, multi-table, and
transactions that fail and roll back) are committed one by one. After every commit the
subscription's result, integrated *only from the deltas it received*, must equal SQLite
re-evaluating the query over the same data; a failed transaction must deliver nothing;
and the integrated deltas must never retract a row the subscriber does not hold.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import test_sql_adhoc as gen
from hypothesis import given, note, settings
from hypothesis import strategies as st

from core.database import Database
from core.subscriptions import Delta, Subscription, SubscriptionManager


class Fold:
    """What a client holds: the initial rows plus every delta, as a multiset."""

    def __init__(self, rows: list[tuple]) -> None:
        self.rows: Counter[tuple] = Counter(rows)
        self.deltas = 0

    def apply(self, d: Delta) -> None:
        self.deltas += 1
        for r in d.deletes:
            assert self.rows[r] > 0, f"delta retracts {r!r}, which the subscriber does not hold"
            self.rows[r] -= 1
            if not self.rows[r]:
                del self.rows[r]
        for r in d.inserts:
            self.rows[r] += 1

    def as_list(self) -> list[tuple]:
        return [tuple(gen._norm(v) for v in r) for r in self.rows.elements()]


def sqlite_rows(schema: list[gen.Table], state: gen.State, lite_sql: str, params: Any) -> list:
    conn = gen.sqlite_db(schema, state)
    try:
        return [tuple(gen._norm(v) for v in r) for r in conn.execute(lite_sql, params).fetchall()]
    finally:
        conn.close()


def failing_commit(db: Database, ops: list[list]) -> None:
    """Apply ``ops`` then fail: the transaction must leave no trace and no delta."""
    with pytest.raises(Exception, match="boom"):  # the generic reducer rejects the op
        db.call_sync("apply", [[*ops, ["boom", "t0", None]]])


def run(data: Any) -> None:
    schema = data.draw(gen.schemas(), label="schema")
    hist = data.draw(gen.histories(schema), label="history")
    pools = gen.value_pools(schema, hist)
    db = gen.open_db([t.tdef() for t in schema])
    mgr = SubscriptionManager(db)
    received: list[tuple[int, dict[Subscription, Delta]]] = []
    mgr.hooks.append(lambda off, up: received.append((off, dict(up))))
    try:
        subs: list[tuple[Subscription, Fold, str, Any, gen.Sql]] = []
        empty: gen.State = {t.name: {} for t in schema}
        for _ in range(data.draw(st.integers(1, 3), label="queries")):
            q = data.draw(gen.queries(schema, pools), label="query")
            vh_sql, vh_params, lite_sql, lite_params = gen.render(q, None)
            note(f"subscribe: {vh_sql}  params={vh_params!r}")
            sub, rows = mgr.subscribe(vh_sql, vh_params)
            fold = Fold(rows)
            assert gen.same_rows(
                fold.as_list(), sqlite_rows(schema, empty, lite_sql, lite_params), False
            ), f"initial result differs for {vh_sql}"
            subs.append((sub, fold, vh_sql, lite_params, q))
        for i, ops in enumerate(hist.commits):
            if i and data.draw(st.integers(0, 3), label="fail first") == 0:
                before = len(received)
                failing_commit(db, ops)
                assert len(received) == before, "a rolled-back transaction delivered deltas"
            res = db.call_sync("apply", [ops])
            new = [(off, up) for off, up in received if off == res.offset]
            assert len(new) <= 1, "more than one delivery for one commit"
            updates = new[0][1] if new else {}
            for sub, fold, vh_sql, lite_params, q in subs:
                if sub in updates:
                    fold.apply(updates[sub])
                _, _, lite_sql, _ = gen.render(q, None)
                want = sqlite_rows(schema, hist.states[i], lite_sql, lite_params)
                got = fold.as_list()
                assert gen.same_rows(got, want, False), (
                    f"after commit {i} ({ops}):\n{vh_sql}\n"
                    f"integrated deltas: {sorted(got, key=gen._sortable)}\n"
                    f"sqlite:            {sorted(want, key=gen._sortable)}"
                )
                view = [tuple(gen._norm(v) for v in r) for r in sub.rows()]
                assert gen.same_rows(view, want, False), "the shared view drifted"
        assert [off for off, _ in received] == sorted({off for off, _ in received})
    finally:
        mgr.close()
        db.close()


@settings(max_examples=120, **gen.DIFF_SETTINGS)  # type: ignore[arg-type]
@given(st.data())
def test_subscriptions_match_sqlite(data: Any) -> None:
    run(data)


@pytest.mark.slow
@settings(max_examples=4000, **gen.DIFF_SETTINGS)  # type: ignore[arg-type]
@given(st.data())
def test_subscriptions_match_sqlite_many(data: Any) -> None:
    run(data)
