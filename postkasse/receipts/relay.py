"""Outbound SMTP through the configured relay: STARTTLS (default), implicit TLS, or plain on loopback."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from pathlib import Path

from postkasse.errors import Safe
from postkasse.tls import client_context


class RelayNotConfigured(Safe, RuntimeError):
    """outbound.host is empty: mail waits, and fails visibly after its retries."""


class PermanentFailure(Safe, RuntimeError):
    """The relay refused the mail for good (5xx); retrying would not help."""


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
