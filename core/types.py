"""Column and argument types, and the checks that keep stored values well typed.

Invariant: every value that reaches a table or a reducer has passed ``check`` for its
declared type, so storage, the log and later layers never see an ill-typed value.
Representation in Python: int64 -> int, float64 -> float, text -> str, bool -> bool,
bytes -> bytes, timestamp -> int microseconds since the Unix epoch (UTC),
identity -> 64 lowercase hex characters (32 bytes), json -> dict/list/str/int/float/bool/None.
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Callable
from typing import Any, NewType

from core.errors import TypeMismatch

Timestamp = NewType("Timestamp", int)
"""Microseconds since 1970-01-01T00:00:00Z."""

Identity = NewType("Identity", str)
"""A 32-byte identity written as 64 lowercase hex characters."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_HEX = frozenset("0123456789abcdef")


class ColumnType(enum.StrEnum):
    INT64 = "int64"
    FLOAT64 = "float64"
    TEXT = "text"
    BOOL = "bool"
    BYTES = "bytes"
    TIMESTAMP = "timestamp"
    IDENTITY = "identity"
    JSON = "json"


def _int64(v: Any) -> int:
    if type(v) is int and INT64_MIN <= v <= INT64_MAX:
        return v
    if type(v) is int:
        raise ValueError("out of int64 range")
    raise TypeError


def _float64(v: Any) -> float:
    t = type(v)
    if t is float:
        if v != v:
            raise ValueError("NaN is not allowed (it equals nothing, so no index can hold it)")
        return v
    if t is int:
        try:
            return float(v)
        except OverflowError:
            raise ValueError("out of float64 range") from None
    raise TypeError


def _text(v: Any) -> str:
    if type(v) is str:
        return v
    raise TypeError


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise TypeError


def _bytes(v: Any) -> bytes:
    t = type(v)
    if t is bytes:
        return v
    if t is bytearray or t is memoryview:
        return bytes(v)
    raise TypeError


def _timestamp(v: Any) -> int:
    if type(v) is int and INT64_MIN <= v <= INT64_MAX:
        return v
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            raise ValueError("naive datetime; give a timezone-aware datetime")
        delta = v - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise TypeError


def _identity(v: Any) -> str:
    if type(v) is str and len(v) == 64 and _HEX.issuperset(v):
        return v
    if type(v) is bytes and len(v) == 32:
        return v.hex()
    if type(v) is str:
        raise ValueError("identity must be 64 lowercase hex characters")
    raise TypeError


def _json(v: Any, depth: int = 0) -> Any:
    if depth > 64:
        raise ValueError("json nested deeper than 64 levels")
    t = type(v)
    if v is None or t is str or t is bool or t is int or t is float:
        return v
    if t is list or t is tuple:
        return [_json(x, depth + 1) for x in v]
    if isinstance(v, tuple) and hasattr(v, "_asdict"):  # a row: an object by column name
        return _json(v._asdict(), depth)
    if t is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise ValueError("json object keys must be strings")
            out[k] = _json(x, depth + 1)
        return out
    raise TypeError


CHECKERS: dict[ColumnType, Callable[[Any], Any]] = {
    ColumnType.INT64: _int64,
    ColumnType.FLOAT64: _float64,
    ColumnType.TEXT: _text,
    ColumnType.BOOL: _bool,
    ColumnType.BYTES: _bytes,
    ColumnType.TIMESTAMP: _timestamp,
    ColumnType.IDENTITY: _identity,
    ColumnType.JSON: _json,
}


def describe(v: Any) -> str:
    """A short description of a value for error messages (never the whole value)."""
    r = repr(v)
    if len(r) > 40:
        r = r[:37] + "..."
    return f"{type(v).__name__} {r}"


def check(ctype: ColumnType, nullable: bool, value: Any, where: str) -> Any:
    """Return ``value`` normalized for ``ctype`` or raise TypeMismatch naming ``where``."""
    if value is None:
        if nullable:
            return None
        raise TypeMismatch(f"{where}: null is not allowed (column is NOT NULL)")
    try:
        return CHECKERS[ctype](value)
    except TypeError:
        raise TypeMismatch(f"{where}: expected {ctype.value}, got {describe(value)}") from None
    except ValueError as e:
        raise TypeMismatch(f"{where}: invalid {ctype.value} ({e}): {describe(value)}") from None


_PY_TYPES: dict[Any, ColumnType] = {
    int: ColumnType.INT64,
    float: ColumnType.FLOAT64,
    str: ColumnType.TEXT,
    bool: ColumnType.BOOL,
    bytes: ColumnType.BYTES,
    Timestamp: ColumnType.TIMESTAMP,
    Identity: ColumnType.IDENTITY,
    dict: ColumnType.JSON,
    list: ColumnType.JSON,
    Any: ColumnType.JSON,
}


def from_annotation(annotation: Any) -> tuple[ColumnType, bool]:
    """Map a Python annotation (``int``, ``str | None``, ``Timestamp``...) to (type, nullable)."""
    import types
    import typing

    nullable = False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union annotation {annotation!r}")
        nullable = True
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin in (dict, list):
        annotation = origin
    if isinstance(annotation, str):
        try:
            return ColumnType(annotation), nullable
        except ValueError:
            raise TypeError(f"unknown column type {annotation!r}") from None
    if isinstance(annotation, ColumnType):
        return annotation, nullable
    try:
        return _PY_TYPES[annotation], nullable
    except (KeyError, TypeError):
        raise TypeError(f"unsupported annotation {annotation!r}") from None
