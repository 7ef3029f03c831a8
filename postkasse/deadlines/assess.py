"""Where every open referral stands against its deadlines at one moment: read-only, for the alert
check, `postkasse deadlines report` and the metrics alike.

Only referrals already past a warning are read, through the indexes on (state, queued_at) and
(state, warn_at), so the cost follows the number of late referrals, not the size of the archive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from postkasse.clock import COPENHAGEN
from postkasse.deadlines.rules import RuleBook
from postkasse.reference import reference
from postkasse.store.schema import pathways, referrals

OPEN_STATES = ("triage", "new", "pulled")
PATHWAY_DEADLINES = ("startup_meeting", "follow_up_meeting")


def level(now: datetime, warn_at: datetime, due_at: datetime) -> str | None:
    if now >= due_at:
        return "breach"
    if now >= warn_at:
        return "warning"
    return None


@dataclass(frozen=True)
class Finding:
    """One referral past the warning (or the breach) of one deadline."""

    referral_id: int
    municipality: str | None  # None while in triage: operations' concern
    deadline: str  # emptying | handling | startup_meeting | follow_up_meeting
    level: str  # warning | breach (ok: not yet warned, from `upcoming`)
    due: datetime
    cycle: int = 0  # a pathway's meetings held so far: each round of meetings is its own deadline

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.referral_id,
            "reference": reference(self.referral_id),
            "municipality": self.municipality,
            "deadline": self.deadline,
            "level": self.level,
            "due": self.due.astimezone(COPENHAGEN).isoformat(),
        }


@dataclass(frozen=True)
class Emptying:
    """A municipality's queue: how many wait unpulled, since when, and what that means today."""

    level: str  # ok | warning | breach
    waiting: int
    oldest_since: datetime | None
    due: datetime | None  # when the oldest waiting referral breaches the daily emptying

    def as_json(self) -> dict[str, Any]:
        return {
            "emptying": self.level,
            "waiting": self.waiting,
            "oldest_waiting_since": _iso(self.oldest_since),
            "due": _iso(self.due),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(COPENHAGEN).isoformat() if moment else None


@dataclass(frozen=True)
class Assessment:
    at: datetime
    municipalities: dict[str, Emptying]
    findings: list[Finding]

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.astimezone(COPENHAGEN).isoformat(),
            "municipalities": {code: e.as_json() for code, e in sorted(self.municipalities.items())},
            "referrals": [f.as_json() for f in self.findings],
        }


def assess(conn: Connection, now: datetime, rules: RuleBook, codes: Iterable[str] = ()) -> Assessment:
    """Every municipality in `codes` (and any with referrals waiting) and every finding, as of `now`."""
    found = findings(conn, now, rules)
    municipalities = {code: Emptying("ok", 0, None, None) for code in codes}
    for code, waiting, oldest in conn.execute(
        select(referrals.c.municipality, func.count(), func.min(referrals.c.queued_at))
        .where(referrals.c.state == "new")
        .group_by(referrals.c.municipality)
    ):
        municipalities[code] = emptying_of(now, rules, code, waiting, oldest)
    return Assessment(now, municipalities, found)


def emptying(conn: Connection, code: str, now: datetime, rules: RuleBook) -> Emptying:
    """One municipality's queue today, as `assess` sees it, for the page its committee works in."""
    return emptying_of(now, rules, code, *waiting(conn, code))


def waiting(conn: Connection, code: str) -> tuple[int, datetime | None]:
    """How many of the municipality's referrals wait `new`, and when the oldest of them was queued."""
    count, oldest = conn.execute(
        select(func.count(), func.min(referrals.c.queued_at)).where(
            referrals.c.municipality == code, referrals.c.state == "new"
        )
    ).one()
    return int(count), oldest


def emptying_of(now: datetime, rules: RuleBook, code: str, waiting: int, oldest: datetime | None) -> Emptying:
    if not waiting or oldest is None:
        return Emptying("ok", 0, None, None)
    own = rules.for_municipality(code)
    due = oldest + own.emptying_breach
    return Emptying(level(now, oldest + own.emptying_warning, due) or "ok", waiting, oldest, due)


def upcoming(conn: Connection, code: str, now: datetime, until: datetime) -> list[Finding]:
    """The municipality's open referrals and pathways that fall due by `until`, not yet warned of."""
    meetings = [
        Finding(row.referral_id, code, row.deadline, "ok", row.due_at, row.meetings_held)
        for row in conn.execute(
            select(
                pathways.c.referral_id, pathways.c.deadline, pathways.c.due_at, pathways.c.meetings_held
            ).where(
                pathways.c.municipality == code,
                pathways.c.state == "active",
                pathways.c.warn_at > now,
                pathways.c.due_at <= until,
            )
        )
    ]
    handling = [
        Finding(row.id, code, "handling", "ok", row.due_at)
        for row in conn.execute(
            select(referrals.c.id, referrals.c.due_at)
            .where(
                referrals.c.municipality == code,
                referrals.c.state.in_(OPEN_STATES),
                referrals.c.exception.is_(None),
                referrals.c.warn_at > now,
                referrals.c.due_at <= until,
            )
            .order_by(referrals.c.due_at, referrals.c.id)
        )
    ]
    return sorted(meetings + handling, key=lambda f: (f.due, f.referral_id))


def findings(conn: Connection, now: datetime, rules: RuleBook) -> list[Finding]:
    """Every referral past a warning or a breach as of `now`, soonest due first."""
    findings: list[Finding] = []
    earliest = now - rules.shortest_emptying_warning
    for row in conn.execute(
        select(referrals.c.id, referrals.c.municipality, referrals.c.queued_at).where(
            referrals.c.state == "new", referrals.c.queued_at <= earliest
        )
    ):
        own = rules.for_municipality(row.municipality)
        due = row.queued_at + own.emptying_breach
        found = level(now, row.queued_at + own.emptying_warning, due)
        if found:
            findings.append(Finding(row.id, row.municipality, "emptying", found, due))
    for late in conn.execute(
        select(referrals.c.id, referrals.c.municipality, referrals.c.warn_at, referrals.c.due_at).where(
            referrals.c.state.in_(OPEN_STATES), referrals.c.warn_at <= now, referrals.c.exception.is_(None)
        )
    ):
        found = level(now, late.warn_at, late.due_at) or ""
        findings.append(Finding(late.id, late.municipality, "handling", found, late.due_at))
    for meeting in conn.execute(
        select(
            pathways.c.referral_id,
            pathways.c.municipality,
            pathways.c.deadline,
            pathways.c.warn_at,
            pathways.c.due_at,
            pathways.c.meetings_held,
        ).where(pathways.c.state == "active", pathways.c.warn_at <= now)
    ):
        found = level(now, meeting.warn_at, meeting.due_at) or ""
        findings.append(
            Finding(
                meeting.referral_id,
                meeting.municipality,
                meeting.deadline,
                found,
                meeting.due_at,
                meeting.meetings_held,
            )
        )
    findings.sort(key=lambda f: (f.due, f.referral_id, f.deadline))
    return findings
