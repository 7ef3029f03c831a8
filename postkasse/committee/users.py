"""People who log in to the web inbox: a committee member of one municipality, or operations.

Local accounts keep an argon2 hash of a generated password; users who come through the organisation's
OpenID Connect provider keep their issuer and subject instead. Failed logins are counted per account and
per address, so guessing is slow whichever of the two an attacker varies.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from postkasse.committee.tokens import NAME_SHAPE, Principal
from postkasse.store.schema import login_failures, users, web_sessions

ROLES = ("committee", "ops")
_HASHER = PasswordHasher()


@cache
def _nobody() -> str:
    """Verified against when the account does not exist, so an unknown name costs as much time as a known
    one. Made on first use: a hash takes argon2's 64 MiB, which no process should pay just to start."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    municipality: str | None

    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.municipality)


def new_password() -> str:
    """Twenty random characters from a URL-safe alphabet: about 120 bits."""
    return secrets.token_urlsafe(15)


def add(conn: Connection, name: str, role: str, municipality: str | None, now: datetime) -> str:
    """A local account; returns its generated password, which is shown once and never stored."""
    _check(name, role, municipality)
    password = new_password()
    try:
        conn.execute(
            insert(users).values(
                name=name,
                role=role,
                municipality=municipality,
                password_hash=_HASHER.hash(password),
                created_at=now,
            )
        )
    except IntegrityError:
        raise UserError(f"a user named {name!r} exists already") from None
    return password


def set_password(conn: Connection, name: str) -> str:
    """A new generated password for a local account; the old one stops working."""
    password = new_password()
    result = conn.execute(
        update(users).where(users.c.name == name).values(password_hash=_HASHER.hash(password))
    )
    if result.rowcount != 1:
        raise UserError(f"no user named {name!r}")
    return password


def disable(conn: Connection, name: str, now: datetime) -> None:
    """The user can no longer log in, and every session of theirs ends now."""
    user_id = conn.execute(select(users.c.id).where(users.c.name == name)).scalar_one_or_none()
    if user_id is None:
        raise UserError(f"no user named {name!r}")
    conn.execute(
        update(users).where(users.c.id == user_id, users.c.disabled_at.is_(None)).values(disabled_at=now)
    )
    conn.execute(
        update(web_sessions)
        .where(web_sessions.c.user_id == user_id, web_sessions.c.ended_at.is_(None))
        .values(ended_at=now)
    )


def verify(conn: Connection, name: str, password: str) -> User | None:
    """The active local user with this name and password, else None (at the same cost either way)."""
    row = conn.execute(select(users).where(users.c.name == name)).one_or_none()
    stored = row.password_hash if row is not None and row.password_hash else _nobody()
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None or not row.password_hash:
        return None
    return User(row.id, row.name, row.role, row.municipality)


def from_provider(
    conn: Connection, subject: str, name: str, role: str, municipality: str | None, now: datetime
) -> User | None:
    """The user an OpenID Connect login stands for, created at the first login and updated from the
    provider's claims at each; None when operations has disabled them here."""
    _check(name, role, municipality)
    row = conn.execute(select(users).where(users.c.subject == subject)).one_or_none()
    if row is None:
        try:
            with conn.begin_nested():
                user_id = conn.execute(
                    insert(users)
                    .values(name=name, role=role, municipality=municipality, subject=subject, created_at=now)
                    .returning(users.c.id)
                ).scalar_one()
        except IntegrityError:
            raise UserError(f"the name {name!r} belongs to another user") from None
        return User(user_id, name, role, municipality)
    if row.disabled_at is not None:
        return None
    conn.execute(update(users).where(users.c.id == row.id).values(role=role, municipality=municipality))
    return User(row.id, row.name, role, municipality)


def listing(conn: Connection) -> list[tuple[str, str, str | None, bool]]:
    """Every user: name, role, municipality, and whether they are active."""
    rows = conn.execute(select(users).order_by(users.c.name)).all()
    return [(r.name, r.role, r.municipality, r.disabled_at is None) for r in rows]


def throttled(
    conn: Connection,
    account: str,
    address: str,
    now: datetime,
    window: timedelta,
    per_account: int,
    per_address: int,
) -> bool:
    """Too many failed logins lately for this account or from this address."""
    since = now - window
    by_account = conn.execute(
        select(func.count())
        .select_from(login_failures)
        .where(login_failures.c.account == account[:64], login_failures.c.at > since)
    ).scalar_one()
    by_address = conn.execute(
        select(func.count())
        .select_from(login_failures)
        .where(login_failures.c.address == address[:64], login_failures.c.at > since)
    ).scalar_one()
    return bool(by_account >= per_account or by_address >= per_address)


def failed(conn: Connection, account: str, address: str, now: datetime, window: timedelta) -> None:
    """Count a failed login; rows older than the window are no longer needed and go."""
    conn.execute(delete(login_failures).where(login_failures.c.at <= now - window))
    conn.execute(insert(login_failures).values(at=now, account=account[:64], address=address[:64]))


def forget_failures(conn: Connection, account: str) -> None:
    """A successful login clears the account's count (not the address's)."""
    conn.execute(delete(login_failures).where(login_failures.c.account == account[:64]))


def _check(name: str, role: str, municipality: str | None) -> None:
    if not NAME_SHAPE.match(name):
        raise UserError("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
    if role not in ROLES:
        raise UserError(f"a role is one of {', '.join(ROLES)}")
    if (role == "committee") != (municipality is not None):
        raise UserError("a committee user names one municipality; an operations user names none")
    if municipality is not None and not (len(municipality) == 4 and municipality.isdigit()):
        raise UserError("a municipality is its 4-digit code")
