"""The outbox: work still to do for a stored message. The source of truth; the broker only carries it.

A row is `pending` until its step commits together with `finish`, so a redelivered broker message
finds it `done` and does nothing. Rows the broker lost are sent again once their lease runs out.

The statements every step runs (claim, add, finish) are built once, with bound parameters: SQLAlchemy
then finds their compiled form by a cache key it keeps on the statement, where a statement built per
call costs more CPU to build and key than to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, select, update

from postkasse.store.schema import outbox


@dataclass(frozen=True)
class Work:
    id: int
    kind: str
    target_id: int  # what the step works on: a message, an outgoing mail, ...
    attempts: int


_ADD = insert(outbox).returning(outbox.c.id)
_ADD_MANY = insert(outbox).returning(outbox.c.id, sort_by_parameter_order=True)
_CLAIM = select(outbox.c.id, outbox.c.kind, outbox.c.target_id, outbox.c.attempts).where(
    outbox.c.id == bindparam("outbox_id"), outbox.c.state == "pending"
)
_CLAIM_LOCKED = _CLAIM.with_for_update()
_FINISH = (
    update(outbox)
    .where(outbox.c.id == bindparam("outbox_id"), outbox.c.state == "pending")
    .values(state="done", finished_at=bindparam("now"), attempts=outbox.c.attempts + 1, last_error=None)
)


def add(conn: Connection, kind: str, target_id: int, now: datetime, lease_until: datetime) -> int:
    outbox_id: int = conn.execute(
        _ADD,
        {
            "kind": kind,
            "target_id": target_id,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": lease_until,
        },
    ).scalar_one()
    return outbox_id


def add_many(conn: Connection, rows: list[tuple[str, int, datetime]], lease_until: datetime) -> list[int]:
    """Outbox rows for (kind, target, created) in one statement; their ids in the same order."""
    if not rows:
        return []
    if len(rows) == 1:  # a step's usual one follow-up: a plain INSERT, not the many-rows machinery
        ((kind, target, created),) = rows
        return [add(conn, kind, target, created, lease_until)]
    result = conn.execute(
        _ADD_MANY,
        [
            {
                "kind": kind,
                "target_id": target,
                "state": "pending",
                "attempts": 0,
                "created_at": created,
                "next_attempt_at": lease_until,
            }
            for kind, target, created in rows
        ],
    )
    return list(result.scalars())


def claim(conn: Connection, outbox_id: int) -> Work | None:
    """The row if it still needs doing, locked for this transaction; None if done or failed."""
    query = _CLAIM_LOCKED if conn.dialect.name == "postgresql" else _CLAIM
    row = conn.execute(query, {"outbox_id": outbox_id}).one_or_none()
    return Work(row.id, row.kind, row.target_id, row.attempts) if row else None


def finish(conn: Connection, outbox_id: int, now: datetime) -> None:
    result = conn.execute(_FINISH, {"outbox_id": outbox_id, "now": now})
    if result.rowcount != 1:
        raise RuntimeError(f"outbox row {outbox_id} was finished by someone else")


def record_failure(
    conn: Connection, outbox_id: int, now: datetime, error: str, retry_at: datetime, max_attempts: int
) -> bool:
    """Count a failed attempt; returns True when that was the last one and the row is now `failed`."""
    row = conn.execute(
        update(outbox)
        .where(outbox.c.id == outbox_id, outbox.c.state == "pending")
        .values(attempts=outbox.c.attempts + 1, last_error=error[:2000], next_attempt_at=retry_at)
        .returning(outbox.c.attempts)
    ).one_or_none()
    if row is None or row.attempts < max_attempts:
        return False
    conn.execute(update(outbox).where(outbox.c.id == outbox_id).values(state="failed", finished_at=now))
    return True


def due(conn: Connection, now: datetime | None, limit: int, after_id: int = 0) -> list[Work]:
    """Pending rows whose lease ran out by `now` (all pending rows if None), in id order after `after_id`."""
    query = select(outbox.c.id, outbox.c.kind, outbox.c.target_id, outbox.c.attempts).where(
        outbox.c.state == "pending", outbox.c.id > after_id
    )
    if now is not None:
        query = query.where(outbox.c.next_attempt_at <= now)
    rows = conn.execute(query.order_by(outbox.c.id).limit(limit)).all()
    return [Work(r.id, r.kind, r.target_id, r.attempts) for r in rows]


def extend_lease(conn: Connection, ids: list[int], until: datetime) -> None:
    if ids:
        conn.execute(
            update(outbox)
            .where(outbox.c.id.in_(ids), outbox.c.state == "pending")
            .values(next_attempt_at=until)
        )


def backlog(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state)).all()
    return {state: count for state, count in rows}
