"""Small rewrites over IR expressions and sqlglot conditions used while lowering.

Invariant: every rewrite returns new frozen IR nodes; nothing is mutated in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sqlglot import exp

from core.sql import ir


def transform(e: ir.Expr, fn: Callable[[ir.Expr], ir.Expr | None]) -> ir.Expr:
    """Rebuild ``e`` bottom-up, replacing any node for which ``fn`` returns a value."""
    hit = fn(e)
    if hit is not None:
        return hit
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(e):  # type: ignore[arg-type]
        v = getattr(e, f.name)
        if isinstance(v, ir.Expr):
            changes[f.name] = transform(v, fn)
        elif isinstance(v, tuple) and v and isinstance(v[0], ir.Expr | tuple):
            changes[f.name] = tuple(
                tuple(transform(x, fn) for x in item)
                if isinstance(item, tuple)
                else transform(item, fn)
                for item in v
            )
    return dataclasses.replace(e, **changes) if changes else e  # type: ignore[type-var]


def refs(e: ir.Expr) -> set[int]:
    out: set[int] = set()

    def visit(x: ir.Expr) -> ir.Expr | None:
        if isinstance(x, ir.ColRef):
            out.add(x.index)
            return x
        return None

    transform(e, visit)
    return out


def shift(e: ir.Expr, delta: int) -> ir.Expr:
    return transform(
        e, lambda x: ir.ColRef(x.index + delta, x.type) if isinstance(x, ir.ColRef) else None
    )


def conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return conjuncts(node.this)
    return [node]


def and_all(items: list[ir.Expr]) -> ir.Expr | None:
    flat: list[ir.Expr] = []
    for i in items:
        if isinstance(i, ir.BoolOp) and i.op == "and":
            flat.extend(i.args)
        else:
            flat.append(i)
    if not flat:
        return None
    return flat[0] if len(flat) == 1 else ir.BoolOp("and", tuple(flat))
