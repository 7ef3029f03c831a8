"""What the API shows of a referral: a queue line, or the whole referral with its thread."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from postkasse.clock import COPENHAGEN
from postkasse.mailbox import content
from postkasse.reference import reference
from postkasse.store.schema import message_headers, messages, referral_events, referrals, thread

SUMMARY_COLUMNS = (
    referrals.c.id,
    referrals.c.municipality,
    referrals.c.state,
    referrals.c.urgent,
    referrals.c.flags,
    referrals.c.unread_reply,
    referrals.c.outcome,
    referrals.c.received_at,
    referrals.c.due_at,
    referrals.c.exception,
    referrals.c.pulled_by,
)


def summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "reference": reference(row.id),
        "municipality": row.municipality,
        "state": row.state,
        "received_at": row.received_at.isoformat(),
        "deadline": row.due_at.isoformat(),
        "deadline_local": row.due_at.astimezone(COPENHAGEN).isoformat(),
        "deadline_exception": row.exception,
        "urgent": row.urgent,
        "flags": list(row.flags),
        "unread_reply": row.unread_reply,
        "outcome": row.outcome,
        "pulled_by": row.pulled_by,
    }


def attachments(raw: bytes) -> list[dict[str, Any]]:
    """Every attachment of the stored message, whatever it holds: a read never fails on its content."""
    return content.read(raw).attachments()


def detail(conn: Connection, referral_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(
            referrals,
            messages.c.mail_from,
            messages.c.raw,
            message_headers.c.from_header,
        )
        .join(messages, messages.c.id == referrals.c.message_id)
        .outerjoin(message_headers, message_headers.c.message_id == messages.c.id)
        .where(referrals.c.id == referral_id)
    ).one_or_none()
    if row is None:
        return None
    entries = conn.execute(
        select(thread).where(thread.c.referral_id == referral_id).order_by(thread.c.id)
    ).all()
    notes = conn.execute(
        select(referral_events.c.at, referral_events.c.actor, referral_events.c.detail)
        .where(referral_events.c.referral_id == referral_id, referral_events.c.action == "note")
        .order_by(referral_events.c.id)
    ).all()
    return {
        **summary(row),
        "outcome_detail": row.outcome_detail,
        "return_reason": row.return_reason,
        "triage_reason": row.triage_reason,
        "routing": {"reasons": list(row.reasons), "explanation": list(row.explanation)},
        "facts": {"cpr": row.cpr, "patient_name": row.patient_name, "subject": row.subject},
        "sender": {"envelope": row.mail_from, "from": row.from_header},
        "attachments": attachments(row.raw),
        "thread": [
            {"at": e.at.isoformat(), "direction": e.direction, "author": e.author, "text": e.text}
            for e in entries
        ],
        "notes": [{"at": n.at.isoformat(), "author": n.actor, "text": n.detail["text"]} for n in notes],
    }
