"""In-memory MVCC table storage: versions, indexes and per-table history."""
