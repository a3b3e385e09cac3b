"""The write-ahead log: framed commit records in segmented append-only files."""
