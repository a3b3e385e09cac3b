"""Fixtures shared by test modules: the row-level security world (``rls_world``)."""

from rls_world import oracles, state, world

__all__ = ["oracles", "state", "world"]
