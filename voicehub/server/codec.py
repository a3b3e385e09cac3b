"""The WebSocket wire format: client and server messages and their two encodings.

Text frames carry JSON, binary frames MessagePack; a client receives the encoding it
negotiated with the ``v1.json`` (default) or ``v1.msgpack`` subprotocol, and may send
either. In JSON, ``bytes`` values travel as base64 strings (standard alphabet, padded);
MessagePack carries them natively. Invariant: a frame that does not decode to a known,
well-formed client message raises ``ApiError`` (``malformed_message``,
``unknown_message`` or ``invalid_message``) and never reaches the protocol handler.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from voicehub.server.errors import ApiError

SUBPROTOCOL_JSON: Final = "v1.json"
SUBPROTOCOL_MSGPACK: Final = "v1.msgpack"

Id = Annotated[str, Meta(min_length=1, max_length=256)] | int
"""A client-chosen ``query_id`` or ``request_id``: a non-empty string or an integer."""

# ---------------------------------------------------------------- client -> server


class ClientMessage(Struct, tag_field="type", forbid_unknown_fields=False):
    pass


class Hello(ClientMessage, tag="hello"):
    session_token: str | None = None
    last_offset: int | None = None
    auth_token: str | None = None


class Authenticate(ClientMessage, tag="authenticate"):
    token: str


class Subscribe(ClientMessage, tag="subscribe"):
    query_id: Id
    sql: str
    params: Any = None


class Unsubscribe(ClientMessage, tag="unsubscribe"):
    query_id: Id


class Call(ClientMessage, tag="call"):
    request_id: Id
    reducer: str
    args: Any = None


class Query(ClientMessage, tag="query"):
    request_id: Id
    sql: str
    params: Any = None


AnyClientMessage = Hello | Authenticate | Subscribe | Unsubscribe | Call | Query
CLIENT_TYPES = frozenset({"hello", "authenticate", "subscribe", "unsubscribe", "call", "query"})

# ---------------------------------------------------------------- server -> client


class ErrorBody(Struct):
    code: str
    message: str


class ServerMessage(Struct, tag_field="type", omit_defaults=True):
    pass


class SessionInfo(ServerMessage, tag="session"):
    session_token: str
    identity: str
    resumed: bool
    reason: str | UnsetType = UNSET
    subscriptions: list[Any] = []
    kind: str | UnsetType = UNSET


class Authenticated(ServerMessage, tag="authenticated"):
    identity: str
    kind: str
    offset: int
    subscriptions: list[Any] = []


class Subscribed(ServerMessage, tag="subscribed"):
    query_id: Any
    columns: list[str]
    types: list[str | None]
    rows: list[Any]
    offset: int


class Unsubscribed(ServerMessage, tag="unsubscribed"):
    query_id: Any
    offset: int


class Update(Struct):
    query_id: Any
    inserts: list[Any]
    deletes: list[Any]


class TxUpdate(ServerMessage, tag="tx_update"):
    offset: int
    updates: list[Update]
    catch_up: bool = False
    caught_up: bool = False
    """True on the last message of a resume catch-up."""


class CallResult(ServerMessage, tag="call_result"):
    request_id: Any
    offset: int | UnsetType = UNSET
    value: Any = UNSET
    error: ErrorBody | UnsetType = UNSET
    replayed: bool = False


class QueryResult(ServerMessage, tag="query_result"):
    request_id: Any
    columns: list[str] | UnsetType = UNSET
    types: list[str | None] | UnsetType = UNSET
    rows: list[Any] | UnsetType = UNSET
    offset: int | UnsetType = UNSET
    error: ErrorBody | UnsetType = UNSET


class Error(ServerMessage, tag="error"):
    code: str
    message: str
    ref: dict[str, Any] | UnsetType = UNSET


# ---------------------------------------------------------------- encoders

_json_enc = msgspec.json.Encoder()
_msgpack_enc = msgspec.msgpack.Encoder()
_json_dec = msgspec.json.Decoder(AnyClientMessage)
_msgpack_dec = msgspec.msgpack.Decoder(AnyClientMessage)
_json_any = msgspec.json.Decoder()
_msgpack_any = msgspec.msgpack.Decoder()
_sorted_enc = msgspec.json.Encoder(order="sorted")


def encode_json(obj: Any) -> bytes:
    """JSON for REST bodies (bytes as base64, NaN/inf as null)."""
    return _json_enc.encode(obj)


def decode_json(data: bytes | str) -> Any:
    return _json_any.decode(data)


def row_key(row: Any) -> bytes:
    """A canonical, hashable form of a result row (json objects with sorted keys)."""
    return _sorted_enc.encode(row)


class Codec:
    """One connection's encoding of server messages."""

    __slots__ = ("binary", "subprotocol")

    def __init__(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol
        self.binary = subprotocol == SUBPROTOCOL_MSGPACK

    def encode(self, msg: ServerMessage) -> dict[str, Any]:
        """The ASGI ``websocket.send`` event carrying ``msg``."""
        if self.binary:
            return {"type": "websocket.send", "bytes": _msgpack_enc.encode(msg)}
        return {"type": "websocket.send", "text": _json_enc.encode(msg).decode()}


def choose_subprotocol(offered: list[str]) -> str | None:
    """The first of our subprotocols the client offered (None: JSON, none echoed)."""
    for p in offered:
        if p in (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK):
            return p
    return None


def decode_client(data: str | bytes, binary: bool) -> AnyClientMessage:
    """Decode one client frame (text = JSON, binary = MessagePack)."""
    try:
        if isinstance(data, str):
            return _json_dec.decode(data)
        return _msgpack_dec.decode(data) if binary else _json_dec.decode(data)
    except msgspec.ValidationError as e:
        raise _classify(data, binary, str(e)) from None
    except msgspec.DecodeError as e:
        kind = "MessagePack" if binary else "JSON"
        raise ApiError("malformed_message", f"the frame is not valid {kind}: {e}") from None


def _classify(data: str | bytes, binary: bool, detail: str) -> ApiError:
    raw = (
        _json_any.decode(data) if isinstance(data, str) or not binary else _msgpack_any.decode(data)
    )
    if not isinstance(raw, dict):
        return ApiError("invalid_message", "a message must be an object with a 'type' field")
    t = raw.get("type")
    if t not in CLIENT_TYPES:
        return ApiError(
            "unknown_message",
            f"unknown message type {t!r} (expected one of {sorted(CLIENT_TYPES)})",
        )
    ref: dict[str, Any] = {"type": t}
    ref.update((k, raw[k]) for k in ("query_id", "request_id") if _plain_id(raw.get(k)))
    return ApiError("invalid_message", f"invalid {t!r} message: {detail}", ref)


def _plain_id(v: Any) -> bool:
    return (type(v) is str and 0 < len(v) <= 256) or type(v) is int


def decode_bytes_arg(v: Any, where: str) -> Any:
    """A base64 string for a ``bytes`` parameter becomes bytes; anything else passes."""
    if type(v) is not str:
        return v
    try:
        return binascii.a2b_base64(v, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_arguments", f"{where}: expected base64 for bytes") from None
