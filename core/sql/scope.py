"""The tables of one SELECT and how a column name resolves to a row position.

Tables are laid out left-deep in FROM/JOIN order: each entry's columns follow the previous
entry's in the concatenated row. Invariant: a resolved column is unambiguous, and columns
of a LEFT-joined (NULL-supplying) table are reported as nullable.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from core.errors import SchemaError, SqlError
from core.schema import TableDef
from core.sql import ir
from core.sql.parse import position


@dataclass
class Entry:
    alias: str
    tdef: TableDef
    start: int
    nullable: bool

    @property
    def end(self) -> int:
        return self.start + len(self.tdef.columns)


class Scope:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.entries: list[Entry] = []
        self.width = 0

    def add(self, alias: str, tdef: TableDef, nullable: bool, node: exp.Expr) -> Entry:
        if any(e.alias == alias for e in self.entries):
            raise SqlError(f"table alias {alias!r} used twice{position(self.sql, node)}")
        e = Entry(alias, tdef, self.width, nullable)
        self.entries.append(e)
        self.width = e.end
        return e

    def entry_of(self, pos: int) -> int:
        for i, e in enumerate(self.entries):
            if e.start <= pos < e.end:
                return i
        raise AssertionError(pos)

    def resolve(self, col: exp.Column) -> ir.Expr:
        name, qual = col.name, col.table
        cands = [e for e in self.entries if not qual or e.alias == qual]
        if qual and not cands:
            raise SqlError(f"unknown table or alias {qual!r}{position(self.sql, col)}")
        found = []
        for e in cands:
            try:
                found.append((e, e.tdef.column_index(name)))
            except SchemaError:
                continue
        if not found:
            where = f"{qual}." if qual else ""
            raise SqlError(f"unknown column {where}{name}{position(self.sql, col)}")
        if len(found) > 1:
            raise SqlError(f"column {name!r} is ambiguous{position(self.sql, col)}: qualify it")
        e, i = found[0]
        return ir.ColRef(e.start + i, e.tdef.columns[i].type)

    def out_cols(self) -> list[ir.OutCol]:
        return [
            ir.OutCol(c.name, c.type, c.nullable or e.nullable)
            for e in self.entries
            for c in e.tdef.columns
        ]
