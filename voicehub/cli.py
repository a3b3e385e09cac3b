"""The ``voicehub`` command line: ``serve``, ``db check``, and remote ``sql``/``call``/``identity``.

Each ``serve`` flag also has an environment variable (``VOICEHUB_<NAME>``) and a TOML key
in the ``--config`` file; flags win over the environment, which wins over the file. The
remote commands (``voicehub.remote``) talk to a running server's REST API with the owner
token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from voicehub import app, remote
from voicehub.config import resolve

log = logging.getLogger("voicehub")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve HTTP and WebSocket on one port",
        description="Run voicehub. Every flag can also be set by the environment variable"
        " VOICEHUB_<FLAG> (e.g. VOICEHUB_PORT) or a key of the TOML --config file.",
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP/WebSocket port (default 8765)")
    p.add_argument("--data-dir", help="data directory (default ./voicehub-data)")
    p.add_argument(
        "--durability",
        choices=["durable", "interval", "none"],
        help="durable: ack after fsync (default); interval: fsync every --interval-ms;"
        " none: memory only",
    )
    p.add_argument("--interval-ms", type=int, help="fsync period under 'interval' (default 10)")
    p.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        help="the event loop: uvloop (auto picks it where installed) or the stdlib asyncio",
    )
    p.add_argument(
        "--history-commits", type=int, help="commits of AS OF history kept in memory (10000)"
    )
    p.add_argument(
        "--snapshot-every", type=int, help="write a snapshot every N commits (100000; 0 = never)"
    )
    p.add_argument(
        "--module",
        action="append",
        dest="modules",
        metavar="PATH",
        help="a user module (Python file or importable name); repeatable",
    )
    p.add_argument(
        "--idempotency-window-s",
        type=float,
        help="seconds a call's outcome is kept under its request id (default 300)",
    )
    p.add_argument(
        "--session-ttl-s", type=float, help="seconds an unused session stays resumable (86400)"
    )
    p.add_argument(
        "--send-queue-limit",
        type=int,
        help="messages queued per connection before a slow reader is disconnected (4096)",
    )
    p.add_argument(
        "--shutdown-timeout-s",
        type=float,
        help="graceful shutdown: seconds to drain calls and send queues (default 10)",
    )
    a = p.add_argument_group("authentication (docs/security.md)")
    a.add_argument("--token-ttl-s", type=float, help="lifetime of a session token (3600)")
    a.add_argument(
        "--registration",
        choices=["open", "approval", "closed"],
        help="open: new identities start active (default); approval: an admin activates"
        " them; closed: only admins create identities",
    )
    a.add_argument(
        "--allow-anonymous",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve sessions and REST requests without credentials (default yes)",
    )
    a.add_argument(
        "--simulator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="without Twilio credentials, mount the Twilio routes for `voicehub simulate-call`"
        " (signed with a local development token; default yes)",
    )
    a.add_argument(
        "--media",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the call worker on provider media streams (default yes)",
    )
    a.add_argument(
        "--speech",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="load the offline speech engines: VAD, STT, TTS (default yes; no: recording only)",
    )
    a.add_argument(
        "--speech-engines",
        help="which speech engines to load, comma-separated from vad, stt, tts (default all)",
    )
    a.add_argument(
        "--agent",
        choices=["builtin", "none"],
        help="who the consent flow hands calls to: the built-in example agent (default) or none",
    )
    a.add_argument("--transfer-to", help="where the example agent transfers callers (a number)")
    a.add_argument(
        "--public-url",
        help="the external base URL clients and providers reach this server at (magic links,"
        " provider webhooks and media streams; default http://<host>:<port>)",
    )
    a.add_argument("--rp-id", help="WebAuthn relying party id (the public URL's host)")
    a.add_argument("--rp-name", help="WebAuthn relying party name (voicehub)")
    a.add_argument("--rp-origin", help="WebAuthn origin (the public URL's scheme://host:port)")
    a.add_argument("--smtp-host", help="send magic links by SMTP (default: to auth_outbox)")
    a.add_argument("--smtp-port", type=int, help="SMTP port (587)")
    a.add_argument("--smtp-user", help="SMTP login user")
    a.add_argument("--smtp-password", help="SMTP password (prefer VOICEHUB_SMTP_PASSWORD)")
    a.add_argument("--smtp-from", help="sender address (voicehub@localhost)")
    a.add_argument(
        "--smtp-starttls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="STARTTLS before login (default yes)",
    )
    a.add_argument("--magic-link-ttl-s", type=float, help="lifetime of a magic link (900)")
    a.add_argument(
        "--password-max-failures",
        type=int,
        help="consecutive wrong passwords before a lockout (5)",
    )
    a.add_argument("--password-lockout-s", type=float, help="length of a lockout (900)")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--log-level", help="debug, info, warning or error (default info)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicehub", description="voicehub voice-agent server")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True
    )
    chk = db.add_parser("check", help="verify every snapshot and log segment (read-only)")
    chk.add_argument("--data-dir", default="./voicehub-data")
    audit = sub.add_parser("audit", help="the voice module's audit chain").add_subparsers(
        dest="audit_command", required=True
    )
    ver = audit.add_parser(
        "verify",
        help="check the hash chain and signed checkpoints of the audit log (read-only);"
        " exit 0 intact, 1 tampered, 2 unreadable",
    )
    ver.add_argument("--data-dir", default="./voicehub-data")
    sim = sub.add_parser(
        "simulate-call",
        help="call a running voicehub over the Twilio media-stream protocol with a synthesized"
        " caller, and print the live transcript",
    )
    sim.add_argument("--data-dir", default="./voicehub-data", help="the server's data directory")
    sim.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="LINE",
        help="a line the caller says once the agent is quiet (repeatable; default: a consent"
        " answer and a question)",
    )
    sim.add_argument("--wav", type=Path, help="a mono 16-bit WAV the caller plays first")
    sim.add_argument("--url", help="the server's base URL (default: its public URL)")
    sim.add_argument("--auth-token", help="a Twilio auth token (default: the simulator's)")
    sim.add_argument("--public-url", help="the URL the server signs for (with --auth-token)")
    recs = sub.add_parser("recording", help="call recordings").add_subparsers(
        dest="recording_command", required=True
    )
    exp = recs.add_parser(
        "export",
        help="decrypt a call's recording to a stereo WAV (left caller, right agent); the"
        " access is checked by the server and recorded in the audit trail",
    )
    exp.add_argument("--call", type=int, required=True, help="the call id")
    exp.add_argument("--recording", type=int, help="a recording id (default: the call's last)")
    exp.add_argument("--purpose", required=True, help="why (stored with the access)")
    exp.add_argument("--out", type=Path, help="the WAV to write (default call-<id>.wav)")
    exp.add_argument("--url", default="http://127.0.0.1:8765", help="the server")
    exp.add_argument("--token", help="a bearer token (default: <data-dir>/owner.token)")
    exp.add_argument("--data-dir", default="./voicehub-data")
    remote.add_parsers(sub)
    return parser


def cmd_recording_export(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    token = args.token
    if token is None:
        try:
            token = (Path(args.data_dir) / "owner.token").read_text().strip()
        except OSError as e:
            print(f"voicehub: no --token and no owner token: {e}", file=sys.stderr)
            return 2
    q = {"purpose": args.purpose}
    if args.recording is not None:
        q["recording_id"] = str(args.recording)
    url = f"{args.url.rstrip('/')}/v1/calls/{args.call}/recording.wav?{urllib.parse.urlencode(q)}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    out = args.out or Path(f"call-{args.call}.wav")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=120) as resp, open(out, "wb") as f:
            while chunk := resp.read(1 << 16):
                f.write(chunk)
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]
            print(f"voicehub: {err['code']}: {err['message']}", file=sys.stderr)
        except (ValueError, KeyError, TypeError):
            print(f"voicehub: HTTP {e.code}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"voicehub: cannot export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


DEFAULT_LINES = [
    "yes, I agree to the recording of this call",
    "what are your opening hours",
    "goodbye",
]


def cmd_simulate(args: argparse.Namespace) -> int:
    from voicehub.simulate import simulate

    _setup_logging("info")
    lines = args.say or ([] if args.wav else DEFAULT_LINES)
    try:
        return asyncio.run(
            simulate(
                Path(args.data_dir),
                lines,
                wav=args.wav,
                url=args.url,
                auth_token=args.auth_token,
                public_url=args.public_url,
            )
        )
    except (OSError, RuntimeError, ValueError) as e:
        print(f"voicehub simulate-call: {e}", file=sys.stderr)
        return 1


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("command",)}
    try:
        settings = resolve(flags)
    except ValueError as e:
        print(f"voicehub: {e}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    from voicehub.server.loop import run_server_loop

    try:
        return run_server_loop(_serve(settings), settings.event_loop)
    except RuntimeError as e:  # uvloop asked for but not installed
        print(f"voicehub: {e}", file=sys.stderr)
        return 2


async def _serve(settings: app.Settings) -> int:
    """Open the store, serve until SIGINT/SIGTERM, drain, close with a final snapshot."""
    from voicehub.server import bind, make_server

    try:
        sock = bind(settings.host, settings.port)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, e)
        return 1
    try:
        node = app.open_node(settings)
    except app.StartupError as e:
        log.error("%s", e)
        sock.close()
        return 1
    await node.start()
    server = make_server(node.app, node.hub, settings.log_level)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    log.info(
        "voicehub serving http://%s:%d (store %s at offset %d, durability %s); stop with Ctrl-C",
        settings.host,
        sock.getsockname()[1],
        settings.data_dir,
        node.db.offset,
        settings.durability,
    )
    if node.providers is not None:
        for name, urls in node.providers.console_urls().items():
            log.info("%s is enabled; paste these into its console:", name)
            for what, url in urls.items():
                log.info("  %-28s %s", what, url)
    try:
        await server.serve(sockets=[sock])
    finally:
        log.info("shutting down: writing a snapshot")
        await node.stop()
        sock.close()
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from core.check import check_data_dir

    report = check_data_dir(Path(args.data_dir))
    for line in report.lines:
        print(line)
    verdict = {0: "clean", 1: "tail damage only (recovers)", 2: "DAMAGED"}[report.status]
    print(f"result: {verdict}")
    return report.status


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from consent.audit_verify import main_verify

    key_file = Path(args.data_dir) / "server.key"
    public = None
    if key_file.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if isinstance(key, Ed25519PrivateKey):
            public = key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
    return main_verify(args.data_dir, public)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        raise SystemExit(cmd_serve(args))
    if args.command == "db" and args.db_command == "check":
        raise SystemExit(cmd_db_check(args))
    if args.command == "audit" and args.audit_command == "verify":
        raise SystemExit(cmd_audit_verify(args))
    if args.command == "recording" and args.recording_command == "export":
        raise SystemExit(cmd_recording_export(args))
    if args.command == "simulate-call":
        raise SystemExit(cmd_simulate(args))
    if getattr(args, "remote", None) is not None:
        raise SystemExit(remote.run(args))
    raise SystemExit(2)
