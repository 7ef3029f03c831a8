"""Referrals and their state machine; every change is an event row saying who, when and what.

    triage --assign--> new --pull--> pulled --decide--> handled
    (handled with an outcome: forwarded | returned | joint_pathway | closed)

A routed message enters its municipality's queue as `new`; one that could not be routed enters triage,
where an operator assigns a municipality with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from postkasse.store.schema import messages, referral_events, referrals

SYSTEM = "system"

TRANSITIONS = {"assign": ("triage", "new"), "pull": ("new", "pulled"), "decide": ("pulled", "handled")}
OUTCOMES_NEEDING_DETAIL = {"forwarded": "unit", "returned": "reason"}


class TransitionError(ValueError):
    """The referral is not in a state that allows this change."""


@dataclass(frozen=True)
class NewReferral:
    message_id: int
    municipality: str | None
    triage_reason: str | None
    reasons: tuple[str, ...]
    explanation: tuple[str, ...]
    flags: tuple[str, ...]
    cpr: str | None
    patient_name: str | None
    subject: str | None
    urgent: bool


def for_message(conn: Connection, message_id: int) -> Any:
    return conn.execute(select(referrals).where(referrals.c.message_id == message_id)).one_or_none()


def create(conn: Connection, new: NewReferral, now: datetime, actor: str = SYSTEM) -> int:
    state = "new" if new.municipality else "triage"
    referral_id: int = conn.execute(
        insert(referrals)
        .values(
            message_id=new.message_id,
            municipality=new.municipality,
            state=state,
            triage_reason=new.triage_reason,
            reasons=list(new.reasons),
            explanation=list(new.explanation),
            flags=list(new.flags),
            cpr=new.cpr,
            patient_name=new.patient_name,
            subject=new.subject,
            urgent=new.urgent,
            created_at=now,
            updated_at=now,
        )
        .returning(referrals.c.id)
    ).scalar_one()
    _event(
        conn,
        referral_id,
        now,
        actor,
        "routed" if state == "new" else "triaged",
        None,
        state,
        {"municipality": new.municipality, "reasons": list(new.reasons), "flags": list(new.flags)},
    )
    return referral_id


def _event(
    conn: Connection,
    referral_id: int,
    now: datetime,
    actor: str,
    action: str,
    from_state: str | None,
    to_state: str | None,
    detail: dict[str, Any],
) -> None:
    conn.execute(
        insert(referral_events).values(
            referral_id=referral_id,
            at=now,
            actor=actor,
            action=action,
            from_state=from_state,
            to_state=to_state,
            detail=detail,
        )
    )


def _move(
    conn: Connection,
    referral_id: int,
    action: str,
    now: datetime,
    actor: str,
    values: dict[str, Any],
    detail: dict[str, Any],
) -> None:
    before, after = TRANSITIONS[action]
    result = conn.execute(
        update(referrals)
        .where(referrals.c.id == referral_id, referrals.c.state == before)
        .values(state=after, updated_at=now, **values)
    )
    if result.rowcount != 1:
        state = conn.execute(
            select(referrals.c.state).where(referrals.c.id == referral_id)
        ).scalar_one_or_none()
        if state is None:
            raise LookupError(f"no referral {referral_id}")
        raise TransitionError(f"referral {referral_id} is {state}; {action} needs {before}")
    _event(conn, referral_id, now, actor, action, before, after, detail)


def assign(
    conn: Connection, referral_id: int, municipality: str, note: str, now: datetime, actor: str
) -> None:
    """An operator sends a triaged referral to a municipality's queue."""
    if not note.strip():
        raise ValueError("assigning from triage needs a note saying why")
    _move(
        conn,
        referral_id,
        "assign",
        now,
        actor,
        {"municipality": municipality},
        {"municipality": municipality, "note": note},
    )


def pull(conn: Connection, referral_id: int, now: datetime, actor: str) -> None:
    _move(conn, referral_id, "pull", now, actor, {}, {})


def decide(
    conn: Connection,
    referral_id: int,
    outcome: str,
    detail: str | None,
    note: str | None,
    now: datetime,
    actor: str,
) -> None:
    """Record the committee's decision; forwarding names the unit, returning gives the reason."""
    if outcome not in ("forwarded", "returned", "joint_pathway", "closed"):
        raise ValueError(f"unknown outcome {outcome!r}")
    needed = OUTCOMES_NEEDING_DETAIL.get(outcome)
    if needed and not (detail and detail.strip()):
        raise ValueError(f"outcome {outcome} needs the {needed}")
    _move(
        conn,
        referral_id,
        "decide",
        now,
        actor,
        {"outcome": outcome, "outcome_detail": detail},
        {"outcome": outcome, needed or "detail": detail, "note": note},
    )


def note_duplicate(conn: Connection, referral_id: int, message_id: int, now: datetime) -> None:
    """The same message arrived again: recorded on the first referral, never shown as a second one."""
    _event(conn, referral_id, now, SYSTEM, "duplicate_received", None, None, {"message_id": message_id})


def events(conn: Connection, referral_id: int) -> list[Any]:
    return list(
        conn.execute(
            select(referral_events)
            .where(referral_events.c.referral_id == referral_id)
            .order_by(referral_events.c.id)
        ).all()
    )


def mark_replies_read(conn: Connection, referral_id: int) -> None:
    conn.execute(
        update(referrals)
        .where(referrals.c.id == referral_id, referrals.c.unread_reply.is_(True))
        .values(unread_reply=False)
    )


def earlier_copy(conn: Connection, message: Any) -> int | None:
    """The referral of an earlier message with the same Message-ID from the same sender: a resend."""
    if not message.message_id:
        return None
    referral_id: int | None = conn.execute(
        select(referrals.c.id)
        .join(messages, messages.c.id == referrals.c.message_id)
        .where(
            messages.c.message_id == message.message_id,
            messages.c.mail_from == message.mail_from,
            messages.c.id < message.id,
        )
        .order_by(messages.c.id)
        .limit(1)
    ).scalar_one_or_none()
    return referral_id
