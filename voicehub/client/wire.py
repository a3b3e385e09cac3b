"""The client's view of the v1 wire format (docs/protocol.md): messages, encoders, results.

Server frames are decoded straight into typed structs (rows become tuples), text frames as
JSON and binary frames as MessagePack, whichever subprotocol was negotiated. A message
type this SDK does not know yet decodes to ``None`` and is skipped, so a newer server can
add messages without breaking older clients. Client messages are plain dicts encoded in
the connection's own encoding (``v1.json`` sends text frames, ``v1.msgpack`` binary).

This module mirrors ``voicehub.server.codec`` on purpose instead of importing it: the SDK
depends only on ``msgspec`` and ``websockets``, never on the server.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgspec
from msgspec import Struct

SUBPROTOCOL_JSON: Final = "v1.json"
SUBPROTOCOL_MSGPACK: Final = "v1.msgpack"

Row = tuple[Any, ...]

# ---------------------------------------------------------------- what a caller gets


class CallOutcome(NamedTuple):
    request_id: Any
    value: Any
    offset: int
    replayed: bool
    """True: the stored outcome of an earlier call with this request id (nothing ran)."""


@dataclass
class QueryRows:
    """The answer to ``query``: rows as tuples in ``columns`` order, read at ``offset``."""

    columns: list[str]
    types: list[str | None]
    rows: list[Row]
    offset: int

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


# ---------------------------------------------------------------- server -> client


class ErrorBody(Struct):
    code: str
    message: str


class ServerMessage(Struct, tag_field="type"):
    pass


class Session(ServerMessage, tag="session"):
    session_token: str
    identity: str
    resumed: bool
    reason: str | None = None
    subscriptions: list[Any] = []
    kind: str | None = None


class Authenticated(ServerMessage, tag="authenticated"):
    identity: str
    kind: str
    offset: int
    subscriptions: list[Any] = []


class Subscribed(ServerMessage, tag="subscribed"):
    query_id: Any
    columns: list[str]
    types: list[str | None]
    rows: list[Row]
    offset: int


class Unsubscribed(ServerMessage, tag="unsubscribed"):
    query_id: Any
    offset: int


class Update(Struct):
    query_id: Any
    inserts: list[Row]
    deletes: list[Row]


class TxUpdate(ServerMessage, tag="tx_update"):
    offset: int
    updates: list[Update]
    catch_up: bool = False
    caught_up: bool = False
    """True on the last message of a resume catch-up."""


class CallResult(ServerMessage, tag="call_result"):
    request_id: Any
    offset: int | None = None
    value: Any = None
    error: ErrorBody | None = None
    replayed: bool = False


class QueryResult(ServerMessage, tag="query_result"):
    request_id: Any
    columns: list[str] = []
    types: list[str | None] = []
    rows: list[Row] = []
    offset: int | None = None
    error: ErrorBody | None = None


class Error(ServerMessage, tag="error"):
    code: str
    message: str
    ref: dict[str, Any] | None = None


AnyServerMessage = (
    Session
    | Authenticated
    | Subscribed
    | Unsubscribed
    | TxUpdate
    | CallResult
    | QueryResult
    | Error
)

_json_dec = msgspec.json.Decoder(AnyServerMessage)
_msgpack_dec = msgspec.msgpack.Decoder(AnyServerMessage)
_json_enc = msgspec.json.Encoder()
_msgpack_enc = msgspec.msgpack.Encoder()
_sorted_enc = msgspec.json.Encoder(order="sorted")


def decode(frame: str | bytes, binary: bool) -> AnyServerMessage | None:
    """One server frame as a typed message; ``None`` for a message type we do not know.

    Raises ``msgspec.DecodeError`` for a frame that is not valid JSON/MessagePack or a
    known message with ill-typed fields (a broken server: the caller drops the connection).
    """
    try:
        if binary and isinstance(frame, bytes):
            return _msgpack_dec.decode(frame)
        return _json_dec.decode(frame)
    except msgspec.ValidationError:
        raw = (
            msgspec.msgpack.decode(frame)
            if binary and isinstance(frame, bytes)
            else msgspec.json.decode(frame)
        )
        if isinstance(raw, dict) and raw.get("type") not in _KNOWN:
            return None
        raise


_KNOWN = frozenset(
    {
        "session",
        "authenticated",
        "subscribed",
        "unsubscribed",
        "tx_update",
        "call_result",
        "query_result",
        "error",
    }
)


class Encoder:
    """Encodes client messages for one connection: JSON text or MessagePack bytes."""

    __slots__ = ("binary", "subprotocol")

    def __init__(self, encoding: str) -> None:
        if encoding not in ("json", "msgpack"):
            raise ValueError(f"encoding must be 'json' or 'msgpack', not {encoding!r}")
        self.binary = encoding == "msgpack"
        self.subprotocol = SUBPROTOCOL_MSGPACK if self.binary else SUBPROTOCOL_JSON

    def encode(self, msg: dict[str, Any]) -> str | bytes:
        if self.binary:
            return _msgpack_enc.encode(msg)
        return _json_enc.encode(msg).decode()


def row_key(row: Row) -> Any:
    """A hashable stand-in for a row in a multiset (json values may be lists/dicts)."""
    try:
        hash(row)
    except TypeError:
        return _sorted_enc.encode(row)
    return row


def decode_bytes(rows: list[Row], positions: tuple[int, ...]) -> list[Row]:
    """JSON carries ``bytes`` columns as base64 strings: turn them back into bytes."""
    out = []
    for r in rows:
        vals = list(r)
        for i in positions:
            v = vals[i]
            if type(v) is str:
                vals[i] = binascii.a2b_base64(v)
        out.append(tuple(vals))
    return out
