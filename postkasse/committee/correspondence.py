"""The thread between a committee and the sender: questions out by mail, answers back onto the referral.

A reply is recognised by our Message-ID in its In-Reply-To or References, or by the referral's reference
in the subject when it comes from the address the referral came from; anything else is a new message.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.message import Message
from typing import Any, Protocol

from sqlalchemy import Connection, insert, select, update

from postkasse import kinds
from postkasse.pipeline import Follow
from postkasse.receipts import compose, outgoing
from postkasse.reference import reference, referral_from_reference
from postkasse.store.schema import messages, outgoing_mail, referrals, thread

_MESSAGE_IDS = re.compile(r"<[^<>\s]+>")


class SenderUnreachable(Exception):
    """The referral came without a return address, so no mail can reach its sender."""


def write_to_sender(
    conn: Connection,
    referral_id: int,
    text: str,
    author: str,
    from_address: str,
    now: datetime,
    committee: str,
    medcom: MedcomWriter | None = None,
) -> list[Follow]:
    """The committee's message to the sender: as mail, or as MedCom when the referral came as MedCom."""
    sent = medcom.write(conn, referral_id, text, now) if medcom is not None else None
    if sent is not None:
        follow, outgoing_id = sent
        _on_thread(conn, referral_id, now, author, text, outgoing_id)
        return follow
    row = conn.execute(
        select(
            referrals.c.id, referrals.c.message_id, messages.c.mail_from, messages.c.message_id.label("mid")
        )
        .join(messages, messages.c.id == referrals.c.message_id)
        .where(referrals.c.id == referral_id)
    ).one()
    recipient = compose.address(row.mail_from)
    if recipient is None:
        raise SenderUnreachable(
            "The message came without a usable return address; the sender cannot be written to."
        )
    mail = compose.committee_message(
        from_address=from_address,
        to=recipient,
        reference=reference(referral_id),
        committee=committee,
        text=text,
        in_reply_to=row.mid,
    )
    outgoing_id = outgoing.add(
        conn,
        "committee_message",
        mail,
        recipient=recipient,
        referral_id=referral_id,
        answers_message=row.message_id,
        now=now,
    )
    _on_thread(conn, referral_id, now, author, text, outgoing_id)
    return [(kinds.SEND, outgoing_id)]


def _on_thread(
    conn: Connection, referral_id: int, now: datetime, author: str, text: str, outgoing_id: int | None
) -> None:
    conn.execute(
        insert(thread).values(
            referral_id=referral_id,
            at=now,
            direction="to_sender",
            author=author,
            text=text,
            outgoing_id=outgoing_id,
        )
    )


class MedcomWriter(Protocol):
    def write(
        self, conn: Connection, referral_id: int, text: str, now: datetime
    ) -> tuple[list[Follow], int | None] | None: ...


def match_reply(conn: Connection, envelope_sender: str, headers: Message) -> int | None:
    """The referral this message answers, or None if it is not a reply to one."""
    ids = _MESSAGE_IDS.findall(f"{headers.get('In-Reply-To', '')} {headers.get('References', '')}")
    if ids:
        found = conn.execute(
            select(outgoing_mail.c.referral_id)
            .where(outgoing_mail.c.message_id_header.in_(ids), outgoing_mail.c.referral_id.is_not(None))
            .limit(1)
        ).scalar_one_or_none()
        if found is not None:
            return int(found)
    referral_id = referral_from_reference(str(headers.get("Subject", "")))
    if referral_id is None or not sent_by(conn, referral_id, envelope_sender):
        return None
    return referral_id


def reply_in_thread(conn: Connection, message_id: int) -> int | None:
    """The referral whose thread the message joined as the sender's answer, if it did."""
    referral_id: int | None = conn.execute(
        select(thread.c.referral_id).where(thread.c.message_id == message_id)
    ).scalar()
    return referral_id


def sent_by(conn: Connection, referral_id: int, sender: str) -> bool:
    """Whether `sender` sent the message the referral came from: only its own sender may add to a thread
    by naming the reference."""
    if not sender:
        return False  # a bounce (null sender) joins nothing
    original = conn.execute(
        select(messages.c.mail_from)
        .join(referrals, referrals.c.message_id == messages.c.id)
        .where(referrals.c.id == referral_id)
    ).scalar_one_or_none()
    return bool(original) and str(original).lower() == sender.lower()


def attach_reply(
    conn: Connection, referral_id: int, message_id: int, author: str, text: str, now: datetime
) -> None:
    conn.execute(
        insert(thread).values(
            referral_id=referral_id,
            at=now,
            direction="from_sender",
            author=author,
            text=text,
            message_id=message_id,
        )
    )
    conn.execute(
        update(referrals).where(referrals.c.id == referral_id).values(unread_reply=True, updated_at=now)
    )


def failed_mail(conn: Connection) -> list[dict[str, Any]]:
    """Mail that failed its last attempt, for operations: what, to whom, why; never the contents."""
    rows = conn.execute(
        select(
            outgoing_mail.c.id,
            outgoing_mail.c.kind,
            outgoing_mail.c.referral_id,
            outgoing_mail.c.answers_message,
            outgoing_mail.c.last_error,
            outgoing_mail.c.created_at,
        )
        .where(outgoing_mail.c.state == "failed")
        .order_by(outgoing_mail.c.id)
    ).all()
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "referral": reference(r.referral_id) if r.referral_id else None,
            "message": r.answers_message,
            "error": r.last_error,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]


def returned_text(reference_text: str, committee: str, reason: str) -> str:
    return (
        f"Henvisningen {reference_text} er tilbagevist af {committee}.\n\nBegrundelse: {reason.strip()}\n\n"
        f"The referral {reference_text} has been returned; the reason is given above."
    )


def forwarded_text(reference_text: str, committee: str, unit_kind: str) -> str:
    """What the sender is told of a forward: the reference and the kind of unit, nothing about the child."""
    unit = f"kommunens {unit_kind}" if unit_kind else "den rette enhed i kommunen"
    return (
        f"Henvisningen {reference_text} er videresendt af {committee} til {unit}, som har den herfra.\n\n"
        f"The referral {reference_text} has been forwarded to the municipal unit that takes it over."
    )


def transferred_text(reference_text: str, receiving_committee: str) -> str:
    """What the sender is told of a transfer: the reference and the committee that has it now."""
    return (
        f"Henvisningen {reference_text} er overført til {receiving_committee}, som behandler den herfra.\n\n"
        f"The referral {reference_text} has been transferred to another municipality's committee."
    )
