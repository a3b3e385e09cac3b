"""Z-sets: finite maps from rows to non-zero integer weights (dict[row, int]).

Invariant: no stored weight is ever zero; adding a weight that cancels removes the row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ZSet = dict[Any, int]


def zadd(z: ZSet, row: Any, w: int) -> None:
    n = z.get(row, 0) + w
    if n:
        z[row] = n
    else:
        z.pop(row, None)


def zmerge(into: ZSet, other: ZSet, sign: int = 1) -> None:
    for row, w in other.items():
        zadd(into, row, w * sign)


def from_rows(rows: Iterable[Any], w: int = 1) -> ZSet:
    z: ZSet = {}
    for r in rows:
        zadd(z, r, w)
    return z


def expand(z: ZSet) -> tuple[list[Any], list[Any]]:
    """(inserted rows, deleted rows), each row repeated by its weight."""
    ins: list[Any] = []
    dels: list[Any] = []
    for row, w in z.items():
        if w > 0:
            ins.extend([row] * w)
        else:
            dels.extend([row] * -w)
    return ins, dels
