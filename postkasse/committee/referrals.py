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

from postkasse.deadlines.rules import RuleBook
from postkasse.routing.facts import Facts
from postkasse.routing.policy import Decision
from postkasse.store.schema import referral_events, referrals

SYSTEM = "system"

TRANSITIONS = {"assign": ("triage", "new"), "pull": ("new", "pulled"), "decide": ("pulled", "handled")}
OUTCOMES_NEEDING_DETAIL = {"forwarded": "unit", "returned": "reason"}
# Why a committee returns a referral (tilbagevisning), as counted in the pilot's statistics.
RETURN_REASONS = {
    "missing_information": "manglende oplysninger",
    "ppr_not_involved": "PPR ikke inddraget",
    "not_target_group": "ikke i målgruppen",
    "wrong_municipality": "forkert kommune",
    "other": "anden årsag",
}
# A recorded exception stops the handling clock (sager af myndighedskarakter, lægefaglige hensyn).
EXCEPTIONS = {"authority_case": "sag af myndighedskarakter", "medical_reason": "lægefagligt hensyn"}


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
    received_at: datetime
    warn_at: datetime
    due_at: datetime
    sender_kind: str = "other"
    letter_id: str = ""  # the MedCom letter, when a document holds several


def decided(
    message_id: int,
    received_at: datetime,
    decision: Decision,
    facts: Facts | None,
    rules: RuleBook,
    sender_kind: str,
    letter_id: str = "",
) -> NewReferral:
    """The referral a routing decision makes, due by the rules of the municipality it goes to."""
    warn_at, due_at = rules.for_municipality(decision.municipality).handling(received_at)
    return NewReferral(
        message_id=message_id,
        municipality=decision.municipality,
        triage_reason=decision.triage_reason,
        reasons=decision.reasons,
        explanation=decision.explanation,
        flags=decision.flags,
        cpr=decision.cpr,
        patient_name=facts.name if facts else None,
        subject=facts.subject if facts else None,
        urgent=facts.urgent if facts else False,
        received_at=received_at,
        warn_at=warn_at,
        due_at=due_at,
        sender_kind=sender_kind,
        letter_id=letter_id,
    )


def for_message(conn: Connection, message_id: int) -> Any:
    """The message's (first) referral; a MedCom document with several letters has one per letter."""
    return conn.execute(
        select(referrals).where(referrals.c.message_id == message_id).order_by(referrals.c.id).limit(1)
    ).one_or_none()


def create(conn: Connection, new: NewReferral, now: datetime, actor: str = SYSTEM) -> int:
    state = "new" if new.municipality else "triage"
    referral_id: int = conn.execute(
        insert(referrals)
        .values(
            message_id=new.message_id,
            letter_id=new.letter_id,
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
            sender_kind=new.sender_kind,
            received_at=new.received_at,
            queued_at=now if state == "new" else None,
            warn_at=new.warn_at,
            due_at=new.due_at,
            created_at=now,
            updated_at=now,
        )
        .returning(referrals.c.id)
    ).scalar_one()
    event(
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


def event(
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
    event(conn, referral_id, now, actor, action, before, after, detail)


def assign(
    conn: Connection,
    referral_id: int,
    municipality: str,
    note: str,
    now: datetime,
    actor: str,
    rules: RuleBook,
) -> None:
    """An operator sends a triaged referral to a municipality's queue; its handling deadline is then
    counted by that municipality's rules, still from the moment the mailbox accepted the message."""
    if not note.strip():
        raise ValueError("assigning from triage needs a note saying why")
    received_at = conn.execute(
        select(referrals.c.received_at).where(referrals.c.id == referral_id)
    ).scalar_one_or_none()
    if received_at is None:
        raise LookupError(f"no referral {referral_id}")
    warn_at, due_at = rules.for_municipality(municipality).handling(received_at)
    _move(
        conn,
        referral_id,
        "assign",
        now,
        actor,
        {"municipality": municipality, "queued_at": now, "warn_at": warn_at, "due_at": due_at},
        {"municipality": municipality, "note": note, "due": due_at.isoformat()},
    )


def pull(conn: Connection, referral_id: int, now: datetime, actor: str) -> None:
    _move(conn, referral_id, "pull", now, actor, {"pulled_at": now, "pulled_by": actor}, {})


def decide(
    conn: Connection,
    referral_id: int,
    outcome: str,
    detail: str | None,
    note: str | None,
    now: datetime,
    actor: str,
    return_reason: str | None = None,
) -> None:
    """Record the committee's decision; forwarding names the unit, returning gives the reason (and its
    code, `other` when none is given)."""
    if outcome not in ("forwarded", "returned", "joint_pathway", "closed"):
        raise ValueError(f"unknown outcome {outcome!r}")
    needed = OUTCOMES_NEEDING_DETAIL.get(outcome)
    if needed and not (detail and detail.strip()):
        raise ValueError(f"outcome {outcome} needs the {needed}")
    code = (return_reason or "other") if outcome == "returned" else None
    if code is not None and code not in RETURN_REASONS:
        raise ValueError(f"unknown return reason {code!r}")
    _move(
        conn,
        referral_id,
        "decide",
        now,
        actor,
        {"outcome": outcome, "outcome_detail": detail, "return_reason": code, "handled_at": now},
        {"outcome": outcome, needed or "detail": detail, "note": note, "return_reason": code},
    )


def record_exception(
    conn: Connection, referral_id: int, reason: str, note: str, now: datetime, actor: str
) -> None:
    """The committee stops the handling clock for this referral, with the reason and a note."""
    if reason not in EXCEPTIONS:
        raise ValueError(f"unknown exception {reason!r}")
    if not note.strip():
        raise ValueError("an exception needs a note saying why")
    result = conn.execute(
        update(referrals)
        .where(
            referrals.c.id == referral_id,
            referrals.c.state.in_(("new", "pulled")),
            referrals.c.exception.is_(None),
        )
        .values(exception=reason, updated_at=now)
    )
    if result.rowcount != 1:
        row = conn.execute(
            select(referrals.c.state, referrals.c.exception).where(referrals.c.id == referral_id)
        ).one_or_none()
        if row is None:
            raise LookupError(f"no referral {referral_id}")
        if row.exception:
            raise TransitionError(f"referral {referral_id} already has the exception {row.exception}")
        raise TransitionError(f"referral {referral_id} is {row.state}; an exception needs new or pulled")
    event(conn, referral_id, now, actor, "exception", None, None, {"reason": reason, "note": note})


def note(conn: Connection, referral_id: int, text: str, now: datetime, actor: str) -> None:
    """A note for colleagues (intern note): part of the referral's history, never sent to anyone."""
    if not text.strip():
        raise ValueError("a note needs text")
    event(conn, referral_id, now, actor, "note", None, None, {"text": text})


def note_duplicate(conn: Connection, referral_id: int, message_id: int, now: datetime) -> None:
    """The same message arrived again: recorded on the first referral, never shown as a second one."""
    event(conn, referral_id, now, SYSTEM, "duplicate_received", None, None, {"message_id": message_id})


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
