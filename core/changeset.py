"""What one commit changed: per table, the rows it inserted and deleted (a Z-set).

An update of a row appears as the old row in ``deletes`` and the new row in ``inserts``;
rows are never in both lists of one table unless they really changed. Commit listeners
(subscriptions) receive one ``Changeset`` per commit, in offset order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple


class TableChange(NamedTuple):
    inserts: list[tuple]
    deletes: list[tuple]

    def weighted(self) -> Iterator[tuple[tuple, int]]:
        for r in self.deletes:
            yield r, -1
        for r in self.inserts:
            yield r, 1


class Changeset:
    __slots__ = ("args", "caller", "offset", "reducer", "tables", "timestamp")

    def __init__(
        self,
        offset: int,
        timestamp: int,
        reducer: str,
        caller: str,
        args: list[Any],
        tables: dict[str, TableChange],
    ) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.reducer = reducer
        self.caller = caller
        self.args = args
        self.tables = tables

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{t}: +{len(c.inserts)}/-{len(c.deletes)}" for t, c in self.tables.items()
        )
        return f"Changeset(offset={self.offset}, reducer={self.reducer!r}, {{{parts}}})"

    def __bool__(self) -> bool:
        return bool(self.tables)
