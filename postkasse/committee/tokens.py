"""API tokens: committee (one municipality), ops, and sender scope. Only argon2 hashes are stored.

A token reads `pk_<id>_<secret>`: the id finds the row, argon2 checks the secret. A verified secret is
remembered in this process by its SHA-256 so argon2's deliberate slowness is paid once per token, not
per request. The row itself is read again once a token has gone unchecked for `recent.TTL` seconds, so a
revocation (`postkasse token revoke`, another process) is refused by every process within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from postkasse.committee.recent import Recent
from postkasse.store import Store
from postkasse.store.schema import tokens

TOKEN_SHAPE = re.compile(r"^pk_(\d{1,18})_([A-Za-z0-9_-]{20,100})$")
NAME_SHAPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(ValueError):
    """A token cannot be created or revoked as asked; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, its scope, and for a committee its municipality."""

    name: str
    scope: str
    municipality: str | None
    rights: tuple[str, ...] = ()

    def sees(self, municipality: str | None) -> bool:
        return self.scope == "committee" and municipality is not None and municipality == self.municipality


RIGHTS = ("subject_access",)  # given only when asked for: an operator who may export a person's data


def create(
    conn: Connection,
    name: str,
    scope: str,
    municipality: str | None,
    now: datetime,
    rights: tuple[str, ...] = (),
) -> str:
    """Store a new token's hash and return the token, which is shown once and never again."""
    if not NAME_SHAPE.match(name):
        raise TokenError("a token name is 1-64 letters, digits, '.', '_', '@' or '-'")
    if (scope == "committee") != (municipality is not None):
        raise TokenError("a committee token names one municipality; other scopes name none")
    if any(right not in RIGHTS for right in rights) or (rights and scope != "ops"):
        raise TokenError(f"only an ops token takes extra rights, and only these: {', '.join(RIGHTS)}")
    secret = secrets.token_urlsafe(32)
    try:
        token_id = conn.execute(
            insert(tokens)
            .values(
                name=name,
                scope=scope,
                municipality=municipality,
                secret_hash=PasswordHasher().hash(secret),
                rights=list(rights),
                created_at=now,
            )
            .returning(tokens.c.id)
        ).scalar_one()
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists already") from None
    return f"pk_{token_id}_{secret}"


def revoke(conn: Connection, name: str, now: datetime) -> None:
    result = conn.execute(
        update(tokens).where(tokens.c.name == name, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    if result.rowcount != 1:
        raise TokenError(f"no active token named {name!r}")


class Authenticator:
    def __init__(self, store: Store, recent: Recent[Principal] | None = None) -> None:
        self.store = store
        self.hasher = PasswordHasher()
        self.verified: dict[int, bytes] = {}
        self.lock = threading.Lock()
        # Tokens checked against the store a moment ago, by the whole token's digest (see committee.recent).
        self.recent: Recent[Principal] = recent if recent is not None else Recent()

    def authenticate(self, token: str) -> Principal | None:
        match = TOKEN_SHAPE.match(token.strip())
        if not match:
            return None
        key = hashlib.sha256(match.group(0).encode()).digest()
        known = self.recent.get(key)
        if known is not None:
            return known
        found = self._check(int(match.group(1)), match.group(2))
        if found is not None:
            self.recent.put(key, found)
        return found

    def _check(self, token_id: int, secret: str) -> Principal | None:
        """The token's row from the store: not revoked, and the secret its hash was made from."""
        with self.store.read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).one_or_none()
        if row is None or row.revoked_at is not None:
            return None
        digest = hashlib.sha256(f"{row.secret_hash}\0{secret}".encode()).digest()
        with self.lock:
            known = self.verified.get(token_id)
        if known is None or not hmac.compare_digest(known, digest):
            try:
                self.hasher.verify(row.secret_hash, secret)
            except (VerificationError, InvalidHashError):
                return None
            with self.lock:
                self.verified[token_id] = digest
        return Principal(row.name, row.scope, row.municipality, tuple(row.rights or ()))
