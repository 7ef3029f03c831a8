"""Received messages: the raw bytes and their envelope, written once and never changed."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from postkasse.store import outbox
from postkasse.store.schema import messages

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
# PostgreSQL's text refuses NUL, and neither driver encodes a lone surrogate: text taken from a message is
# cut to what both stores hold, so a message reads the same on either.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """The text without NUL, and with any lone surrogate as U+FFFD: the same on both stores."""
    return _UNSTORABLE.sub(lambda m: "" if m.group(0) == "\x00" else "\ufffd", text)


@dataclass(frozen=True)
class Received:
    """One message as a channel received it, before anything else has looked at it."""

    channel: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: str
    tls: bool
    received_at: datetime
    raw: bytes = field(repr=False)

    @cached_property
    def sha256(self) -> str:
        """Kept once computed: a channel that looks a message up by its hash hands the writer the same one."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def message_id(self) -> str | None:
        return message_id_of(self.raw)


HEADER_BYTES = 102_400  # as Postfix's header_size_limit: what lies beyond is content, never read as headers


def header_block(raw: bytes) -> bytes:
    """The message up to and including the blank line that ends its headers, at most HEADER_BYTES: a message
    without a blank line would otherwise be headers to its end (10 MiB of them)."""
    head = raw[:HEADER_BYTES]
    end = _HEADER_END.search(head)
    return head[: end.end()] if end else head


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID header's value, read from the header block only; without NUL bytes, which PostgreSQL's
    text cannot hold (the raw message keeps them), so both stores keep the same value."""
    match = _MESSAGE_ID.search(header_block(raw))
    if not match:
        return None
    value = storable(b" ".join(match.group(1).split()).decode("ascii", "replace")).strip()
    return value[:998] or None


@dataclass(frozen=True)
class Stored:
    message_id: int
    outbox_id: int
    kind: str


def save(conn: Connection, batch: Sequence[Received], first_step: str, lease_until: datetime) -> list[Stored]:
    """Write the messages, each with an outbox row for its first step, inside the caller's transaction.

    Two multi-row statements for the whole group, whatever its size: this is the ingest hot path."""
    message_ids = list(
        conn.execute(
            insert(messages).returning(messages.c.id, sort_by_parameter_order=True),
            [
                {
                    "channel": item.channel,
                    "mail_from": item.mail_from,
                    "rcpt_tos": list(item.rcpt_tos),
                    "peer": item.peer,
                    "tls": item.tls,
                    "received_at": item.received_at,
                    "size": len(item.raw),
                    "sha256": item.sha256,
                    "message_id": item.message_id,
                    "raw": item.raw,
                }
                for item in batch
            ],
        ).scalars()
    )
    outbox_ids = outbox.add_many(
        conn,
        [
            (first_step, message_id, item.received_at)
            for message_id, item in zip(message_ids, batch, strict=True)
        ],
        lease_until,
    )
    return [Stored(m, o, first_step) for m, o in zip(message_ids, outbox_ids, strict=True)]


# The statements each message's steps run, built once (SQLAlchemy keeps their cache key on them).
_RAW = select(messages.c.raw).where(messages.c.id == bindparam("id"))
_MESSAGE = select(messages).where(messages.c.id == bindparam("id"))
_FIRST_COPY = (
    select(messages.c.id)
    .where(
        messages.c.message_id == bindparam("message_id_header"),
        messages.c.mail_from == bindparam("mail_from"),
        messages.c.id < bindparam("id"),
    )
    .order_by(messages.c.id)
    .limit(1)
)
_HOLD = select(messages.c.id).where(messages.c.id == bindparam("id")).with_for_update()


def raw_of(conn: Connection, message_id: int) -> bytes:
    raw: bytes = conn.execute(_RAW, {"id": message_id}).scalar_one()
    return raw


def row_of(conn: Connection, message_id: int) -> Any:
    """The stored message, its raw bytes and every column."""
    return conn.execute(_MESSAGE, {"id": message_id}).one()


def first_copy(conn: Connection, message: Any) -> int | None:
    """The earliest message before this one with its Message-ID and sender: what a resend repeats."""
    if not message.message_id:
        return None
    first: int | None = conn.execute(
        _FIRST_COPY,
        {"message_id_header": message.message_id, "mail_from": message.mail_from, "id": message.id},
    ).scalar_one_or_none()
    return first


def hold(conn: Connection, message_id: int) -> None:
    """Hold the message's row to the end of the transaction (PostgreSQL; SQLite has one writer anyway), so
    one transaction at a time decides what becomes of it. Held from a later message to an earlier one only."""
    if conn.dialect.name == "postgresql":
        conn.execute(_HOLD, {"id": message_id})
