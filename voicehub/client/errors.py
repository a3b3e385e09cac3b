"""The exceptions the client SDK raises.

``ServerError`` carries the server's stable error ``code`` (docs/protocol.md, *Errors*):
branch on the code, never on the message. ``ConnectionLost`` means the SDK gave up on the
connection (reconnect disabled, a close code that forbids reconnecting, or the reconnect
deadline passed); ``SessionTakenOver`` is the 4001 case (another connection resumed this
session); ``IdentityNotActive`` is the 4003 case (the identity was suspended or
revoked: reconnecting cannot help); ``ClientClosed`` is raised to whatever was still
waiting when ``close()`` ran.
"""

from __future__ import annotations


class VoicehubError(Exception):
    """Base class of every error the SDK raises."""


class ServerError(VoicehubError):
    """An error answered by the server: a failed call, query, subscribe or message."""

    def __init__(self, code: str, message: str, replayed: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.replayed = replayed
        """True when this is the stored outcome of an earlier call with the same request id."""


class ConnectionLost(VoicehubError):
    """The connection is gone for good; ``close_code`` is the last WebSocket close code."""

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class SessionTakenOver(ConnectionLost):
    """Close code 4001: a newer connection resumed this session; this client stops."""


class IdentityNotActive(ConnectionLost):
    """Close code 4003: this client's identity was suspended or revoked; it stops."""


class ClientClosed(VoicehubError):
    """``close()`` was called while this operation was still waiting."""
