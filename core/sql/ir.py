"""The logical plan: expressions over positional rows and relational operator nodes.

Both back ends read only this IR (never sqlglot's AST): the ad-hoc executor pulls rows
through it, and the DBSP compiler turns each node into an incremental operator.
Invariant: every expression refers to input columns by position, and every node knows its
output columns (name, type, nullability), so back ends never resolve names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.types import ColumnType

# ---------------------------------------------------------------- expressions


class Expr:
    """Base class; every expression is an immutable, hashable dataclass."""

    type: ColumnType | None = None


@dataclass(frozen=True)
class ColRef(Expr):
    index: int
    type: ColumnType | None = None


@dataclass(frozen=True)
class Const(Expr):
    value: Any
    type: ColumnType | None = None


@dataclass(frozen=True)
class BinOp(Expr):
    """Arithmetic (+ - * / %), concatenation (||) and comparisons (= <> < <= > >=)."""

    op: str
    left: Expr
    right: Expr
    type: ColumnType | None = None


@dataclass(frozen=True)
class BoolOp(Expr):
    """AND / OR with SQL three-valued logic over any number of operands."""

    op: str
    args: tuple[Expr, ...]
    type: ColumnType | None = ColumnType.BOOL


@dataclass(frozen=True)
class Not(Expr):
    arg: Expr
    type: ColumnType | None = ColumnType.BOOL


@dataclass(frozen=True)
class Neg(Expr):
    arg: Expr
    type: ColumnType | None = None


@dataclass(frozen=True)
class IsNull(Expr):
    arg: Expr
    negated: bool = False
    type: ColumnType | None = ColumnType.BOOL


@dataclass(frozen=True)
class InList(Expr):
    arg: Expr
    values: tuple[Expr, ...]
    negated: bool = False
    type: ColumnType | None = ColumnType.BOOL


@dataclass(frozen=True)
class Like(Expr):
    arg: Expr
    pattern: Expr
    negated: bool = False
    case_insensitive: bool = False
    type: ColumnType | None = ColumnType.BOOL


@dataclass(frozen=True)
class Case(Expr):
    whens: tuple[tuple[Expr, Expr], ...]
    default: Expr | None
    type: ColumnType | None = None


@dataclass(frozen=True)
class Func(Expr):
    """Scalar functions: lower, upper, length, abs, coalesce."""

    name: str
    args: tuple[Expr, ...]
    type: ColumnType | None = None


AGG_FUNCS = ("count", "sum", "avg", "min", "max")


@dataclass(frozen=True)
class AggCall:
    func: str  # count, sum, avg, min, max
    arg: Expr | None  # None for COUNT(*)
    distinct: bool = False
    type: ColumnType | None = None


# ---------------------------------------------------------------- plan nodes


@dataclass(frozen=True)
class OutCol:
    name: str
    type: ColumnType | None
    nullable: bool = True


@dataclass(eq=False)
class Node:
    columns: list[OutCol] = field(default_factory=list, kw_only=True)

    def children(self) -> list[Node]:
        return []


@dataclass(eq=False)
class Scan(Node):
    """All rows of a base table, in table column order.

    ``filter`` holds the single-table conjuncts pushed down to this scan (over its own
    columns); ``dispatch`` lists (column position, value) equalities with a constant or a
    parameter, which index-aware back ends use to reach only matching rows.
    """

    table: str
    alias: str
    filter: Expr | None = None
    dispatch: list[tuple[int, Any]] = field(default_factory=list)


@dataclass(eq=False)
class Filter(Node):
    input: Node
    predicate: Expr

    def children(self) -> list[Node]:
        return [self.input]


@dataclass(eq=False)
class Project(Node):
    input: Node
    exprs: list[Expr]

    def children(self) -> list[Node]:
        return [self.input]


@dataclass(eq=False)
class Join(Node):
    """Equi-join; output row = left row + right row (right padded with NULLs for LEFT)."""

    left: Node
    right: Node
    kind: str  # "inner" | "left"
    left_keys: list[Expr]
    right_keys: list[Expr]
    residual: Expr | None = None  # over the concatenated row

    def children(self) -> list[Node]:
        return [self.left, self.right]


@dataclass(eq=False)
class SemiJoin(Node):
    """``left_key IN (subquery)``: left rows whose key appears in the right input."""

    left: Node
    right: Node
    left_key: Expr
    right_key: Expr

    def children(self) -> list[Node]:
        return [self.left, self.right]


@dataclass(eq=False)
class Aggregate(Node):
    """Output row = group key values followed by one value per aggregate call."""

    input: Node
    group: list[Expr]
    aggs: list[AggCall]

    def children(self) -> list[Node]:
        return [self.input]


@dataclass(eq=False)
class Distinct(Node):
    input: Node

    def children(self) -> list[Node]:
        return [self.input]


@dataclass(frozen=True)
class SortKey:
    expr: Expr
    desc: bool = False
    nulls_first: bool = False


@dataclass(eq=False)
class TopK(Node):
    """ORDER BY ... LIMIT/OFFSET; ``limit`` None means no limit (offset only)."""

    input: Node
    order: list[SortKey]
    limit: int | None
    offset: int = 0

    def children(self) -> list[Node]:
        return [self.input]


@dataclass(eq=False)
class Sort(Node):
    """ORDER BY without LIMIT: ordering only (subscriptions leave it to the client)."""

    input: Node
    order: list[SortKey]

    def children(self) -> list[Node]:
        return [self.input]


@dataclass(eq=False)
class Union(Node):
    inputs: list[Node]
    all: bool = True

    def children(self) -> list[Node]:
        return list(self.inputs)


@dataclass
class Query:
    """A lowered query: the plan root, and the AS OF point if one was given."""

    root: Node
    as_of_offset: int | None = None
    as_of_timestamp: int | None = None
    tables: list[str] = field(default_factory=list)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.root.columns]


def walk(node: Node) -> list[Node]:
    out = [node]
    for c in node.children():
        out.extend(walk(c))
    return out
