"""Which primary key, if any, identifies the rows of a subscription (for folding updates).

docs/sql.md: when a subscription selects a table's primary key, an UPDATE arrives as a
delete of the old row plus an insert of the new row with the same key in one
``tx_update``, and a client folds the pair into an update. The SDK only does that when it
can *know* the rows are unique by that key, so detection is deliberately conservative:

* the SQL is ``SELECT <*, or plain column names> FROM <one table> [alias] [WHERE|ORDER
  BY|LIMIT|OFFSET ...]`` with no JOIN, GROUP BY, DISTINCT, UNION/INTERSECT/EXCEPT or
  HAVING anywhere in it, and
* the table's primary key (from ``GET /v1/schema``) is among the result's column names.

Anything else keeps its rows as a multiset and delivers deletes and inserts as they come.
A caller who knows better passes ``key=[...]`` (or ``key=None`` to turn folding off).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger("voicehub.client")

_IDENT = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_SIMPLE = re.compile(
    rf"""^\s*select\s+(?P<cols>.+?)\s+from\s+(?P<table>{_IDENT})
    (?:\s+(?:as\s+)?(?!(?:where|order|limit|offset)\b){_IDENT})?
    (?:\s+(?:where|order|limit|offset)\b.*)?\s*;?\s*$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_COLUMN = re.compile(rf"^\s*(?:{_IDENT}\s*\.\s*)?(?:{_IDENT}|\*)\s*$")
_BLOCKERS = re.compile(r"\b(?:join|group|distinct|union|intersect|except|having)\b", re.I)


def single_table(sql: str) -> str | None:
    """The table of a plain single-table SELECT of bare columns, else None."""
    if _BLOCKERS.search(sql):
        return None
    m = _SIMPLE.match(sql)
    if m is None:
        return None
    if not all(_COLUMN.match(c) for c in m.group("cols").split(",")):
        return None
    t = m.group("table")
    return t[1:-1] if t.startswith('"') else t.lower()


def schema_url(ws_url: str) -> str:
    """``ws://host:port/v1/ws`` -> ``http://host:port/v1/schema`` (wss -> https)."""
    u = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(u.scheme, u.scheme)
    return urllib.parse.urlunsplit((scheme, u.netloc, "/v1/schema", "", ""))


def _fetch(url: str, headers: dict[str, str], timeout: float) -> dict[str, tuple[str, ...]]:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        doc: Any = json.loads(resp.read())
    return {t["name"]: tuple(t.get("primary_key") or ()) for t in doc.get("tables", [])}


class KeyResolver:
    """Primary keys by table, fetched once per client from ``/v1/schema`` when first needed."""

    def __init__(self, ws_url: str, headers: dict[str, str], timeout: float = 5.0) -> None:
        self.url = schema_url(ws_url)
        self.headers = headers
        self.timeout = timeout
        self._keys: dict[str, tuple[str, ...]] | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, sql: str) -> tuple[str, ...] | None:
        """The primary key columns to fold ``sql``'s rows by, or None (multiset)."""
        table = single_table(sql)
        if table is None:
            return None
        async with self._lock:
            if self._keys is None:
                try:
                    self._keys = await asyncio.to_thread(
                        _fetch, self.url, self.headers, self.timeout
                    )
                except (OSError, ValueError, KeyError, TypeError) as e:
                    log.warning("cannot read %s (%s): rows are kept without a key", self.url, e)
                    return None
        return self._keys.get(table) or None

    def forget(self) -> None:
        """Drop the cached schema (after a reconnect a module may have been swapped)."""
        self._keys = None
