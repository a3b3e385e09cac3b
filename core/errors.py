"""Errors raised by the store.

Every error a caller can cause carries a stable machine-readable ``code`` and a message
that names the table, column, reducer or file involved, so the server can map it to a
protocol error without parsing text.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class for every error the store raises on purpose."""

    code = "store_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SchemaError(StoreError):
    """A table, index or reducer declaration is invalid."""

    code = "schema_error"


class ConstraintViolation(StoreError):
    """A write broke a primary key, unique, not-null or type constraint."""

    code = "constraint_violation"


class TypeMismatch(ConstraintViolation):
    """A value does not have the column's or argument's declared type."""

    code = "type_error"


class ArgumentError(StoreError):
    """Reducer arguments are missing, unknown or of the wrong type."""

    code = "invalid_arguments"


class NoSuchReducer(StoreError):
    code = "no_such_reducer"


class NoSuchTable(StoreError):
    code = "no_such_table"


class PolicyViolation(StoreError):
    """A write by a non-system caller broke a table's row-level security policy."""

    code = "permission_denied"


class ReducerError(StoreError):
    """Raised by a reducer to reject a call; the transaction rolls back."""

    code = "reducer_error"


class ReducerFailed(StoreError):
    """A reducer raised an unexpected exception; the transaction rolled back."""

    code = "reducer_failed"


class HistoryUnavailable(StoreError):
    """An AS OF point is older than anything memory, snapshots and the log still hold."""

    code = "history_unavailable"


class StorageFailed(StoreError):
    """The write-ahead log could not be written or synced: the store refuses all writes."""

    code = "storage_failed"


class CorruptionError(StoreError):
    """A log segment or snapshot is damaged somewhere recovery must not guess about."""

    code = "corruption"


class StoreClosed(StoreError):
    code = "store_closed"


class SqlError(StoreError):
    """A query is malformed or refers to unknown tables/columns."""

    code = "sql_error"


class UnsupportedSql(SqlError):
    """A query uses SQL outside the supported subset; the message names the construct."""

    code = "unsupported_sql"
