"""What was already taken from an IMAP folder, so a message left behind by a crash is moved, not stored twice.

A message is stored (with its outbox row, by the group committer) before its place in the folder is
recorded here, and both before it is moved. A crash after the store but before the record leaves only
the stored bytes: such a message is recognised by its SHA-256 among the messages taken from the same
account. After the record, it is recognised by UIDVALIDITY and UID without fetching it again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from postkasse.store import Store, insert_ignoring_duplicates
from postkasse.store.schema import imap_messages, messages

CHANNEL = "imap"
_CHUNK = 500  # values in one IN (...): well under SQLite's and PostgreSQL's limits


def peer(account: str) -> str:
    """The `peer` a message taken from `account` is stored with; it scopes the search by content."""
    return f"imap:{account}"


@dataclass(frozen=True)
class Place:
    """Where a message is: one account's folder, in one UIDVALIDITY epoch of it."""

    account: str
    folder: str
    uidvalidity: int


class Seen:
    def __init__(self, store: Store) -> None:
        self.store = store

    def known_uids(self, place: Place, uids: Collection[int]) -> set[int]:
        """Those of `uids` in `place` that were stored already."""
        with self.store.read() as conn:
            return _known(conn, place, uids)

    def stored_by_hash(self, account: str, digests: Iterable[str]) -> dict[str, int]:
        """Messages taken from `account` before, by the SHA-256 of their bytes: digest -> message id."""
        wanted = sorted(set(digests))
        found: dict[str, int] = {}
        with self.store.read() as conn:
            for start in range(0, len(wanted), _CHUNK):
                rows = conn.execute(
                    select(messages.c.sha256, messages.c.id).where(
                        messages.c.sha256.in_(wanted[start : start + _CHUNK]),
                        messages.c.channel == CHANNEL,
                        messages.c.peer == peer(account),
                    )
                )
                for digest, message_id in rows:
                    found.setdefault(digest, message_id)
        return found

    def record(self, place: Place, taken: Mapping[int, int], now: datetime) -> None:
        """Remember that each UID in `place` is stored as the message id it maps to."""
        if not taken:
            return
        with self.store.write() as conn:
            rows = [
                {
                    "account": place.account,
                    "folder": place.folder,
                    "uidvalidity": place.uidvalidity,
                    "uid": uid,
                    "message_id": message_id,
                    "recorded_at": now,
                }
                for uid, message_id in taken.items()
            ]
            conn.execute(insert_ignoring_duplicates(conn, imap_messages), rows)  # recorded before: kept


def _known(conn: Connection, place: Place, uids: Collection[int]) -> set[int]:
    found: set[int] = set()
    ordered = sorted(uids)
    for start in range(0, len(ordered), _CHUNK):
        found.update(
            conn.execute(
                select(imap_messages.c.uid).where(
                    imap_messages.c.account == place.account,
                    imap_messages.c.folder == place.folder,
                    imap_messages.c.uidvalidity == place.uidvalidity,
                    imap_messages.c.uid.in_(ordered[start : start + _CHUNK]),
                )
            ).scalars()
        )
    return found
