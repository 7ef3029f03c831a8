"""Forwarding a referral to the municipal unit that takes it over (seed 003 5.3: "with all relevant
information"): a cover mail with the original message attached byte for byte, the thread so far and the
newest action plan, sent through the outbound relay like every mail (stored, retried, failed visibly).

A unit without an address, or a mail the relay refused for good, leaves the referral undelivered, and
that is shown to the committee and to operations, never hidden behind the word "forwarded".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update

from postkasse import kinds
from postkasse.pipeline import Follow
from postkasse.receipts import compose, outgoing
from postkasse.reference import reference
from postkasse.routing.municipalities import Unit
from postkasse.store.schema import messages, outgoing_mail, referrals, thread

KIND = "forward"


def forward(
    conn: Connection,
    referral_id: int,
    unit: Unit,
    note: str | None,
    committee: str,
    from_address: str,
    now: datetime,
    plan_pdf: bytes | None,
) -> list[Follow]:
    """Queue the unit's mail (none when the unit has no address) and record who owns the referral."""
    values: dict[str, Any] = {"unit": unit.id, "updated_at": now}
    follow: list[Follow] = []
    if unit.address is not None:
        row = conn.execute(
            select(messages.c.raw, referrals.c.due_at)
            .join(referrals, referrals.c.message_id == messages.c.id)
            .where(referrals.c.id == referral_id)
        ).one()
        entries = conn.execute(
            select(thread.c.at, thread.c.direction, thread.c.text)
            .where(thread.c.referral_id == referral_id)
            .order_by(thread.c.id)
        ).all()
        mail = compose.forward(
            from_address=from_address,
            to=unit.address,
            reference=reference(referral_id),
            committee=committee,
            unit=unit.name,
            note=note,
            due=row.due_at,
            original=row.raw,
            thread=[(e.at.isoformat(), e.direction, e.text) for e in entries],
            plan_pdf=plan_pdf,
        )
        outgoing_id = outgoing.add(
            conn, KIND, mail, recipient=unit.address, referral_id=referral_id, answers_message=None, now=now
        )
        values |= {"forward_mail_id": outgoing_id, "forwarded_at": now}
        follow.append((kinds.SEND, outgoing_id))
    conn.execute(update(referrals).where(referrals.c.id == referral_id).values(**values))
    return follow


def delivery(conn: Connection, referral_id: int) -> str | None:
    """`sent`, `pending` (on its way, or retrying), `failed` (refused for good), `no_address`; None when
    the referral was not forwarded to a unit."""
    row = conn.execute(
        select(referrals.c.unit, outgoing_mail.c.state)
        .outerjoin(outgoing_mail, outgoing_mail.c.id == referrals.c.forward_mail_id)
        .where(referrals.c.id == referral_id)
    ).one_or_none()
    if row is None or row.unit is None:
        return None
    if row.state is None:
        return "no_address"
    return {"sending": "pending", "suppressed": "failed"}.get(row.state, str(row.state))


def undelivered(conn: Connection) -> list[dict[str, Any]]:
    """Forwarded referrals whose unit never got them: for operations (reference, municipality, unit)."""
    rows = conn.execute(
        select(referrals.c.id, referrals.c.municipality, referrals.c.unit, outgoing_mail.c.state)
        .outerjoin(outgoing_mail, outgoing_mail.c.id == referrals.c.forward_mail_id)
        .where(
            referrals.c.unit.is_not(None),
            or_(referrals.c.forward_mail_id.is_(None), outgoing_mail.c.state.in_(("failed", "suppressed"))),
        )
        .order_by(referrals.c.id)
    ).all()
    return [
        {
            "id": r.id,
            "reference": reference(r.id),
            "municipality": r.municipality,
            "unit": r.unit,
            "why": "no_address" if r.state is None else "refused",
        }
        for r in rows
    ]
