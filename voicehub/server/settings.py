"""Server tuning knobs: idempotency window, session lifetime, send queues, shutdown.

Plain data filled by the composition root from ``voicehub.config.Settings``. Every knob
has a safe default; none of them changes what a client observes, only how long the
server remembers things and how much it buffers for a slow reader.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    idempotency_window_s: float = 300.0
    """How long a committed call's outcome is kept under its request id (durably)."""
    failed_calls_kept: int = 100_000
    """Failed outcomes remembered in memory (they changed nothing, so memory is enough)."""
    session_ttl_s: float = 86_400.0
    """A session not seen for this long is forgotten (its token stops resuming)."""
    send_queue_limit: int = 4096
    """Messages queued for one connection before it is disconnected as a slow consumer."""
    shutdown_timeout_s: float = 10.0
    """Graceful shutdown: how long to wait for calls to finish and queues to drain."""
    close_timeout_s: float = 2.0
    """How long a close frame may wait for a peer that stopped reading."""
    maintenance_interval_s: float = 30.0
    """How often expired request ids and sessions are deleted."""
    expire_batch: int = 5000
    """At most this many request ids are deleted per maintenance commit."""

    def __post_init__(self) -> None:
        if self.idempotency_window_s <= 0 or self.session_ttl_s <= 0:
            raise ValueError("idempotency_window_s and session_ttl_s must be positive")
        if self.send_queue_limit < 1:
            raise ValueError("send_queue_limit must be at least 1")
