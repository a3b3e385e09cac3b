"""Who is asking: the ``Principal`` of a request or connection, and the identity lifecycle.

Pure data and rules, no I/O. A principal is resolved from credentials (a signed token,
the owner token, a session token, or none) by ``AuthService.principal``; the server
threads it through every read and call path.

Invariants:

* only a principal holding the ``bypass_rls`` privilege reads and writes unrestricted
  (``sender`` is None, ``bypass_rls`` True); everyone else, anonymous callers included,
  is restricted by row-level security as its own identity;
* the lifecycle only moves along ``TRANSITIONS``: registered -> active -> suspended ->
  active ..., and anything but revoked -> revoked; revoked is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

KINDS: Final = frozenset({"owner", "human", "machine", "system", "anonymous"})
STATUSES: Final = frozenset({"registered", "active", "suspended", "revoked"})
PRIVILEGES: Final = frozenset({"admin", "bypass_rls"})

ANONYMOUS: Final = "anonymous"
ACTIVE: Final = "active"

TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "registered": frozenset({"active", "revoked"}),
    "active": frozenset({"suspended", "revoked"}),
    "suspended": frozenset({"active", "revoked"}),
    "revoked": frozenset(),
}
"""Allowed status changes: from -> {to}. Revoked is final."""


def transition_error(current: str, target: str) -> str | None:
    """Why ``current -> target`` is not allowed, or None if it is."""
    if target not in STATUSES:
        return f"unknown status {target!r}"
    if current == target:
        return f"the identity is already {current}"
    if target not in TRANSITIONS.get(current, frozenset()):
        if current == "revoked":
            return "the identity is revoked; revocation is final"
        return f"an identity cannot go from {current} to {target}"
    return None


@dataclass(frozen=True)
class Principal:
    """The caller of one request or connection, as resolved from its credentials.

    ``method`` says how it was authenticated: ``"token"`` (a signed session token),
    ``"owner_token"``, ``"session"`` (a WebSocket session token), or ``"anonymous"``.
    """

    identity: str
    kind: str
    status: str = ACTIVE
    privileges: frozenset[str] = frozenset()
    method: str = ANONYMOUS

    @property
    def bypass_rls(self) -> bool:
        """True for the owner and declared system identities: no row-level security."""
        return "bypass_rls" in self.privileges

    @property
    def admin(self) -> bool:
        return "admin" in self.privileges

    @property
    def anonymous(self) -> bool:
        return self.kind == ANONYMOUS

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def sender(self) -> str | None:
        """What to pass as ``sender`` to queries and subscriptions (None: unrestricted)."""
        return None if self.bypass_rls else self.identity


def anonymous(identity: str) -> Principal:
    """An anonymous caller (restricted by row-level security as ``identity``)."""
    return Principal(identity, ANONYMOUS)
