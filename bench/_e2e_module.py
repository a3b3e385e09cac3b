"""The user module ``bench/e2e_bench.py`` loads into ``voicehub serve --module``.

An agent action addressed to several agents is written as one row per addressee, all in
one commit: each agent's own subscription ``SELECT * FROM actions WHERE agent = $1``
receives exactly its row, through the subscription manager's parameter index.
"""

from __future__ import annotations

from core import Module, ReducerContext, column, index

e2e = Module("e2e")


@e2e.table(name="actions", primary_key="id", indexes=[index("by_agent", "agent")])
class Action:
    id: int = column(auto_inc=True)  # type: ignore[assignment]
    agent: str
    kind: str
    payload: str


@e2e.reducer
def act(ctx: ReducerContext, agents: list, kind: str, payload: str) -> int:
    """One action for every agent in ``agents`` (one commit); returns the first row id."""
    insert = ctx.db.actions.insert
    first = 0
    for a in agents:
        row = insert(agent=a, kind=kind, payload=payload)
        first = first or int(row.id)
    return first
