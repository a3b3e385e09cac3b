"""voicehub's embedded transactional store.

Tables and reducers are declared with ``Module``; ``Database.open`` recovers the state from
the data directory and runs reducers as ACID transactions with a write-ahead log. This
package imports nothing else of voicehub and knows nothing about telephony.
"""

from core.changeset import Changeset, TableChange
from core.config import StoreConfig
from core.database import SYSTEM_IDENTITY, CommitResult, Database
from core.errors import (
    ArgumentError,
    ConstraintViolation,
    CorruptionError,
    HistoryUnavailable,
    NoSuchReducer,
    NoSuchTable,
    ReducerError,
    ReducerFailed,
    SchemaError,
    StorageFailed,
    StoreError,
    TypeMismatch,
)
from core.module import Module, btree, column, index
from core.reads import ReadSnapshot
from core.transaction import ReducerContext
from core.types import ColumnType, Identity, Timestamp

__all__ = [
    "SYSTEM_IDENTITY",
    "ArgumentError",
    "Changeset",
    "ColumnType",
    "CommitResult",
    "ConstraintViolation",
    "CorruptionError",
    "Database",
    "HistoryUnavailable",
    "Identity",
    "Module",
    "NoSuchReducer",
    "NoSuchTable",
    "ReadSnapshot",
    "ReducerContext",
    "ReducerError",
    "ReducerFailed",
    "SchemaError",
    "StorageFailed",
    "StoreConfig",
    "StoreError",
    "TableChange",
    "Timestamp",
    "TypeMismatch",
    "btree",
    "column",
    "index",
]
