"""voicehub's Python client SDK: calls, queries and cached subscriptions over ``/v1/ws``.

    from voicehub.client import Client

    client = await Client.connect("ws://127.0.0.1:8765/v1/ws")
    sub = await client.subscribe("SELECT * FROM segment WHERE call_id = $1", ["c1"])
    sub.on_insert(lambda row: print("new", row))
    seg_id = await client.call("say", {"call_id": "c1", "text": "hello"})
    assert any(r[0] == seg_id for r in sub.rows)  # the commit is in the cache already
    await client.close()

``SyncClient`` offers the same with blocking methods for scripts. The modules:
``connection`` (the client, reconnect and resume), ``apply`` (server messages applied to
results and caches), ``backoff`` (when and how to reconnect), ``cache`` (subscription
rows and callbacks), ``keys`` (when updates can be folded by primary key), ``machine``
(Ed25519 key login), ``wire`` (the message format and results), ``errors``, ``sync``.
The SDK needs only ``msgspec`` and ``websockets`` (``machine``, the Ed25519 key login
used with ``key_path``, also needs ``cryptography``).
"""

from voicehub.client.cache import Changes, Subscription
from voicehub.client.connection import Client
from voicehub.client.errors import (
    ClientClosed,
    ConnectionLost,
    IdentityNotActive,
    ServerError,
    SessionTakenOver,
    VoicehubError,
)
from voicehub.client.sync import SyncClient, SyncSubscription
from voicehub.client.wire import CallOutcome, QueryRows

connect = Client.connect

__all__ = [
    "CallOutcome",
    "Changes",
    "Client",
    "ClientClosed",
    "ConnectionLost",
    "IdentityNotActive",
    "QueryRows",
    "ServerError",
    "SessionTakenOver",
    "Subscription",
    "SyncClient",
    "SyncSubscription",
    "VoicehubError",
    "connect",
]
