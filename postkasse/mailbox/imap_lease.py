"""Who reads an IMAP account: one daemon at a time, by a lease in the store.

Two daemons emptying the same folder could both store a message before either has moved it: the
Message-ID rule keeps it one referral, but the sender would get two receipts. So a daemon reads an
account only while it holds the account's lease, a row it renews well before it runs out; the others
stand by and take the lease over once it has run out (a daemon that was killed) or was given back (a
daemon that stopped). Each daemon judges expiry by its own clock, so daemons sharing an account need
their clocks kept in step (NTP); a skew of seconds is nothing against a lease of minutes.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, or_, select, update

from postkasse.store import Store, insert_on_conflict
from postkasse.store.schema import imap_leases


def holder_name() -> str:
    """This daemon, as the lease names it: host, process and a token that tells a restarted pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Holding:
    """The outcome of one attempt: whether we hold the lease, and who does."""

    held: bool
    holder: str
    expires_at: datetime


class Lease:
    """One account's lease, as held (or wanted) by one daemon."""

    def __init__(self, store: Store, account: str, holder: str, seconds: float) -> None:
        self.store = store
        self.account = account
        self.holder = holder
        self.duration = timedelta(seconds=seconds)

    def take(self, now: datetime) -> Holding:
        """Take the lease, or renew it if ours: one atomic upsert that changes the row only when it is
        ours or has run out, so of two daemons trying at once exactly one gets it."""
        table = imap_leases
        with self.store.write() as conn:
            stmt = insert_on_conflict(conn, table).values(
                account=self.account, holder=self.holder, taken_at=now, expires_at=now + self.duration
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[table.c.account],
                    set_={
                        "holder": stmt.excluded.holder,
                        "taken_at": case(
                            (table.c.holder == self.holder, table.c.taken_at), else_=stmt.excluded.taken_at
                        ),
                        "expires_at": stmt.excluded.expires_at,
                    },
                    where=or_(table.c.holder == self.holder, table.c.expires_at <= now),
                )
            )
            holder, expires_at = conn.execute(
                select(table.c.holder, table.c.expires_at).where(table.c.account == self.account)
            ).one()
        return Holding(holder == self.holder, holder, expires_at)

    def give_back(self, now: datetime) -> None:
        """End our lease now, so a standing-by daemon takes over at once instead of when it runs out."""
        with self.store.write() as conn:
            conn.execute(
                update(imap_leases)
                .where(imap_leases.c.account == self.account, imap_leases.c.holder == self.holder)
                .values(expires_at=now)
            )
