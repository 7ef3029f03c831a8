"""Error texts that may be stored and logged: the exception's type and a sentence that quotes no content.

The text of an exception from the store (SQLAlchemy quotes the statement's parameters), from a parser (which
quotes its input) or from a library can hold a patient's name or CPR number. `outbox.last_error`,
`outgoing_mail.last_error` and the log get `describe(exc)` instead: the type, and a fixed sentence per kind
of fault; only exceptions postkasse raised itself from ids, codes and settings (`Safe`) keep their message.
"""

from __future__ import annotations

import re
import smtplib
import traceback

from sqlalchemy import exc as db

_ENHANCED_STATUS = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}")

# The first class that matches gives the sentence, so subclasses come before their bases.
_SENTENCES: tuple[tuple[type[BaseException], str], ...] = (
    (db.IntegrityError, "the store refused the write (a constraint)"),
    (db.DataError, "the store refused a value"),
    (db.OperationalError, "the store could not be reached, or was busy"),
    (db.SQLAlchemyError, "the store failed"),
    (smtplib.SMTPServerDisconnected, "the relay closed the connection"),
    (smtplib.SMTPException, "the relay session failed"),
    (UnicodeError, "a text could not be encoded or decoded"),
    (TimeoutError, "timed out"),
    (ConnectionError, "the connection failed"),
)
UNKNOWN = "no details kept: the exception's text may quote the message's content"


class Safe(Exception):
    """An exception whose message postkasse wrote from ids, codes and settings, never from content."""


def trace(exc: BaseException) -> str:
    """The frames `exc` passed through, for the log, without its text."""
    return "".join(traceback.format_tb(exc.__traceback__))


def describe(exc: BaseException) -> str:
    """`Type: sentence`, safe to store and log whatever the exception's text holds."""
    name = type(exc).__name__
    if isinstance(exc, Safe):
        return f"{name}: {exc}"
    if isinstance(exc, smtplib.SMTPResponseException):
        status = _ENHANCED_STATUS.match(exc.smtp_error) if isinstance(exc.smtp_error, bytes) else None
        detail = f" {status.group().decode()}" if status else ""
        return f"{name}: the relay answered {exc.smtp_code}{detail}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({code for code, _ in exc.recipients.values()})
        return f"{name}: the relay refused the recipient ({', '.join(map(str, codes))})"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None:
        return f"{name}: {exc.strerror}"  # the operating system's own sentence, e.g. "Connection refused"
    for kind, sentence in _SENTENCES:
        if isinstance(exc, kind):
            return f"{name}: {sentence}"
    return f"{name}: {UNKNOWN}"
