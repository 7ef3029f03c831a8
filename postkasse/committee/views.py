"""What the API and the web inbox show of a referral: a queue line, or the whole referral with its thread
and history."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy import Connection, String, cast, func, select

from postkasse.clock import COPENHAGEN
from postkasse.committee import forwarding, pathways, transfers
from postkasse.deadlines.badges import Badge, badge
from postkasse.deadlines.rules import Rules
from postkasse.mailbox import content
from postkasse.reference import reference
from postkasse.routing.cpr import Cpr
from postkasse.store.schema import audit, message_headers, messages, referral_events, referrals, thread

# A From header of a plain name (letters, spaces, dots, hyphens, apostrophes) and a plain address.
_PLAIN_FROM = re.compile(r"[ \t]*((?:[^\W_]|[ \t.'-])*?)[ \t]*<([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+)>[ \t]*")
# What a queue can be filtered by: a column, or a routing flag in the flags list.
FLAGS = ("urgent", "unread_reply", "address_disagrees", "outside_target_age")
HISTORY_LIMIT = 200
# What only the audit knows: reads, and messages to the sender; every change is an event already.
AUDIT_ONLY = (
    "read",
    "read_raw",
    "read_attachment",
    "read_plan",
    "read_meetings",
    "message_sender",
    "return_not_sent",
    "meeting",
    "explanation",
)

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


@dataclass(frozen=True)
class QueueLine:
    """One row of the web queue: enough to choose what to open next, no CPR and no name."""

    id: int
    reference: str
    state: str
    received_at: datetime
    sender_name: str
    sender_kind: str
    age: int | None
    urgent: bool
    flags: tuple[str, ...]
    unread_reply: bool
    pulled_by: str | None
    outcome: str | None
    handled_at: datetime | None
    badges: tuple[Badge, ...]


def queue_lines(
    conn: Connection,
    code: str,
    state: str,
    now: datetime,
    flag: str | None,
    offset: int,
    limit: int,
    total: int | None = None,
) -> tuple[list[Any], int]:
    """A page of the municipality's queue in one state, urgent first, then by due time (so the overdue
    come first), and the count of all (`total`, when the caller has counted them already).

    Urgent and other referrals are read as two runs of the index (municipality, state, urgent, due_at,
    id), so a page of a long queue is found without sorting the queue. The urgent ones are counted only
    when their page does not tell how many there are: a page that is not full of them ends them."""
    where = [referrals.c.municipality == code, referrals.c.state == state]
    if flag in ("urgent", "unread_reply"):
        where.append(referrals.c[flag].is_(True))
    elif flag in FLAGS:
        where.append(cast(referrals.c.flags, String).contains(f'"{flag}"'))
    if total is None:
        total = int(conn.execute(select(func.count()).select_from(referrals).where(*where)).scalar_one())
    if state == "handled":
        order = [referrals.c.handled_at.desc(), referrals.c.id.desc()]
        return _lines(conn, where, order, offset, limit), total
    by_due = [referrals.c.due_at, referrals.c.id]
    urgent = [*where, referrals.c.urgent.is_(True)]
    rows = _lines(conn, urgent, by_due, offset, limit)
    if len(rows) < limit:
        if rows or offset == 0:
            first = offset + len(rows)
        else:
            first = int(conn.execute(select(func.count()).select_from(referrals).where(*urgent)).scalar_one())
        rest = [*where, referrals.c.urgent.is_(False)]
        rows += _lines(conn, rest, by_due, max(offset - first, 0), limit - len(rows))
    return rows, total


def _lines(conn: Connection, where: list[Any], order: list[Any], offset: int, limit: int) -> list[Any]:
    return list(
        conn.execute(
            select(
                *SUMMARY_COLUMNS,
                referrals.c.cpr,
                referrals.c.sender_kind,
                referrals.c.queued_at,
                referrals.c.warn_at,
                referrals.c.handled_at,
                messages.c.mail_from,
                message_headers.c.from_header,
            )
            .join(messages, messages.c.id == referrals.c.message_id)
            .outerjoin(message_headers, message_headers.c.message_id == messages.c.id)
            .where(*where)
            .order_by(*order)
            .offset(offset)
            .limit(limit)
        ).all()
    )


def badges(
    state: str,
    queued_at: datetime | None,
    warn_at: datetime,
    due_at: datetime,
    stopped: bool,
    now: datetime,
    rules: Rules,
) -> tuple[Badge, ...]:
    """The deadlines that still run: the daily emptying while new, the handling until decided."""
    found: list[Badge] = []
    if state == "new" and queued_at is not None:
        found.append(
            badge("emptying", now, queued_at + rules.emptying_warning, queued_at + rules.emptying_breach)
        )
    if state != "handled":
        found.append(badge("handling", now, warn_at, due_at, stopped=stopped))
    return tuple(found)


def detail_badges(found: dict[str, Any], now: datetime, rules: Rules) -> tuple[Badge, ...]:
    queued = found["queued_at"]
    return badges(
        found["state"],
        datetime.fromisoformat(queued) if queued else None,
        datetime.fromisoformat(found["deadline_warning"]),
        datetime.fromisoformat(found["deadline"]),
        found["deadline_exception"] is not None,
        now,
        rules,
    )


def queue_line(row: Any, now: datetime, rules: Rules) -> QueueLine:
    return QueueLine(
        id=row.id,
        reference=reference(row.id),
        state=row.state,
        received_at=row.received_at,
        sender_name=sender_name(row.from_header, row.mail_from),
        sender_kind=row.sender_kind,
        age=child_age(row.cpr, now),
        urgent=row.urgent,
        flags=tuple(row.flags),
        unread_reply=row.unread_reply,
        pulled_by=row.pulled_by,
        outcome=row.outcome,
        handled_at=row.handled_at,
        badges=badges(
            row.state, row.queued_at, row.warn_at, row.due_at, row.exception is not None, now, rules
        ),
    )


def sender_name(from_header: str | None, envelope: str | None) -> str:
    """The name the sender gave, else their address, else that none is known."""
    name, address = plain_from(from_header or "") or parseaddr(from_header or "")
    return name.strip() or address or envelope or "ukendt afsender"


def plain_from(header: str) -> tuple[str, str] | None:
    """`Name <address>` read as `parseaddr` reads it, for the plain names nearly every sender gives;
    None for anything else (quotes, comments, encoded words, lists), which `parseaddr` reads. The queue
    page names 50 senders, and `parseaddr` cost a seventh of the page."""
    found = _PLAIN_FROM.fullmatch(header)
    return (" ".join(found.group(1).split()), found.group(2)) if found else None


def child_age(cpr: str | None, now: datetime) -> int | None:
    if not cpr:
        return None
    try:
        return Cpr(cpr).age_on(now.astimezone(COPENHAGEN).date())
    except ValueError:  # a number stored from a document that is not a date: no age to show
        return None


def history(conn: Connection, referral_id: int) -> list[dict[str, Any]]:
    """What happened to the referral and who read it, oldest first (the newest entries if there are many)."""
    events = conn.execute(
        select(referral_events.c.id, referral_events.c.at, referral_events.c.actor, referral_events.c.action)
        .where(referral_events.c.referral_id == referral_id)
        .order_by(referral_events.c.id.desc())
        .limit(HISTORY_LIMIT)
    ).all()
    reads = conn.execute(
        select(audit.c.id, audit.c.at, audit.c.actor, audit.c.action)
        .where(audit.c.referral_id == referral_id, audit.c.action.in_(AUDIT_ONLY))
        .order_by(audit.c.id.desc())
        .limit(HISTORY_LIMIT)
    ).all()
    found = [
        {"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "kind": kind}
        for kind, rows in (("event", events), ("audit", reads))
        for r in rows
    ]
    found.sort(key=lambda entry: entry["at"])
    return found[-HISTORY_LIMIT:]


def detail(
    conn: Connection, referral_id: int, sees: Callable[[str | None], bool] | None = None
) -> dict[str, Any] | None:
    """The whole referral, or None if there is none or `sees` may not see its municipality (so a read
    needs one lookup of the referral, not one to check and one to show)."""
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
    if row is None or (sees is not None and not sees(row.municipality)):
        return None
    entries = conn.execute(
        select(thread).where(thread.c.referral_id == referral_id).order_by(thread.c.id)
    ).all()
    notes = conn.execute(
        select(referral_events.c.at, referral_events.c.actor, referral_events.c.detail)
        .where(referral_events.c.referral_id == referral_id, referral_events.c.action == "note")
        .order_by(referral_events.c.id)
    ).all()
    mail = content.read(row.raw)
    return {
        **summary(row),
        "queued_at": row.queued_at.isoformat() if row.queued_at else None,
        "purged_at": row.purged_at.isoformat() if row.purged_at else None,
        "deadline_warning": row.warn_at.isoformat(),
        "outcome_detail": row.outcome_detail,
        "return_reason": row.return_reason,
        "triage_reason": row.triage_reason,
        "routing": {"reasons": list(row.reasons), "explanation": list(row.explanation)},
        "facts": {"cpr": row.cpr, "patient_name": row.patient_name, "subject": row.subject},
        "sender": {"envelope": row.mail_from, "from": row.from_header},
        "text": mail.text(),
        "attachments": mail.attachments(),
        "thread": [
            {"at": e.at.isoformat(), "direction": e.direction, "author": e.author, "text": e.text}
            for e in entries
        ],
        "notes": [{"at": n.at.isoformat(), "author": n.actor, "text": n.detail["text"]} for n in notes],
        "history": history(conn, referral_id),
        "pathway": pathways.summary(conn, referral_id) if row.outcome == "joint_pathway" else None,
        "forward": {"unit": row.unit, "delivery": forwarding.delivery(conn, referral_id)}
        if row.unit
        else None,
        "transfers": transfers.history(conn, referral_id) if row.transferred_from else [],
    }
