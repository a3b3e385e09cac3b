"""The CLI's remote commands: ``sql``, ``call`` and ``identity ...`` over the REST API.

They talk to a running server (``--url``, default ``http://127.0.0.1:8765``) with a
bearer token - by default the owner token read from ``<data-dir>/owner.token``
(``--token-file``), or ``--token`` / ``VOICEHUB_TOKEN`` - using only ``urllib``.

Invariant: a command prints the server's answer and exits 0 only on a 2xx answer; any
error prints ``code: message`` to stderr and exits 1 (2 for a usage problem such as an
unreadable token file or malformed JSON arguments), so scripts can rely on the status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8765"
IDENTITY_COLUMNS = "identity, kind, status, display_name, email, privileges, created_at"


class UsageError(Exception):
    pass


class RemoteError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def add_remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument(
        "--data-dir", default=None, help="data directory holding owner.token (./voicehub-data)"
    )
    p.add_argument("--token-file", default=None, help="bearer token file (<data-dir>/owner.token)")
    p.add_argument("--token", default=None, help="bearer token (also VOICEHUB_TOKEN)")


def read_token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("VOICEHUB_TOKEN")
    if token:
        return str(token).strip()
    data_dir = args.data_dir or os.environ.get("VOICEHUB_DATA_DIR") or "./voicehub-data"
    path = Path(args.token_file) if args.token_file else Path(data_dir) / "owner.token"
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read the token file {path}: {e.strerror or e}") from None
    if not text:
        raise UsageError(f"the token file {path} is empty")
    return text


def request(url: str, token: str, path: str, body: Any) -> Any:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url.rstrip("/") + path,
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            raise RemoteError(e.code, err["code"], err["message"]) from None
        except (ValueError, KeyError, TypeError):
            raise RemoteError(e.code, "http_error", str(e)) from None
    except urllib.error.URLError as e:
        raise RemoteError(0, "unreachable", f"cannot reach {url}: {e.reason}") from None


def _url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get("VOICEHUB_URL") or DEFAULT_URL)


def _print_rows(res: dict[str, Any]) -> None:
    cols = res.get("columns") or []
    rows = [["" if v is None else str(v) for v in r] for r in res.get("rows") or []]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}, offset {res.get('offset')})")


def cmd_sql(args: argparse.Namespace) -> Any:
    try:
        params = json.loads(args.params) if args.params else None
    except ValueError as e:
        raise UsageError(f"--params is not valid JSON: {e}") from None
    res = request(_url(args), read_token(args), "/v1/sql", {"sql": args.sql, "params": params})
    if args.json:
        print(json.dumps(res))
    else:
        _print_rows(res)
    return res


def cmd_call(args: argparse.Namespace) -> Any:
    try:
        body = json.loads(args.args) if args.args else None
    except ValueError as e:
        raise UsageError(f"the arguments are not valid JSON: {e}") from None
    path = f"/v1/reducers/{args.reducer}"
    if args.request_id:
        path += "?" + urllib.parse.urlencode({"request_id": args.request_id})
    res = request(_url(args), read_token(args), path, body)
    print(json.dumps(res))
    return res


def cmd_identity(args: argparse.Namespace) -> Any:
    url, token = _url(args), read_token(args)
    if args.identity_command == "list":
        sql = f"SELECT {IDENTITY_COLUMNS} FROM __identities__ ORDER BY created_at"
        res = request(url, token, "/v1/sql", {"sql": sql})
        if args.json:
            print(json.dumps(res))
        else:
            _print_rows(res)
        return res
    reducer = f"identity_{args.identity_command}"
    body = {"identity": args.identity, "reason": args.reason or ""}
    res = request(url, token, f"/v1/reducers/{reducer}", body)
    print(f"{args.identity}: {res.get('value')} (offset {res.get('offset')})")
    return res


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sql", help="run one read-only query on a running server")
    p.add_argument("sql", help='the query, e.g. "SELECT * FROM auth_audit"')
    p.add_argument("--params", help="JSON array or object of parameters")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    add_remote_options(p)
    p.set_defaults(remote=cmd_sql)

    c = sub.add_parser("call", help="call a reducer on a running server")
    c.add_argument("reducer")
    c.add_argument("args", nargs="?", help="JSON object (by name) or array (by position)")
    c.add_argument("--request-id", help="idempotency key (a retry returns the stored outcome)")
    add_remote_options(c)
    c.set_defaults(remote=cmd_call)

    i = sub.add_parser("identity", help="list identities, activate/suspend/revoke one")
    isub = i.add_subparsers(dest="identity_command", required=True)
    lst = isub.add_parser("list", help="every identity (needs the owner or a bypass_rls token)")
    lst.add_argument("--json", action="store_true", help="print the raw JSON answer")
    add_remote_options(lst)
    lst.set_defaults(remote=cmd_identity)
    for name in ("activate", "suspend", "revoke"):
        a = isub.add_parser(name, help=f"{name} an identity (admin only)")
        a.add_argument("identity", help="64 hex characters")
        a.add_argument("--reason", help="recorded in the audit log")
        add_remote_options(a)
        a.set_defaults(remote=cmd_identity)


def run(args: argparse.Namespace) -> int:
    try:
        args.remote(args)
    except UsageError as e:
        print(f"voicehub: {e}", file=sys.stderr)
        return 2
    except RemoteError as e:
        print(f"voicehub: {e.code}: {e.message}", file=sys.stderr)
        return 1
    return 0
