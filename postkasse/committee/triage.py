"""The triage queue: referrals no rule could route, oldest first, each with its reason in words.

Operators see why a message waits, not what it says: no subject, name or CPR here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from postkasse import kinds
from postkasse.committee import referrals as referral_states
from postkasse.deadlines.rules import RuleBook
from postkasse.pipeline import Follow
from postkasse.routing.policy import TRIAGE_TEXT
from postkasse.store.schema import messages, referrals


@dataclass(frozen=True)
class Triaged:
    referral_id: int
    received_at: datetime
    reason: str
    sentence: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.referral_id,
            "received_at": self.received_at.isoformat(),
            "reason": self.reason,
            "text": self.sentence,
        }


def waiting(conn: Connection, limit: int = 1000) -> list[Triaged]:
    rows = conn.execute(
        select(
            referrals.c.id,
            messages.c.received_at,
            referrals.c.triage_reason,
            referrals.c.explanation,
        )
        .join(messages, messages.c.id == referrals.c.message_id)
        .where(referrals.c.state == "triage")
        .order_by(referrals.c.id)
        .limit(limit)
    ).all()
    return [
        Triaged(r.id, r.received_at, r.triage_reason or "", _sentence(r.triage_reason, r.explanation))
        for r in rows
    ]


def _sentence(reason: str | None, explanation: list[str]) -> str:
    """The sentence that gave the triage reason, else the standard one."""
    standard = TRIAGE_TEXT.get(reason or "", "")
    lines = [line for line in explanation if not line.startswith("Afgørelse")]
    return lines[-1] if lines else standard


def assign(
    conn: Connection,
    referral_id: int,
    municipality: str,
    note: str,
    now: datetime,
    actor: str,
    rules: RuleBook,
) -> list[Follow]:
    """An operator sends a triaged referral to a municipality; an urgent one alerts that committee now."""
    referral_states.assign(conn, referral_id, municipality, note, now, actor, rules)
    urgent = conn.execute(select(referrals.c.urgent).where(referrals.c.id == referral_id)).scalar_one()
    return [(kinds.URGENT, referral_id)] if urgent else []
