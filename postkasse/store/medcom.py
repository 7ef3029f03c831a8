"""Reading MedCom answers back: for a sender fetching them over the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from postkasse.store.schema import medcom_answers, medcom_letters, referrals


def _item(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "message": row.message_id,
        "kind": row.kind,
        "code": row.code,
        "content_type": row.content_type,
        "created_at": row.created_at.isoformat(),
        "url": f"/api/v1/answers/{row.id}",
    }


_LISTED = (
    medcom_answers.c.id,
    medcom_answers.c.message_id,
    medcom_answers.c.kind,
    medcom_answers.c.code,
    medcom_answers.c.content_type,
    medcom_answers.c.created_at,
)


def answers_for(conn: Connection, message_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(*_LISTED).where(medcom_answers.c.message_id == message_id).order_by(medcom_answers.c.id)
    ).all()
    return [_item(r) for r in rows]


def was_read(conn: Connection, message_id: int) -> bool:
    """The document has been through the route step (it may have needed no answer), or routing gave up and
    left it in triage for an operator."""
    for table in (medcom_letters, referrals):
        if conn.execute(select(table.c.id).where(table.c.message_id == message_id).limit(1)).first():
            return True
    return False


def answers_to(conn: Connection, recipient: str, after: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(*_LISTED)
        .where(medcom_answers.c.recipient == recipient, medcom_answers.c.id > after)
        .order_by(medcom_answers.c.id)
        .limit(limit)
    ).all()
    return [_item(r) for r in rows]


def answer(conn: Connection, answer_id: int, recipient: str) -> Any:
    return conn.execute(
        select(medcom_answers.c.body, medcom_answers.c.content_type).where(
            medcom_answers.c.id == answer_id, medcom_answers.c.recipient == recipient
        )
    ).one_or_none()
