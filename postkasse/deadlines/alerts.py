"""Alerts: one mail per referral per deadline level, and one when it clears; never the same one twice.

Each alert is a row in `deadline_alerts`, unique on (referral, deadline, level, municipality alerted: a
triaged referral alerts operations, and its committee again once assigned), written with an outbox row for
the `alert` step, which composes the mails in a short transaction of its own, so the check never holds the
write lock while it writes hundreds of mails after an outage. Nor while it reads: what is late and what was
already raised are read first (`survey`, in a read transaction, the costly part when many referrals are
late), and only the difference is written (`apply`). A check that runs again, in this daemon or another,
finds the row and raises nothing; two checks racing on PostgreSQL are kept apart by a transaction-level
advisory lock, and the unique row would stop the loser anyway (an alert already resolved is resolved once:
the UPDATE only touches rows still open). Mails go to the
committee's notification address and to the operations address, with the reference and the municipality
only: no CPR, name or subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, text, update

from postkasse import kinds, logs
from postkasse.deadlines.assess import OPEN_STATES, PATHWAY_DEADLINES, Assessment, Finding, findings
from postkasse.deadlines.rules import RuleBook
from postkasse.pipeline import Follow
from postkasse.receipts import compose, outgoing
from postkasse.reference import reference
from postkasse.routing.municipalities import Municipalities
from postkasse.store import insert_ignoring_duplicates, insert_on_conflict
from postkasse.store.schema import deadline_alerts, pathway_explanations, pathways, periodic_runs, referrals

log = logs.get(__name__)

CHECK = "deadlines"
ADVISORY_LOCK = 0x706B646C  # "pkdl": one deadline check at a time across daemons on PostgreSQL
_CHUNK = 500  # ids in one IN (...)

RESOLVED_TEXT = {
    "pulled": "Henvendelsen er nu hentet fra postkassen.",
    "handled": "Henvendelsen er nu behandlet.",
    "exception": "Udvalget har registreret en undtagelse, og fristen er stoppet.",
    "reassigned": "Fristen er ikke længere overskredet.",
    "meeting": "Mødet er nu holdt og registreret.",
    "explained": "Der foreligger nu en skriftlig forklaring på, at mødet ikke er holdt.",
}


@dataclass(frozen=True)
class Survey:
    """What is late now and not yet alerted, and which open alerts no longer are: read, and compared,
    without the write lock."""

    at: datetime
    found: Assessment
    new: list[Finding]
    cleared: dict[tuple[int, str, int], list[Any]]  # (referral, deadline, cycle) -> its open alerts


@dataclass(frozen=True)
class CheckResult:
    ran: bool  # False when another daemon held the check
    raised: list[Finding]
    resolved: list[tuple[int, str]]  # (referral, deadline)
    follow: list[Follow]


class Alerter:
    def __init__(
        self, rules: RuleBook, municipalities: Municipalities, from_address: str, operations_address: str
    ) -> None:
        self.rules = rules
        self.municipalities = municipalities
        self.from_address = from_address
        self.operations_address = operations_address

    def check(self, conn: Connection, now: datetime) -> CheckResult:
        """`survey` and `apply` in the caller's write transaction."""
        return self.apply(conn, self.survey(conn, now))

    def survey(self, conn: Connection, now: datetime) -> Survey:
        """What is late as of `now`, compared with the open alerts; reads only."""
        found = Assessment(now, {}, findings(conn, now, self.rules))  # the queues' summary is not needed
        active = conn.execute(
            select(
                deadline_alerts.c.id,
                deadline_alerts.c.referral_id,
                deadline_alerts.c.deadline,
                deadline_alerts.c.level,
                deadline_alerts.c.municipality,
                deadline_alerts.c.cycle,
            ).where(deadline_alerts.c.resolved_at.is_(None), deadline_alerts.c.deadline != "urgent")
        ).all()
        known = {(a.referral_id, a.deadline, a.cycle, a.level, a.municipality) for a in active}
        current = {(f.referral_id, f.deadline, f.cycle) for f in found.findings}
        cleared: dict[tuple[int, str, int], list[Any]] = {}
        for alert in active:
            key = (alert.referral_id, alert.deadline, alert.cycle)
            if key not in current:
                cleared.setdefault(key, []).append(alert)
        return Survey(now, found, [f for f in found.findings if _key(f) not in known], cleared)

    def apply(self, conn: Connection, survey: Survey) -> CheckResult:
        """Raise what entered warning or breach, resolve what cleared; inside the caller's write.

        Only the alert rows are written here, with one `alert` step each to compose and queue the mails,
        so the write transaction stays short however many alerts a day's outage left to raise."""
        if (
            conn.dialect.name == "postgresql"
            and not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK}
            ).scalar_one()
        ):
            return CheckResult(False, [], [], [])
        now = survey.at
        new = _still_late(conn, survey.new)
        follow: list[Follow] = []
        raised: list[Finding] = []
        if new:
            rows = conn.execute(
                insert_ignoring_duplicates(conn, deadline_alerts).returning(
                    deadline_alerts.c.id, deadline_alerts.c.referral_id, deadline_alerts.c.deadline
                ),
                [
                    {
                        "referral_id": f.referral_id,
                        "deadline": f.deadline,
                        "level": f.level,
                        "municipality": f.municipality or "",
                        "due_at": f.due,
                        "cycle": f.cycle,
                        "raised_at": now,
                        "resolved_at": None,
                    }
                    for f in new
                ],
            ).all()
            inserted = {(r.referral_id, r.deadline) for r in rows}
            raised = [f for f in new if (f.referral_id, f.deadline) in inserted]
            follow += [(kinds.ALERT, r.id) for r in rows]
        resolved = self._resolve(conn, survey.cleared, now, follow)
        self._finished(conn, now)
        return CheckResult(True, raised, resolved, follow)

    def urgent(self, conn: Connection, referral_id: int, now: datetime) -> list[Follow]:
        """An urgent referral alerts its committee at once; one still in triage alerts operations."""
        row = conn.execute(
            select(referrals.c.municipality, referrals.c.state, referrals.c.urgent).where(
                referrals.c.id == referral_id
            )
        ).one_or_none()
        if row is None or not row.urgent or row.state not in ("triage", "new", "pulled"):
            return []
        inserted = conn.execute(
            insert_ignoring_duplicates(conn, deadline_alerts)
            .values(
                referral_id=referral_id,
                deadline="urgent",
                level="triage" if row.state == "triage" else "urgent",
                municipality=row.municipality or "",
                raised_at=now,
                resolved_at=now,  # nothing to clear: an urgent alert is news, not a state
            )
            .returning(deadline_alerts.c.id)
        ).scalar_one_or_none()
        if inserted is None:
            return []
        return self.mail_raised(conn, inserted, now)

    def mail_raised(self, conn: Connection, alert_id: int, now: datetime) -> list[Follow]:
        alert = conn.execute(select(deadline_alerts).where(deadline_alerts.c.id == alert_id)).one()
        log.info(
            "alert raised",
            referral=reference(alert.referral_id),
            municipality=alert.municipality or None,
            deadline=alert.deadline,
            level=alert.level,
        )
        return self._mail(
            conn, alert.referral_id, alert.municipality, alert.deadline, alert.level, alert.due_at, None, now
        )

    def mail_resolved(self, conn: Connection, alert_id: int, now: datetime) -> list[Follow]:
        alert = conn.execute(select(deadline_alerts).where(deadline_alerts.c.id == alert_id)).one()
        state = conn.execute(
            select(referrals.c.state, referrals.c.exception, referrals.c.municipality).where(
                referrals.c.id == alert.referral_id
            )
        ).one()
        if alert.deadline in PATHWAY_DEADLINES:
            explained = conn.execute(
                select(pathway_explanations.c.id).where(
                    pathway_explanations.c.referral_id == alert.referral_id,
                    pathway_explanations.c.due_at == alert.due_at,
                )
            ).first()
            why = "explained" if explained else "meeting"
        else:
            why = "exception" if state.exception is not None else state.state
        log.info("alert resolved", referral=reference(alert.referral_id), deadline=alert.deadline, why=why)
        return self._mail(
            conn,
            alert.referral_id,
            state.municipality,
            alert.deadline,
            alert.level,
            alert.due_at,
            RESOLVED_TEXT.get(why, RESOLVED_TEXT["reassigned"]),
            now,
        )

    def _resolve(
        self,
        conn: Connection,
        cleared: dict[tuple[int, str, int], list[Any]],
        now: datetime,
        follow: list[Follow],
    ) -> list[tuple[int, str]]:
        ids = sorted(a.id for alerts in cleared.values() for a in alerts)
        changed: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            changed.update(
                conn.execute(
                    update(deadline_alerts)
                    .where(
                        deadline_alerts.c.id.in_(ids[start : start + _CHUNK]),
                        deadline_alerts.c.resolved_at.is_(None),
                    )
                    .values(resolved_at=now)
                    .returning(deadline_alerts.c.id)
                ).scalars()
            )
        done: list[tuple[int, str]] = []
        for key, alerts in cleared.items():
            if any(a.id in changed for a in alerts):
                last = max(alerts, key=lambda a: (a.level == "breach", a.id))
                follow.append((kinds.ALERT_RESOLVED, last.id))
                done.append(key[:2])
        return done

    def _mail(
        self,
        conn: Connection,
        referral_id: int,
        municipality: str | None,
        deadline: str,
        level: str,
        due: datetime | None,
        resolved: str | None,
        now: datetime,
    ) -> list[Follow]:
        follow: list[Follow] = []
        known = self.municipalities.get(municipality or "")
        where = known.name if known else "manuel sortering (ingen kommune endnu)"
        recipients = [
            a for a in (known.notification_address if known else None, self.operations_address) if a
        ]
        if not recipients:
            log.warning("alert has no recipient: set deadlines.operations_address", deadline=deadline)
        for recipient in dict.fromkeys(recipients):
            mail = compose.alert(
                from_address=self.from_address,
                to=recipient,
                reference=reference(referral_id),
                where=where,
                deadline=deadline,
                level=level,
                due=due,
                resolved=resolved,
            )
            outgoing_id = outgoing.add(
                conn,
                "alert",
                mail,
                recipient=recipient,
                referral_id=referral_id,
                answers_message=None,
                now=now,
            )
            follow.append((kinds.SEND, outgoing_id))
        return follow

    def _finished(self, conn: Connection, now: datetime) -> None:
        stmt = insert_on_conflict(conn, periodic_runs).values(name=CHECK, finished_at=now)
        conn.execute(
            stmt.on_conflict_do_update(index_elements=[periodic_runs.c.name], set_={"finished_at": now})
        )


def _still_late(conn: Connection, new: list[Finding]) -> list[Finding]:
    """Those of `new` whose referral still waits where the survey found it: one pulled, handled, moved or
    excepted since then raises nothing (the survey is read before the write transaction begins)."""
    now_open: dict[int, Any] = {}
    meeting_open: dict[int, Any] = {}
    ids = sorted({f.referral_id for f in new})
    for start in range(0, len(ids), _CHUNK):
        for row in conn.execute(
            select(referrals.c.id, referrals.c.state, referrals.c.municipality, referrals.c.exception).where(
                referrals.c.id.in_(ids[start : start + _CHUNK])
            )
        ):
            now_open[row.id] = row
        for row in conn.execute(
            select(pathways.c.referral_id, pathways.c.state, pathways.c.deadline, pathways.c.due_at).where(
                pathways.c.referral_id.in_(ids[start : start + _CHUNK])
            )
        ):
            meeting_open[row.referral_id] = row
    return [
        f
        for f in new
        if (
            _meeting_waits(meeting_open.get(f.referral_id), f)
            if f.deadline in PATHWAY_DEADLINES
            else _waits(now_open.get(f.referral_id), f)
        )
    ]


def _meeting_waits(row: Any, finding: Finding) -> bool:
    return (
        row is not None
        and row.state == "active"
        and (row.deadline, row.due_at)
        == (
            finding.deadline,
            finding.due,
        )
    )


def _waits(row: Any, finding: Finding) -> bool:
    if row is None or row.municipality != finding.municipality:
        return False
    if finding.deadline == "emptying":
        return bool(row.state == "new")
    return row.state in OPEN_STATES and row.exception is None


def _key(finding: Finding) -> tuple[int, str, int, str, str]:
    return (finding.referral_id, finding.deadline, finding.cycle, finding.level, finding.municipality or "")


def last_check(conn: Connection) -> datetime | None:
    finished: datetime | None = conn.execute(
        select(periodic_runs.c.finished_at).where(periodic_runs.c.name == CHECK)
    ).scalar_one_or_none()
    return finished
