"""Schema as data: serializable descriptions of tables, indexes, reducers and modules.

A schema is plain data (msgspec structs that round-trip through JSON/MessagePack), so a
Python module, a WASM module or a stored snapshot can all describe the same tables.
Invariant: a ``TableDef`` that passed ``validate()`` has a non-nullable primary key made
of existing columns, auto-increment only on int64 columns, and uniquely named indexes.
"""

from __future__ import annotations

import keyword
import re
from typing import Any, Literal

import msgspec

from core.errors import SchemaError
from core.types import ColumnType, check

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
IndexKind = Literal["hash", "btree"]
ReducerKind = Literal["reducer", "init", "client_connected", "client_disconnected"]
LIFECYCLE_KINDS = ("init", "client_connected", "client_disconnected")


def check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise SchemaError(
            f"invalid {kind} name {name!r}: start with a lowercase letter, then lowercase"
            " letters, digits and _ (max 63)"
        )
    if kind == "column" and keyword.iskeyword(name):
        raise SchemaError(f"invalid column name {name!r}: it is a Python keyword")


class ColumnDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    type: ColumnType
    nullable: bool = False
    auto_inc: bool = False
    has_default: bool = False
    default: Any = None


class IndexDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    columns: tuple[str, ...]
    kind: IndexKind = "hash"
    unique: bool = False


PolicyKind = Literal["read", "write"]


class PolicyDef(msgspec.Struct, frozen=True, omit_defaults=True):
    """A row-level security policy: a SQL predicate over the row, ``:sender`` and tables.

    Read policies decide which rows a (non-system) caller can see; write policies which
    rows it may create, change or delete (without any, the read policies apply to writes
    too). Several policies of one kind are OR-ed.
    """

    name: str
    kind: PolicyKind
    predicate: str


class TableDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    columns: tuple[ColumnDef, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[IndexDef, ...] = ()
    public: bool = True
    system: bool = False
    policies: tuple[PolicyDef, ...] = ()

    def column_index(self, name: str) -> int:
        for i, c in enumerate(self.columns):
            if c.name == name:
                return i
        raise SchemaError(f"table {self.name!r} has no column {name!r}")

    def validate(self) -> TableDef:
        check_name("table", self.name.removeprefix("__").removesuffix("__"))
        if not self.columns:
            raise SchemaError(f"table {self.name!r} has no columns")
        seen: set[str] = set()
        for c in self.columns:
            check_name("column", c.name)
            if c.name in seen:
                raise SchemaError(f"table {self.name!r}: duplicate column {c.name!r}")
            seen.add(c.name)
            if c.has_default and c.default is None and not c.nullable:
                raise SchemaError(f"{self.name}.{c.name}: NOT NULL column with a NULL default")
            if c.auto_inc and c.type != ColumnType.INT64:
                raise SchemaError(
                    f"{self.name}.{c.name}: auto_inc needs an int64 column, not {c.type.value}"
                )
            if c.has_default:
                check(c.type, c.nullable, c.default, f"{self.name}.{c.name} default")
        if not self.primary_key:
            raise SchemaError(f"table {self.name!r} needs a primary key")
        for k in self.primary_key:
            col = self.columns[self.column_index(k)]
            if col.nullable:
                raise SchemaError(f"{self.name}.{k}: primary key columns cannot be nullable")
            if col.type == ColumnType.JSON:
                raise SchemaError(f"{self.name}.{k}: json columns cannot be keys")
        if len(set(self.primary_key)) != len(self.primary_key):
            raise SchemaError(f"table {self.name!r}: repeated primary key column")
        names: set[str] = set()
        for ix in self.indexes:
            check_name("index", ix.name)
            if ix.name in names:
                raise SchemaError(f"table {self.name!r}: duplicate index {ix.name!r}")
            names.add(ix.name)
            if not ix.columns:
                raise SchemaError(f"index {self.name}.{ix.name} has no columns")
            for k in ix.columns:
                col = self.columns[self.column_index(k)]
                if col.type == ColumnType.JSON:
                    raise SchemaError(f"index {self.name}.{ix.name}: json column {k!r}")
            if ix.kind not in ("hash", "btree"):
                raise SchemaError(f"index {self.name}.{ix.name}: unknown kind {ix.kind!r}")
        return self


class ParamDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    type: ColumnType
    nullable: bool = False
    has_default: bool = False
    default: Any = None


class ReducerDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    params: tuple[ParamDef, ...] = ()
    kind: ReducerKind = "reducer"


class ScheduleDef(msgspec.Struct, frozen=True, omit_defaults=True):
    """A reducer the module wants run every ``every_us`` microseconds from first start."""

    reducer: str
    every_us: int


class ModuleDef(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    tables: tuple[TableDef, ...] = ()
    reducers: tuple[ReducerDef, ...] = ()
    schedules: tuple[ScheduleDef, ...] = ()


def to_builtins(obj: Any) -> Any:
    """A JSON-ready form of any schema object (used by ``GET /v1/schema`` and snapshots)."""
    return msgspec.to_builtins(obj)


def table_from_builtins(data: Any) -> TableDef:
    return msgspec.convert(data, TableDef).validate()


def module_from_builtins(data: Any) -> ModuleDef:
    mod = msgspec.convert(data, ModuleDef)
    for t in mod.tables:
        t.validate()
    return mod
