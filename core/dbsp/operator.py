"""The operator interface every circuit node implements.

``init(inputs)`` receives the *full* contents of each input (as Z-sets) when a circuit is
built, sets up the operator's integrated state and returns its full output; ``step(deltas)``
receives the change of each input for one commit (None = unchanged) and returns the change
of its output (None or empty = unchanged). Invariant: after every ``step``, the integral of
the outputs equals the operator applied to the integral of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.dbsp.zset import ZSet


class Operator:
    inputs: list[Operator]
    tables: frozenset[str]

    def __init__(self, inputs: list[Operator]) -> None:
        self.inputs = inputs
        self.tables = frozenset().union(*(i.tables for i in inputs)) if inputs else frozenset()

    def init(self, full: list[ZSet]) -> ZSet:
        return self.step(list(full)) or {}

    def step(self, deltas: Sequence[ZSet | None]) -> ZSet | None:
        raise NotImplementedError

    def release(self) -> None:
        """Give back shared state (arrangements) when the circuit is dropped."""
        for i in self.inputs:
            i.release()
