"""Hostile and careless SMTP clients, generated: junk, bad addresses, commands out of order, pipelining where
it is not offered, floods of errors, loops. Each case is a script of writes; the harness talks in lock-step
(one reply per write) except for the pipelined cases, which send everything at once."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

RCPT = b"RCPT TO:<postkasse@localhost>\r\n"


@dataclass(frozen=True)
class SmtpCase:
    name: str
    writes: tuple[bytes, ...]
    pipelined: bool = False


def _message(
    extra: bytes = b"", body: bytes = b"CPR: 010215-4123\r\nAdresse: Skolevej 12, 8382 Hinnerup\r\n"
) -> bytes:
    """A message with a fresh Message-ID, dot-terminated, as it goes on the wire after 354."""
    return (
        b"From: laege@klinik.example\r\nSubject: Henvisning\r\nMessage-ID: <"
        + uuid.uuid4().hex.encode()
        + b"@klinik.example>\r\n"
        + extra
        + b"\r\n"
        + body
        + b".\r\n"
    )


def _transaction(mail_from: bytes, rcpt: bytes = RCPT, extra: bytes = b"") -> tuple[bytes, ...]:
    return (
        b"EHLO client.example\r\n",
        b"MAIL FROM:" + mail_from + b"\r\n",
        rcpt,
        b"DATA\r\n",
        _message(extra),
    )


SENDERS = {
    "space-inside": b"<la ege@klinik.example>",
    "cr-inside": b"<la\rege@klinik.example>",
    "utf8-without-smtputf8": "<læge@klinik.example>".encode(),
    "utf8-with-smtputf8": "<læge@klinik.example> SMTPUTF8".encode(),
    "utf8-domain-with-smtputf8": "<laege@klinik-æ.example> SMTPUTF8".encode(),
    "null-sender": b"<>",
    "no-brackets": b"laege@klinik.example",
    "source-route": b"<@relay.example:laege@klinik.example>",
    "address-literal": b"<laege@[127.0.0.1]>",
    "quoted-local": b'<"laege med mellemrum"@klinik.example>',
    "size-huge": b"<laege@klinik.example> SIZE=999999999999",
    "size-junk": b"<laege@klinik.example> SIZE=abc",
    "body-binarymime": b"<laege@klinik.example> BODY=BINARYMIME",
    "unknown-param": b"<laege@klinik.example> FOO=BAR",
    "long-local": b"<" + b"a" * 300 + b"@klinik.example>",
    "long-domain": b"<a@" + b"x" * 300 + b".example>",
    "double-close": b"<laege@klinik.example>>",
    "double-open": b"<<laege@klinik.example>",
    "hyphen-domain": b"<laege@-klinik-.example>",
    "double-dot": b"<la..ege@klinik.example>",
    "nul-inside": b"<la\x00ege@klinik.example>",
    "empty": b"",
    "only-brackets-space": b"< >",
    "latin1-bytes": b"<l\xe6ge@klinik.example>",
}

RECIPIENTS = {
    "unknown-local": b"RCPT TO:<nobody@localhost>\r\n",
    "relay-attempt": b"RCPT TO:<someone@elsewhere.example>\r\n",
    "bad-syntax": b"RCPT TO:postkasse@@localhost\r\n",
    "percent-hack": b"RCPT TO:<postkasse%localhost@elsewhere.example>\r\n",
    "upper-case": b"RCPT TO:<POSTKASSE@LOCALHOST>\r\n",
    "nul": b"RCPT TO:<postkasse\x00@localhost>\r\n",
    "utf8": "RCPT TO:<pøstkasse@localhost>\r\n".encode(),
    "no-colon": b"RCPT TO <postkasse@localhost>\r\n",
}

SEQUENCES: dict[str, tuple[bytes, ...]] = {
    "rcpt-before-mail": (b"EHLO c\r\n", RCPT),
    "data-before-rcpt": (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n", b"DATA\r\n"),
    "mail-twice": (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n", b"MAIL FROM:<a@b.example>\r\n"),
    "mail-before-helo": (b"MAIL FROM:<a@b.example>\r\n",),
    "bdat": (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n", RCPT, b"BDAT 10 LAST\r\n"),
    "auth-plain": (b"EHLO c\r\n", b"AUTH PLAIN AGFkbWluAHNlY3JldA==\r\n"),
    "starttls-without-tls": (b"EHLO c\r\n", b"STARTTLS\r\n"),
    "vrfy": (b"EHLO c\r\n", b"VRFY postkasse\r\n"),
    "expn": (b"EHLO c\r\n", b"EXPN postkasse\r\n"),
    "help": (b"HELP\r\n", b"HELP DATA\r\n"),
    "etrn": (b"EHLO c\r\n", b"ETRN example.com\r\n"),
    "helo-empty": (b"HELO\r\n",),
    "ehlo-junk": (b"EHLO \x01\x02\x03\r\n",),
    "ehlo-long": (b"EHLO " + b"h" * 1000 + b"\r\n",),
    "lower-case": (
        b"ehlo c\r\n",
        b"mail from:<laege@klinik.example>\r\n",
        b"rcpt to:<postkasse@localhost>\r\n",
    ),
    "noop-args": (b"NOOP what ever\r\n",),
    "rset-midway": (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n", RCPT, b"RSET\r\n", b"DATA\r\n"),
    "bare-lf-commands": (b"EHLO c\n", b"NOOP\n"),
    "empty-line": (b"\r\n",),
    "nul-command": (b"NO\x00OP\r\n",),
    "line-2000": (b"NOOP " + b"x" * 2000 + b"\r\n", b"NOOP\r\n"),
    "line-100000": (b"NOOP " + b"x" * 100_000 + b"\r\n", b"NOOP\r\n"),
    "refused-rcpt-flood": (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n")
    + (b"RCPT TO:<nobody@localhost>\r\n",) * 1000,
    "junk-flood": (b"EHLO c\r\n",) + (b"JUNK\r\n",) * 2000,
    "received-loop-101": _transaction(
        b"<laege@klinik.example>", extra=b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 101
    ),
    "received-100": _transaction(
        b"<laege@klinik.example>", extra=b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 100
    ),
    "dot-only-message": (b"EHLO c\r\n", b"MAIL FROM:<a@b.example>\r\n", RCPT, b"DATA\r\n", b".\r\n"),
    "dot-stuffed": (
        *_transaction(b"<laege@klinik.example>")[:-1],
        _message(body=b"..\r\n.. CPR: 010215-4123\r\n"),
    ),
}

PIPELINED: dict[str, bytes] = {
    "whole-transaction": b"EHLO c\r\nMAIL FROM:<laege@klinik.example>\r\n" + RCPT + b"DATA\r\n" + _message(),
    # RFC 2920's trap: RCPT refused, so DATA is refused, and its "body" must be read as commands, not as mail.
    "refused-data-carries-commands": b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n"
    b"RCPT TO:<nobody@localhost>\r\nDATA\r\nMAIL FROM:<evil@x.example>\r\n" + RCPT + b"DATA\r\n" + _message(),
    "helo-then-junk": b"HELO c\r\n" + b"JUNK\r\n" * 50,
    "quit-early": b"EHLO c\r\nQUIT\r\nMAIL FROM:<a@b.example>\r\n",
}


def cases(seed: int = 5) -> list[SmtpCase]:
    """Every sender, recipient, sequence and pipelined case, and seeded random junk lines."""
    rnd = random.Random(seed)
    found = [SmtpCase(f"mail-from/{name}", _transaction(sender)) for name, sender in SENDERS.items()]
    found += [
        SmtpCase(f"mail-from-smtputf8/{name}", _transaction(sender + b" SMTPUTF8"))
        for name, sender in SENDERS.items()
        if b"SMTPUTF8" not in sender and sender
    ]
    found += [
        SmtpCase(f"rcpt/{name}", _transaction(b"<laege@klinik.example>", rcpt))
        for name, rcpt in RECIPIENTS.items()
    ]
    found += [SmtpCase(f"sequence/{name}", writes) for name, writes in SEQUENCES.items()]
    found += [SmtpCase(f"pipelined/{name}", (blob,), pipelined=True) for name, blob in PIPELINED.items()]
    for n in range(60):
        printable = bytes(rnd.randrange(32, 127) for _ in range(rnd.randrange(1, 200)))
        binary = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200))).replace(b"\n", b"")
        found.append(SmtpCase(f"junk/printable-{n}", (b"EHLO c\r\n", printable + b"\r\n", b"NOOP\r\n")))
        found.append(SmtpCase(f"junk/binary-{n}", (binary + b"\r\n", b"NOOP\r\n")))
    return found
