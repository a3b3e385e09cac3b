"""Outgoing mail for magic links: SMTP (smtplib on a worker thread) when configured.

Without ``smtp_host`` nothing is sent here: the magic-link reducer writes the message to
the ``auth_outbox`` table instead (readable by the owner), which is what a development
setup or a deployment with its own mail relay reads.

Invariant: sending never runs on the event loop (``Mailer.send`` hands the blocking
``smtplib`` conversation to a thread, with a timeout). The magic-link service sends in a
background task after it answered the client (so the answer's timing does not depend on
the mail server) and records the outcome (``mail_sent``/``mail_failed``) in the audit log.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Final

from voicehub.auth.settings import AuthSettings

TIMEOUT_S: Final = 15.0


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


def build_message(sender: str, mail: Mail) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = mail.to
    msg["Subject"] = mail.subject
    msg.set_content(mail.body)
    return msg


def send_smtp(settings: AuthSettings, mail: Mail) -> None:
    """Deliver ``mail`` over SMTP (blocking); raises ``OSError``/``smtplib.SMTPException``."""
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=TIMEOUT_S) as smtp:
        smtp.ehlo()
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        smtp.send_message(build_message(settings.smtp_from, mail))


class Mailer:
    """SMTP delivery when ``smtp_host`` is set; ``enabled`` is False otherwise."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return bool(self.settings.smtp_host)

    async def send(self, mail: Mail) -> None:
        await asyncio.to_thread(send_smtp, self.settings, mail)
