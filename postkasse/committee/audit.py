"""The audit trail: every read of a referral and every change, with who, when and what."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from postkasse.store.schema import audit


def record(
    conn: Connection, actor: str, action: str, referral_id: int | None, now: datetime, **detail: Any
) -> None:
    conn.execute(
        insert(audit).values(at=now, actor=actor, action=action, referral_id=referral_id, detail=detail)
    )


def of_referral(conn: Connection, referral_id: int) -> list[Any]:
    return list(
        conn.execute(select(audit).where(audit.c.referral_id == referral_id).order_by(audit.c.id)).all()
    )
