"""What "the content" of a referral and of a message is, and removing it.

Content: the bytes received, parsed headers, the child's CPR, name and the subject, the routing sentences
(they name the address), thread texts, notes, meetings and their plans, explanations, transfer notes, and
the bodies of mail and MedCom answers about it. Kept: ids, references, municipality, times, states,
outcome and reason codes, sender kind, sizes and hashes, so statistics and the audit read as before.

Every change is guarded by `purged_at IS NULL`, so two purges at once remove each item once, and the
counts they report add up to what was removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, and_, delete, exists, select, update

from postkasse.store.schema import (
    medcom_answers,
    meetings,
    message_headers,
    messages,
    outgoing_mail,
    pathway_explanations,
    pathways,
    referral_events,
    referrals,
    thread,
    transfers,
)

CHUNK = 500


def _chunks(ids: Sequence[int]) -> list[list[int]]:
    return [list(ids[start : start + CHUNK]) for start in range(0, len(ids), CHUNK)]


def erase_referrals(conn: Connection, ids: Sequence[int], now: datetime) -> list[int]:
    """Remove the content of these referrals; returns those this call erased (not already erased)."""
    erased: list[int] = []
    for chunk in _chunks(ids):
        erased += conn.execute(
            update(referrals)
            .where(referrals.c.id.in_(chunk), referrals.c.purged_at.is_(None))
            .values(cpr=None, patient_name=None, subject=None, explanation=[], purged_at=now, updated_at=now)
            .returning(referrals.c.id)
        ).scalars()
    for chunk in _chunks(erased):
        conn.execute(update(thread).where(thread.c.referral_id.in_(chunk)).values(text=""))
        conn.execute(
            update(referral_events)
            .where(
                referral_events.c.referral_id.in_(chunk),
                referral_events.c.action.in_(("note", "exception", "transfer", "routed", "triaged")),
            )
            .values(detail={})
        )
        conn.execute(
            update(meetings)
            .where(meetings.c.referral_id.in_(chunk))
            .values(place="", participants=[], responsible={}, plan={})
        )
        conn.execute(update(pathways).where(pathways.c.referral_id.in_(chunk)).values(responsible={}))
        conn.execute(
            update(pathway_explanations).where(pathway_explanations.c.referral_id.in_(chunk)).values(text="")
        )
        conn.execute(update(transfers).where(transfers.c.referral_id.in_(chunk)).values(note=""))
        conn.execute(update(outgoing_mail).where(outgoing_mail.c.referral_id.in_(chunk)).values(raw=None))
        conn.execute(update(medcom_answers).where(medcom_answers.c.referral_id.in_(chunk)).values(body=b""))
        replies = select(thread.c.message_id).where(
            thread.c.referral_id.in_(chunk), thread.c.message_id.is_not(None)
        )
        own = select(referrals.c.message_id).where(referrals.c.id.in_(chunk))
        erase_messages(conn, list(conn.execute(replies).scalars()) + list(conn.execute(own).scalars()), now)
    return erased


def erase_messages(conn: Connection, ids: Sequence[int], now: datetime) -> list[int]:
    """Remove the bytes and parsed headers of these messages, unless a referral not yet erased still
    needs one (a MedCom document can carry several letters); returns those erased by this call."""
    erased: list[int] = []
    still_needed = exists().where(referrals.c.message_id == messages.c.id, referrals.c.purged_at.is_(None))
    for chunk in _chunks(sorted(set(ids))):
        erased += conn.execute(
            update(messages)
            .where(messages.c.id.in_(chunk), messages.c.purged_at.is_(None), ~still_needed)
            .values(raw=b"", purged_at=now)
            .returning(messages.c.id)
        ).scalars()
    for chunk in _chunks(erased):
        conn.execute(delete(message_headers).where(message_headers.c.message_id.in_(chunk)))
        conn.execute(
            update(outgoing_mail)
            .where(and_(outgoing_mail.c.answers_message.in_(chunk), outgoing_mail.c.raw.is_not(None)))
            .values(raw=None)
        )
        conn.execute(update(medcom_answers).where(medcom_answers.c.message_id.in_(chunk)).values(body=b""))
    return erased
