"""Magic links against a real server: the outbox or SMTP, single use, expiry, enumeration.

Invariants under test: a request always answers 202; a link logs in once and never after
``magic_link_ttl_s`` (an injected clock); an unknown address gets a link only under open
registration, and its first verify creates the identity; with SMTP configured the mail
goes to the SMTP server (a fake one here) and the token is not stored anywhere in the
clear; every step is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

from auth_support import Clock, audit, outbox, post, user
from server_support import eventually, http, running

REQ = "/v1/auth/magic/request"
VERIFY = "/v1/auth/magic/verify"


def token_in(body: str) -> str:
    m = re.search(r"(http://\S+/v1/auth/magic/verify\?\S+)", body)
    assert m, body
    url = urllib.parse.urlsplit(m.group(1))
    return urllib.parse.parse_qs(url.query)["token"][0]


async def test_link_logs_in_once(tmp_path: Path) -> None:
    auth = {"public_url": "http://voice.example.test:9000"}
    async with running(tmp_path, auth=auth) as srv:
        reg = await user(srv, "ann@example.com")
        status, body = await post(srv, REQ, {"email": "ANN@example.com "})
        assert (status, body) == (202, {"status": "accepted"})
        [mail] = outbox(srv)
        assert mail.to_address == "ann@example.com" and "sign-in" in mail.subject
        assert "http://voice.example.test:9000/v1/auth/magic/verify?token=" in mail.body
        token = token_in(mail.body)
        stored = list(srv.node.db.stores["__auth_magic_links__"].rows())
        assert len(stored) == 1 and token not in repr(stored), "only the hash is stored"
        status, out = await post(srv, VERIFY, {"token": token})
        assert status == 200 and out["identity"] == reg["identity"], out
        again = await post(srv, VERIFY, {"token": token})
        assert again[0] == 401 and again[1]["error"]["code"] == "magic_link_invalid"
        via_get = await http("GET", srv.http_url + VERIFY + "?token=" + token)
        assert via_get[0] == 401
        events = [(r.event, r.ok) for r in audit(srv) if r.method == "magic_link"]
        assert events == [
            ("magic_link_request", True),
            ("token_issue", True),
            ("login", True),
            ("login", False),
            ("login", False),
        ]
        assert audit(srv, "login")[-1].detail["reason"] == "used_link"


async def test_link_expires(tmp_path: Path) -> None:
    clock = Clock()
    async with running(None, clock=clock, auth={"magic_link_ttl_s": 900}) as srv:
        await user(srv, "ben@example.com")
        await post(srv, REQ, {"email": "ben@example.com"})
        token = token_in(outbox(srv)[-1].body)
        clock.advance(899)
        await post(srv, REQ, {"email": "ben@example.com"})
        fresh = token_in(outbox(srv)[-1].body)
        clock.advance(2)  # the first link is 901 s old, the second 2 s
        status, body = await post(srv, VERIFY, {"token": token})
        assert status == 401 and body["error"]["code"] == "magic_link_invalid"
        assert audit(srv, "login")[-1].detail["reason"] == "expired_link"
        status, body = await http("GET", srv.http_url + VERIFY + "?token=" + fresh)
        assert status == 200, body


async def test_unknown_address_depends_on_the_policy(tmp_path: Path) -> None:
    async with running(None, auth={"registration": "approval"}) as srv:
        status, _ = await post(srv, REQ, {"email": "nobody@example.com"})
        assert status == 202 and outbox(srv) == [], "nothing is sent"
        assert audit(srv, "magic_link_request")[-1].detail == {"reason": "unknown_email"}
    async with running(None) as srv:  # open registration
        status, _ = await post(srv, REQ, {"email": "newbie@example.com"})
        assert status == 202
        token = token_in(outbox(srv)[-1].body)
        status, out = await post(srv, VERIFY, {"token": token})
        assert status == 200, out
        row = srv.node.db.stores["__identities__"].get(out["identity"])
        assert (row.kind, row.status, row.email) == ("human", "active", "newbie@example.com")
        assert [r.event for r in audit(srv) if r.identity == out["identity"]][:2] == [
            "registration",
            "lifecycle",
        ]
        status, body = await post(srv, REQ, {"email": 42})
        assert status == 400 and body["error"]["code"] == "invalid_request"


# ---------------------------------------------------------------- SMTP


class FakeSmtp:
    """Just enough SMTP for smtplib: EHLO, MAIL, RCPT, DATA, QUIT."""

    def __init__(self) -> None:
        self.mails: list[email.message.Message] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        data: list[bytes] | None = None
        while line := await reader.readline():
            if data is not None:
                if line == b".\r\n":
                    self.mails.append(email.message_from_bytes(b"".join(data)))
                    data = None
                    writer.write(b"250 queued\r\n")
                else:
                    data.append(line[1:] if line.startswith(b"..") else line)
                continue
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-fake\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                data = []
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def smtp_server() -> AsyncIterator[tuple[FakeSmtp, int]]:
    fake = FakeSmtp()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    try:
        yield fake, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_smtp_delivery(tmp_path: Path) -> None:
    async with smtp_server() as (fake, port):
        auth = {
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_starttls": False,
            "smtp_from": "login@voice.example.test",
        }
        async with running(tmp_path, auth=auth) as srv:
            reg = await user(srv, "cat@example.com")
            status, _ = await post(srv, REQ, {"email": "cat@example.com"})
            assert status == 202
            await eventually(lambda: len(fake.mails) == 1)
            mail = fake.mails[0]
            assert mail["To"] == "cat@example.com" and mail["From"] == "login@voice.example.test"
            assert outbox(srv) == [], "nothing in the outbox when SMTP is configured"
            token = token_in(mail.get_payload(decode=True).decode())
            wal = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
            assert token.encode() not in wal, "the token is in no file of the data directory"
            status, out = await post(srv, VERIFY, {"token": token})
            assert status == 200 and out["identity"] == reg["identity"]
            await eventually(lambda: bool(audit(srv, "mail_sent")))
