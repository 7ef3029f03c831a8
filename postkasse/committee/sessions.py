"""Web inbox sessions, kept in the store: logging out or disabling a user ends them at once, everywhere.

The cookie holds a random secret; the store keeps only its SHA-256, the user, and the session's CSRF token.
A session ends after `idle` without use and `absolute` after login, whichever comes first.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, select, update

from postkasse.committee.users import User
from postkasse.store.schema import users, web_sessions

# `seen_at` is written at most this often: a page view should not cost a write each time.
TOUCH_EVERY = timedelta(seconds=60)
MAX_SECRET = 100  # a longer cookie is no secret of ours


@dataclass(frozen=True)
class Session:
    id: int
    user: User
    csrf: str
    seen_at: datetime


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key(secret: str) -> bytes:
    """What a process remembers a checked cookie by (`recent.Recent`): its digest, never the secret."""
    return hashlib.sha256(secret.encode()).digest()


def start(conn: Connection, user: User, now: datetime) -> tuple[str, Session]:
    """A new session; returns the cookie's secret (never stored) and the session."""
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session_id = conn.execute(
        insert(web_sessions)
        .values(token_hash=_digest(secret), user_id=user.id, csrf=csrf, started_at=now, seen_at=now)
        .returning(web_sessions.c.id)
    ).scalar_one()
    return secret, Session(session_id, user, csrf, now)


def find(
    conn: Connection, secret: str, now: datetime, idle: timedelta, absolute: timedelta
) -> Session | None:
    """The live session the cookie names, or None: unknown, ended, timed out, or its user disabled."""
    if not secret or len(secret) > MAX_SECRET:
        return None
    row = conn.execute(
        select(
            web_sessions.c.id,
            web_sessions.c.csrf,
            web_sessions.c.started_at,
            web_sessions.c.seen_at,
            web_sessions.c.ended_at,
            users.c.id.label("user_id"),
            users.c.name,
            users.c.role,
            users.c.municipality,
            users.c.disabled_at,
        )
        .join(users, users.c.id == web_sessions.c.user_id)
        .where(web_sessions.c.token_hash == _digest(secret))
    ).one_or_none()
    if row is None or row.ended_at is not None or row.disabled_at is not None:
        return None
    if now - row.seen_at >= idle or now - row.started_at >= absolute:
        return None
    user = User(row.user_id, row.name, row.role, row.municipality)
    return Session(row.id, user, row.csrf, row.seen_at)


def stale(session: Session, now: datetime) -> bool:
    """Whether the session's last use should be written again (see TOUCH_EVERY)."""
    return now - session.seen_at >= TOUCH_EVERY


def touch(conn: Connection, session_id: int, now: datetime) -> None:
    conn.execute(update(web_sessions).where(web_sessions.c.id == session_id).values(seen_at=now))


def end(conn: Connection, session_id: int, now: datetime) -> None:
    conn.execute(
        update(web_sessions)
        .where(web_sessions.c.id == session_id, web_sessions.c.ended_at.is_(None))
        .values(ended_at=now)
    )
