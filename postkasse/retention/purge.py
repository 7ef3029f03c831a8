"""The purge: what has outlived its purpose leaves the store, by the rules of `[retention]`.

- A referral's content `content_days` after it was handled, never while its pathway is active or it
  waits (new, pulled, triage): a transferred referral waits again in its new municipality.
- A message that never became a referral or a reply (a duplicate, a refused MedCom document) after
  `unrouted_days`.
- Outgoing mail bodies and MedCom answers `outgoing_days` after they were sent, failed or created.
- Audit rows after `audit_days`; IMAP and MedCom duplicate bookkeeping after `dedup_days`.

`survey` reads what is due (and is all a dry run does); `apply` removes it in one write transaction,
each item guarded so that two daemons purging at once remove it once. On PostgreSQL a transaction-level
advisory lock keeps a second purge out altogether. SQLite overwrites what it frees (`secure_delete`) and
its write-ahead log is truncated afterwards, so removed text does not linger in the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Table, delete, exists, func, select, text, update

from postkasse.config import RetentionSettings
from postkasse.retention import content
from postkasse.store import insert_on_conflict
from postkasse.store.schema import (
    audit,
    imap_messages,
    medcom_answers,
    medcom_first_letters,
    medcom_letters,
    messages,
    outgoing_mail,
    pathways,
    periodic_runs,
    referrals,
    thread,
)

RUN = "purge"
ADVISORY_LOCK = 0x706B7072  # "pkpr"
KINDS = (
    "referrals",
    "messages",
    "outgoing_mail",
    "medcom_answers",
    "audit",
    "imap_messages",
    "medcom_first_letters",
)


@dataclass(frozen=True)
class Policy:
    content: timedelta = timedelta(days=30)
    unrouted: timedelta = timedelta(days=30)
    outgoing: timedelta = timedelta(days=14)
    audit: timedelta = timedelta(days=1825)
    dedup: timedelta = timedelta(days=60)

    @classmethod
    def of(cls, settings: RetentionSettings) -> Policy:
        return cls(
            timedelta(days=settings.content_days),
            timedelta(days=settings.unrouted_days),
            timedelta(days=settings.outgoing_days),
            timedelta(days=settings.audit_days),
            timedelta(days=settings.dedup_days),
        )


@dataclass
class Survey:
    at: datetime
    referrals: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def survey(conn: Connection, now: datetime, policy: Policy) -> Survey:
    """What is due for removal as of `now`: ids for the content, counts for the rest."""
    active_pathway = exists().where(pathways.c.referral_id == referrals.c.id, pathways.c.state == "active")
    due_referrals = list(
        conn.execute(
            select(referrals.c.id).where(
                referrals.c.purged_at.is_(None),
                referrals.c.state == "handled",
                referrals.c.handled_at <= now - policy.content,
                ~active_pathway,
            )
        ).scalars()
    )
    became_referral = exists().where(referrals.c.message_id == messages.c.id)
    is_reply = exists().where(thread.c.message_id == messages.c.id)
    unrouted = list(
        conn.execute(
            select(messages.c.id).where(
                messages.c.purged_at.is_(None),
                messages.c.received_at <= now - policy.unrouted,
                ~became_referral,
                ~is_reply,
            )
        ).scalars()
    )
    found = Survey(now, due_referrals, unrouted)
    found.counts = {
        "referrals": len(due_referrals),
        "messages": len(unrouted),
        "outgoing_mail": _count(conn, outgoing_mail, _old_mail(now, policy)),
        "medcom_answers": _count(conn, medcom_answers, _old_answers(now, policy)),
        "audit": _count(conn, audit, audit.c.at <= now - policy.audit),
        "imap_messages": _count(conn, imap_messages, imap_messages.c.recorded_at <= now - policy.dedup),
        "medcom_first_letters": _count(conn, medcom_first_letters, _old_firsts(now, policy)),
    }
    return found


def apply(conn: Connection, found: Survey, policy: Policy) -> dict[str, int] | None:
    """Remove what `survey` found, in the caller's write transaction; None when another purge runs."""
    if (
        conn.dialect.name == "postgresql"
        and not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK}
        ).scalar_one()
    ):
        return None
    now = found.at
    removed = dict.fromkeys(KINDS, 0)
    removed["referrals"] = len(content.erase_referrals(conn, found.referrals, now))
    removed["messages"] = len(content.erase_messages(conn, found.messages, now))
    removed["outgoing_mail"] = conn.execute(
        update(outgoing_mail).where(_old_mail(now, policy)).values(raw=None)
    ).rowcount
    removed["medcom_answers"] = conn.execute(
        update(medcom_answers).where(_old_answers(now, policy)).values(body=b"")
    ).rowcount
    removed["audit"] = conn.execute(delete(audit).where(audit.c.at <= now - policy.audit)).rowcount
    removed["imap_messages"] = conn.execute(
        delete(imap_messages).where(imap_messages.c.recorded_at <= now - policy.dedup)
    ).rowcount
    removed["medcom_first_letters"] = conn.execute(
        delete(medcom_first_letters).where(_old_firsts(now, policy))
    ).rowcount
    stmt = insert_on_conflict(conn, periodic_runs).values(name=RUN, finished_at=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=[periodic_runs.c.name], set_={"finished_at": now}))
    return removed


def _count(conn: Connection, table: Table, condition: ColumnElement[bool]) -> int:
    counted: int = conn.execute(select(func.count()).select_from(table).where(condition)).scalar_one()
    return counted


def _old_mail(now: datetime, policy: Policy) -> ColumnElement[bool]:
    return (
        outgoing_mail.c.raw.is_not(None)
        & outgoing_mail.c.state.in_(("sent", "failed", "suppressed"))
        & (func.coalesce(outgoing_mail.c.sent_at, outgoing_mail.c.created_at) <= now - policy.outgoing)
    )


def _old_answers(now: datetime, policy: Policy) -> ColumnElement[bool]:
    return (medcom_answers.c.created_at <= now - policy.outgoing) & (func.length(medcom_answers.c.body) > 0)


def _old_firsts(now: datetime, policy: Policy) -> ColumnElement[bool]:
    return medcom_first_letters.c.first.in_(
        select(medcom_letters.c.id).where(medcom_letters.c.created_at <= now - policy.dedup)
    )


def last_run(conn: Connection) -> datetime | None:
    finished: datetime | None = conn.execute(
        select(periodic_runs.c.finished_at).where(periodic_runs.c.name == RUN)
    ).scalar_one_or_none()
    return finished


def oldest_content(conn: Connection) -> datetime | None:
    """When the oldest message whose content is still kept arrived."""
    oldest: datetime | None = conn.execute(
        select(func.min(messages.c.received_at)).where(messages.c.purged_at.is_(None))
    ).scalar_one()
    return oldest
