"""Outgoing mail in the store: written with the work that causes it, then claimed, sent and marked.

States: pending -> sending (claimed, with a lease) -> sent | failed; `suppressed` records a receipt that
the rules said not to send, and why. A claim whose lease ran out (a worker died mid-send) is taken again,
so a mail is sent at least once; the lease, longer than any live send can take, keeps two workers from
sending it at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from postkasse.store.schema import outgoing_mail


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    recipient: str
    raw: bytes


# The statements a receipt runs, built once: SQLAlchemy keeps their cache key on them, where one built per
# call costs more CPU to build and key than to run.
_ADD = insert(outgoing_mail).returning(outgoing_mail.c.id)
_SUPPRESS = insert(outgoing_mail)
_RECEIPT_FOR = select(outgoing_mail.c.id, outgoing_mail.c.state).where(
    outgoing_mail.c.kind == "receipt", outgoing_mail.c.answers_message == bindparam("message_id")
)
_SENT_RECENTLY = (
    select(func.count())
    .select_from(outgoing_mail)
    .where(
        outgoing_mail.c.kind == bindparam("kind"),
        outgoing_mail.c.recipient == bindparam("recipient"),
        outgoing_mail.c.created_at >= bindparam("since"),
        outgoing_mail.c.state != "suppressed",
    )
)


def add(
    conn: Connection,
    kind: str,
    mail: EmailMessage,
    *,
    recipient: str,
    referral_id: int | None,
    answers_message: int | None,
    now: datetime,
) -> int:
    outgoing_id: int = conn.execute(
        _ADD,
        {
            "kind": kind,
            "referral_id": referral_id,
            "answers_message": answers_message,
            "recipient": recipient,
            "message_id_header": str(mail["Message-ID"]),
            "raw": mail.as_bytes(policy=SMTP),
            "state": "pending",
            "created_at": now,
        },
    ).scalar_one()
    return outgoing_id


def suppress(
    conn: Connection,
    kind: str,
    reason: str,
    *,
    recipient: str,
    answers_message: int,
    message_id_header: str,
    now: datetime,
) -> None:
    conn.execute(
        _SUPPRESS,
        {
            "kind": kind,
            "answers_message": answers_message,
            "recipient": recipient or "<>",
            "state": "suppressed",
            "suppressed_reason": reason,
            "message_id_header": message_id_header,
            "created_at": now,
        },
    )


def receipt_for(conn: Connection, message_id: int) -> Any:
    return conn.execute(_RECEIPT_FOR, {"message_id": message_id}).one_or_none()


def sent_recently(conn: Connection, kind: str, recipient: str, since: datetime) -> int:
    count: int = conn.execute(
        _SENT_RECENTLY, {"kind": kind, "recipient": recipient, "since": since}
    ).scalar_one()
    return count


def claim(conn: Connection, outgoing_id: int, now: datetime, lease: timedelta) -> Claimed | None:
    """The mail, claimed until `now + lease`, if it is pending or its last claim ran out; else None."""
    row = conn.execute(
        update(outgoing_mail)
        .where(
            outgoing_mail.c.id == outgoing_id,
            or_(
                outgoing_mail.c.state == "pending",
                and_(outgoing_mail.c.state == "sending", outgoing_mail.c.claimed_until <= now),
            ),
        )
        .values(state="sending", claimed_until=now + lease, attempts=outgoing_mail.c.attempts + 1)
        .returning(outgoing_mail.c.id, outgoing_mail.c.kind, outgoing_mail.c.recipient, outgoing_mail.c.raw)
    ).one_or_none()
    return Claimed(row.id, row.kind, row.recipient, row.raw) if row else None


def held_until(conn: Connection, outgoing_id: int, now: datetime) -> datetime | None:
    """When the live claim on a mail being sent runs out, or None when nobody holds it."""
    until: datetime | None = conn.execute(
        select(outgoing_mail.c.claimed_until).where(
            outgoing_mail.c.id == outgoing_id,
            outgoing_mail.c.state == "sending",
            outgoing_mail.c.claimed_until > now,
        )
    ).scalar()
    return until


def mark(conn: Connection, outgoing_id: int, state: str, now: datetime, error: str | None = None) -> None:
    values: dict[str, Any] = {"state": state, "claimed_until": None}
    if state == "sent":
        values["sent_at"] = now
    if error is not None:
        values["last_error"] = error[:2000]
    conn.execute(
        update(outgoing_mail)
        .where(outgoing_mail.c.id == outgoing_id, outgoing_mail.c.state.in_(("pending", "sending")))
        .values(**values)
    )


def retry(conn: Connection, outgoing_id: int, now: datetime) -> bool:
    """A mail that failed for good gets another go (the relay is back, the address fixed): False when it
    had not failed."""
    changed = conn.execute(
        update(outgoing_mail)
        .where(outgoing_mail.c.id == outgoing_id, outgoing_mail.c.state == "failed")
        .values(state="pending", claimed_until=None, last_error=None)
    ).rowcount
    return bool(changed)


def counts(conn: Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        select(outgoing_mail.c.kind, outgoing_mail.c.state, func.count()).group_by(
            outgoing_mail.c.kind, outgoing_mail.c.state
        )
    ).all()
    return {(kind, state): n for kind, state, n in rows}
