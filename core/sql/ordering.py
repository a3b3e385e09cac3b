"""Total orders and hashable forms for result rows, shared by the executor and DBSP.

ORDER BY follows PostgreSQL: ascending puts NULLs last, descending puts them first, unless
NULLS FIRST/LAST says otherwise (sqlglot reports the effective choice per key). Ties are
broken by the whole row (NULL first, json by its canonical text), so ``ORDER BY ... LIMIT``
selects the same rows in the ad-hoc executor and in an incremental subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from core.sql import ir

_enc = msgspec.json.Encoder(order="sorted")


class Desc:
    """Reverses the order of the value it wraps."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: Desc) -> bool:
        return bool(other.v < self.v)

    def __gt__(self, other: Desc) -> bool:
        return bool(other.v > self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and bool(self.v == other.v)

    def __hash__(self) -> int:
        return hash(self.v)


def _orderable(v: Any) -> Any:
    """A comparable form. Typed columns hold one kind of value, so their order is the
    value's own; json columns can mix kinds, which then sort numbers < text < booleans
    < bytes < arrays/objects (by canonical text)."""
    t = type(v)
    if t is int or t is float:
        return (1, v)
    if t is str:
        return (2, v)
    if t is bool:
        return (3, v)
    if t is bytes:
        return (4, v)
    if t is dict or t is list:
        return (5, _enc.encode(v))
    if t is tuple and len(v) == 2 and v[0] == "__json__":  # a frozen json value
        return (5, v[1])
    return (6, v)


def value_key(v: Any) -> tuple[int, Any]:
    return (0, 0) if v is None else (1, _orderable(v))


def row_key(row: tuple) -> tuple:
    """A total order over rows of one shape: column by column, NULL first."""
    return tuple((0, 0) if v is None else (1, _orderable(v)) for v in row)


def sort_key(keys: list[ir.SortKey]) -> Callable[[tuple], tuple]:
    """Row -> comparable key implementing the ORDER BY list, with the row as tie-break."""
    from core.sql.exprc import compile_expr

    parts = [(compile_expr(k.expr), k.desc, k.nulls_first) for k in keys]

    def key(row: tuple) -> tuple:
        out: list[Any] = []
        for f, desc, nulls_first in parts:
            v = f(row)
            if v is None:
                out.append((0, 0) if nulls_first else (2, 0))
            else:
                v = _orderable(v)
                out.append((1, Desc(v) if desc else v))
        out.append(row_key(row))
        return tuple(out)

    return key


def freeze(v: Any) -> Any:
    """A hashable stand-in for a value (json objects/arrays become canonical bytes)."""
    if isinstance(v, dict | list):
        return ("__json__", _enc.encode(v))
    return v


def freeze_row(row: tuple) -> tuple:
    for v in row:
        if isinstance(v, dict | list):
            return tuple(freeze(x) for x in row)
    return row
