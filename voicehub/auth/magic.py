"""Magic links: a single-use login link mailed to an address, stored only as its SHA-256.

``request(email)`` always succeeds from the client's point of view (``202``), whether or
not the address belongs to anyone, so the endpoint does not reveal who is registered.
For a known, active identity - or, under open registration, an unknown address - it
stores ``sha256(token)`` with an expiry (``magic_link_ttl_s``) and sends
``{public_url}/v1/auth/magic/verify?token=...``: by SMTP when configured (after the
commit, from a background task), else as an ``auth_outbox`` row written by the same
commit. ``verify(token)`` marks the link used and returns a session token; under open
registration the first verify of an unknown address creates its human identity.

Invariants:

* a link logs in at most once and never after its expiry: the check and the marking are
  one reducer call (``auth_magic_use``), so two concurrent verifies cannot both pass;
* neither the store nor the log holds a usable link token when mail goes out by SMTP
  (only its hash); without SMTP the outbox row holds it, readable only by the owner;
* every request, refusal and login is audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

from core.errors import ReducerError
from voicehub.auth.identities import MAGIC_PUT, MAGIC_USE, identity_by_email, magic_row
from voicehub.auth.mailer import Mail, Mailer
from voicehub.auth.passwords import normalize_email
from voicehub.server.errors import ApiError

if TYPE_CHECKING:
    from voicehub.auth.service import AuthService

log = logging.getLogger("voicehub.auth.magic")

METHOD: Final = "magic_link"
INVALID: Final = "magic_link_invalid"
SUBJECT: Final = "Your voicehub sign-in link"


def link_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mail_body(link: str, ttl_s: float) -> str:
    minutes = max(1, round(ttl_s / 60))
    return (
        "Someone (hopefully you) asked to sign in to voicehub with this address.\n\n"
        f"Sign in: {link}\n\n"
        f"The link works once, within {minutes} minute(s). If you did not ask for it,"
        " ignore this mail.\n"
    )


class MagicLinks:
    def __init__(self, auth: AuthService, mailer: Mailer) -> None:
        self.auth = auth
        self.mailer = mailer
        self._sending: set[asyncio.Task[None]] = set()

    def link(self, token: str) -> str:
        q = urllib.parse.urlencode({"token": token})
        return f"{self.auth.settings.base_url}/v1/auth/magic/verify?{q}"

    async def request(self, email: Any, remote: str | None = None) -> None:
        auth = self.auth
        address = normalize_email(email)
        auth.rate_limit(remote, METHOD)
        row = identity_by_email(auth.db, address)
        identity = None if row is None else str(row.identity)
        reason = None
        if row is not None and row.status != "active":
            reason = "identity_not_active"
        elif row is None and auth.settings.registration != "open":
            reason = "unknown_email"
        if reason is not None:
            auth.audit("magic_link_request", identity, METHOD, False, {"reason": reason}, remote)
            await auth.durable()
            return
        token = secrets.token_urlsafe(32)
        now = auth.now_us()
        expires = now + int(auth.settings.magic_link_ttl_s * 1_000_000)
        mail = Mail(address, SUBJECT, mail_body(self.link(token), auth.settings.magic_link_ttl_s))
        smtp = self.mailer.enabled
        auth.db.execute(
            MAGIC_PUT,
            {
                "token_hash": link_hash(token),
                "identity": identity,
                "email": address,
                "now": now,
                "expires_at": expires,
                "subject": None if smtp else mail.subject,
                "body": None if smtp else mail.body,
                "remote": remote,
            },
        )
        await auth.durable()
        if smtp:
            task = asyncio.create_task(self._send(mail, identity))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, mail: Mail, identity: str | None) -> None:
        try:
            await self.mailer.send(mail)
        except Exception as e:
            log.warning("magic link mail to %s failed: %s", mail.to, e)
            self._audit_mail(identity, False, {"error": type(e).__name__})
            return
        self._audit_mail(identity, True, None)

    def _audit_mail(self, identity: str | None, ok: bool, detail: dict[str, Any] | None) -> None:
        event = "mail_sent" if ok else "mail_failed"
        try:
            self.auth.audit(event, identity, METHOD, ok, detail)
        except Exception as e:  # the store may be closing
            log.warning("could not audit %s: %s", event, e)

    async def drain(self) -> None:
        """Wait for mails still being sent (graceful shutdown)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def verify(self, token: Any, remote: str | None = None) -> dict[str, Any]:
        auth = self.auth
        if not isinstance(token, str) or not 0 < len(token) <= 256:
            raise ApiError("invalid_request", "token must be the link's token")
        h = link_hash(token)
        now = auth.now_us()
        row = magic_row(auth.db, h)
        reason = None
        if row is None:
            reason = "unknown_link"
        elif row.used_at is not None:
            reason = "used_link"
        elif row.expires_at <= now:
            reason = "expired_link"
        if reason is not None:
            ident = None if row is None else row.identity
            auth.audit("login", ident, METHOD, False, {"reason": reason}, remote)
            await auth.durable()
            raise ApiError(INVALID, "this sign-in link is unknown, used or expired")
        policy = auth.settings.registration
        args = {
            "token_hash": h,
            "now": now,
            "new_identity": None if policy == "closed" else secrets.token_hex(32),
            "activate": policy == "open",
            "remote": remote,
        }
        try:
            identity = str(auth.db.execute(MAGIC_USE, args).value)
        except ReducerError as e:
            auth.audit("login", None, METHOD, False, {"reason": e.message}, remote)
            await auth.durable()
            raise ApiError(INVALID, "this sign-in link is unknown, used or expired") from None
        return await auth.login_succeeded(identity, METHOD, remote)
