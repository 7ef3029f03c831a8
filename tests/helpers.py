"""Small helpers shared by tests: talking SMTP and reading what the store holds."""

from __future__ import annotations

import re
import smtplib
import uuid
from typing import Any

from sqlalchemy import select

from postkasse.store import Store
from postkasse.store.schema import messages

RCPT = "postkasse@localhost"


def make_message(body: bytes = b"Hej\r\n", subject: bytes = b"Henvisning", extra: bytes = b"") -> bytes:
    return (
        b"From: Laege <laege@klinik.example>\r\nTo: "
        + RCPT.encode()
        + b"\r\nSubject: "
        + subject
        + b"\r\nMessage-ID: <"
        + uuid.uuid4().hex.encode()
        + b"@klinik.example>\r\n"
        + extra
        + b"\r\n"
        + body
    )


def send(
    port: int,
    raw: bytes,
    sender: str = "laege@klinik.example",
    rcpts: tuple[str, ...] = (RCPT,),
    **mail_options: Any,
) -> tuple[int, str]:
    """One SMTP transaction; returns the final reply (the first refusal, or DATA's answer)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo()
        code, reply = client.mail(sender, **mail_options)
        if code != 250:
            return code, reply.decode()
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt)
            if code != 250:
                return code, reply.decode()
        code, reply = client.data(raw)
        return code, reply.decode()


def stored_id(reply: str) -> int:
    match = re.search(r"stored as message (\d+)", reply)
    assert match, reply
    return int(match.group(1))


def stored_rows(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(messages).order_by(messages.c.id)).all())
