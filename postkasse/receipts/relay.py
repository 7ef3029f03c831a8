"""Outbound SMTP through the configured relay: STARTTLS (default), implicit TLS, or plain on loopback."""

from __future__ import annotations

import hashlib
import os
import smtplib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from postkasse import logs
from postkasse.errors import Safe
from postkasse.tls import client_context

log = logs.get(__name__)


class RelayNotConfigured(Safe, RuntimeError):
    """outbound.host is empty: mail waits, and fails visibly after its retries."""


class PermanentFailure(Safe, RuntimeError):
    """The relay refused the mail for good (5xx); retrying would not help."""


class Outbound(Protocol):
    """Where outgoing mail goes: the relay, or the pickup directory when there is none."""

    def send(self, envelope_sender: str, recipient: str, raw: bytes) -> None: ...


@dataclass(frozen=True)
class Pickup:
    """No relay configured (a first run, a test bench): each mail becomes an .eml file in `directory`,
    written whole (a temporary name, then a rename) and named by its content, so a retry writes it once."""

    directory: Path

    def send(self, envelope_sender: str, recipient: str, raw: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(recipient.encode() + b"\0" + raw).hexdigest()[:16]
        target = self.directory / f"{digest}.eml"
        if target.exists():
            return
        partial = self.directory / f".{digest}.{os.getpid()}.part"
        envelope = f"Return-Path: <{envelope_sender}>\r\nX-Original-To: <{recipient}>\r\n"
        partial.write_bytes(envelope.encode() + raw)
        os.replace(partial, target)
        log.info("no relay configured: mail written to a file", path=str(target))


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    tls: str  # starttls | implicit | none
    user: str
    password: str
    ca_file: Path | None
    timeout: float

    def send(self, envelope_sender: str, recipient: str, raw: bytes) -> None:
        if not self.host:
            raise RelayNotConfigured("no outbound relay is configured (outbound.host)")
        client: smtplib.SMTP
        if self.tls == "implicit":
            client = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=client_context(self.ca_file)
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            client.ehlo()
            if self.tls == "starttls":
                client.starttls(context=client_context(self.ca_file))
                client.ehlo()
            if self.user:
                client.login(self.user, self.password)
            options = []
            if not (envelope_sender + recipient).isascii():  # RFC 6531: a UTF-8 address needs SMTPUTF8
                if not client.has_extn("smtputf8"):
                    raise PermanentFailure("the relay does not offer SMTPUTF8, which a UTF-8 address needs")
                options.append("SMTPUTF8")
            client.sendmail(envelope_sender, [recipient], raw, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                raise PermanentFailure(f"the relay refused the recipient ({codes[0]})") from None
            raise
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500 and not isinstance(exc, smtplib.SMTPAuthenticationError):
                raise PermanentFailure(f"the relay refused the mail ({exc.smtp_code})") from None
            raise
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
