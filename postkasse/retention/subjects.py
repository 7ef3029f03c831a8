"""A person's data on request (GDPR art. 15 and 17): everything postkasse holds about one CPR number,
exported for an authority or the family, or erased at once (a referral sent to the wrong mailbox).

Both are operators' acts with a name and a reason, audited like any read; neither logs the CPR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from postkasse.committee import audit as audit_rows
from postkasse.committee import pathways, views
from postkasse.reference import reference
from postkasse.retention import content
from postkasse.routing.municipalities import Municipalities
from postkasse.store.schema import audit, messages, referral_events, referrals, thread


@dataclass(frozen=True)
class Subject:
    """One person's referrals, as they are kept."""

    referral_ids: list[int]


def find(conn: Connection, cpr: str) -> Subject:
    ids = conn.execute(
        select(referrals.c.id).where(referrals.c.cpr == cpr).order_by(referrals.c.id)
    ).scalars()
    return Subject(list(ids))


def records(conn: Connection, cpr: str, municipalities: Municipalities) -> list[dict[str, Any]]:
    """Everything kept about the person, referral by referral: the view, the plan, the events, the read
    log, and the messages as received (`.eml` names and bytes)."""
    found = []
    for referral_id in find(conn, cpr).referral_ids:
        shown = views.detail(conn, referral_id)
        assert shown is not None
        plan = pathways.plan(conn, referral_id, municipalities)
        found.append(
            {
                **shown,
                "plan": plan.model_dump(mode="json") if plan else None,
                "events": _events(conn, referral_id),
                "audit": _audit(conn, referral_id),
                "messages": _messages(conn, referral_id),
            }
        )
    return found


def audited(conn: Connection, found: list[dict[str, Any]], operator: str, reason: str, now: datetime) -> None:
    """The export is a read like any other: one audit row per referral, with who and why."""
    for record in found:
        audit_rows.record(conn, operator, "subject_export", record["id"], now, reason=reason)


def export(
    conn: Connection,
    cpr: str,
    out: Path,
    municipalities: Municipalities,
    operator: str,
    reason: str,
    now: datetime,
) -> list[str]:
    """Write each referral as `out/PK-000123/henvendelse.json` beside its messages as `.eml`; audited.
    Returns the references written."""
    found = records(conn, cpr, municipalities)
    for record in found:
        folder = out / record["reference"]
        folder.mkdir(parents=True, exist_ok=True)
        kept = {key: value for key, value in record.items() if key != "messages"}
        (folder / "henvendelse.json").write_text(
            json.dumps(kept, ensure_ascii=False, indent=2, default=str), encoding="utf-8"
        )
        for name, raw in record["messages"]:
            (folder / name).write_bytes(raw)
    audited(conn, found, f"ops:{operator}", reason, now)
    return [record["reference"] for record in found]


def erase(conn: Connection, cpr: str, operator: str, reason: str, now: datetime) -> list[str]:
    """Remove the content of every referral about the person, keeping metadata and audit; audited."""
    found = find(conn, cpr)
    for referral_id in found.referral_ids:
        audit_rows.record(conn, f"ops:{operator}", "subject_erase", referral_id, now, reason=reason)
    content.erase_referrals(conn, found.referral_ids, now)
    return [reference(i) for i in found.referral_ids]


def _events(conn: Connection, referral_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(referral_events)
        .where(referral_events.c.referral_id == referral_id)
        .order_by(referral_events.c.id)
    )
    return [{"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "detail": r.detail} for r in rows]


def _audit(conn: Connection, referral_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(select(audit).where(audit.c.referral_id == referral_id).order_by(audit.c.id))
    return [{"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "detail": r.detail} for r in rows]


def _messages(conn: Connection, referral_id: int) -> list[tuple[str, bytes]]:
    """The referral's message and the sender's replies, as received."""
    own = select(referrals.c.message_id).where(referrals.c.id == referral_id)
    replies = select(thread.c.message_id).where(
        thread.c.referral_id == referral_id, thread.c.message_id.is_not(None)
    )
    rows = conn.execute(
        select(messages.c.id, messages.c.raw)
        .where(messages.c.id.in_(own.union(replies)))
        .order_by(messages.c.id)
    ).all()
    return [(f"besked-{n}.eml", bytes(r.raw)) for n, r in enumerate(rows, start=1) if r.raw]
