"""Moving a referral to another municipality (seed 003 5.3: the child has moved, or the referral belongs
elsewhere): it arrives in the other queue as `new`, with its message, thread, meetings and history, and
clocks counted from the transfer; the original time of receipt stays. A municipality that does not take
part sends it to triage. Reference data learns nothing from it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from postkasse.committee.referrals import TransitionError, event
from postkasse.deadlines.rules import RuleBook
from postkasse.routing.municipalities import Municipality
from postkasse.routing.policy import NOT_PARTICIPATING
from postkasse.store.schema import pathways, referrals, transfers

REASONS = {"moved": "barnet er flyttet", "wrong_municipality": "henvendelsen hører til en anden kommune"}


def transfer(
    conn: Connection,
    referral_id: int,
    to: Municipality,
    reason: str,
    note: str,
    actor: str,
    now: datetime,
    rules: RuleBook,
) -> str:
    """Move the referral to `to`; returns the state it arrives in (`new`, or `triage`)."""
    row = conn.execute(
        select(referrals.c.state, referrals.c.municipality).where(referrals.c.id == referral_id)
    ).one_or_none()
    if row is None:
        raise LookupError(referral_id)
    if row.state == "triage" or row.municipality is None:
        raise TransitionError("a referral in triage is assigned by operations, not transferred")
    if row.municipality == to.code:
        raise TransitionError("the referral is already in that municipality")
    arrives = "new" if to.participating else "triage"
    warn_at, due_at = rules.for_municipality(to.code if to.participating else None).handling(now)
    conn.execute(
        update(referrals)
        .where(referrals.c.id == referral_id)
        .values(
            state=arrives,
            municipality=to.code if to.participating else None,
            triage_reason=None if to.participating else NOT_PARTICIPATING,
            queued_at=now if to.participating else None,
            warn_at=warn_at,
            due_at=due_at,
            pulled_at=None,
            pulled_by=None,
            handled_at=None,
            outcome=None,
            outcome_detail=None,
            return_reason=None,
            exception=None,
            unit=None,
            forward_mail_id=None,
            forwarded_at=None,
            transferred_from=row.municipality,
            transferred_at=now,
            updated_at=now,
        )
    )
    if to.participating:
        conn.execute(
            update(pathways).where(pathways.c.referral_id == referral_id).values(municipality=to.code)
        )
    conn.execute(
        insert(transfers).values(
            referral_id=referral_id,
            from_municipality=row.municipality,
            to_municipality=to.code,
            reason=reason,
            note=note,
            actor=actor,
            at=now,
        )
    )
    event(
        conn,
        referral_id,
        now,
        actor,
        "transfer",
        row.state,
        arrives,
        {"from": row.municipality, "to": to.code, "reason": reason, "note": note},
    )
    return arrives


def history(conn: Connection, referral_id: int) -> list[dict[str, str]]:
    """Where the referral came from and why, oldest first."""
    return [
        {
            "from": t.from_municipality,
            "to": t.to_municipality,
            "reason": t.reason,
            "note": t.note,
            "by": t.actor,
            "at": t.at.isoformat(),
        }
        for t in conn.execute(
            select(transfers).where(transfers.c.referral_id == referral_id).order_by(transfers.c.id)
        )
    ]
