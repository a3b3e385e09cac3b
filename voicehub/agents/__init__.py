"""Agents that ship with voicehub (the built-in example agent)."""
