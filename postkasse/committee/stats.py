"""The pilot's statistics: messages to the mailbox, returned referrals per area, joint pathways, and how
fast the committees handle what they receive. Counts only: never a CPR number, a name or a subject.

Semantics, so the numbers mean the same to everyone who reads them:

- Period: Danish calendar days (Europe/Copenhagen, with daylight saving), `start` and `end` both inclusive:
  from local midnight starting `start` up to, not including, local midnight after `end`, compared in UTC.
  A day in the period is 23, 24 or 25 hours long.
- `messages`: every message the mailbox accepted in the period (table `messages`, by `received_at`),
  including resends and replies that created no referral of their own.
- Cohort: the referrals whose `received_at` (when the mailbox accepted the message) lies in the period,
  counted with their state as it is when the statistics are read. A later decision on a referral received
  in the period changes that period's numbers, never another period's.
- Groups: one per (municipality, sender kind). A referral waiting in triage has no municipality yet; its
  group has municipality `null` in JSON and an empty code (named `triage`) in CSV. A triaged referral that
  an operator has since assigned counts under that municipality.
- Per group, and over all groups in `totals`:
  `received` the cohort; `routed` routed automatically (no triage reason); `triaged` went through manual
  sorting (a triage reason), even if since assigned; `handled` in state `handled`;
  `handled_within_deadline` handled at or before its due time (a recorded exception does not move the due
  time, so it is counted in `exceptions` instead); `exceptions` with a recorded exception (the clock
  stopped); `returned` returned referrals (tilbagevisninger) by reason code, every code of
  `RETURN_REASONS` present, 0 when none, a missing or unknown code counted as `other`; `returned_total`;
  `joint_pathways` (fælles forpligtende forløb); `forwarded`; `closed`;
  `pathways_started` joint pathways begun; `startup_meetings` and `startup_meetings_in_time` start-up
  meetings held, and of those held by their deadline; `follow_up_meetings` and
  `follow_up_meetings_in_time` likewise; `explanations` written explanations of a late follow-up;
  `transferred_out_moved`, `transferred_out_wrong_municipality`: the cohort's transfers away from the
  group's municipality, by reason; `transferred_in_moved`, `transferred_in_wrong_municipality`: to it;
  `handling_hours_p50` and `handling_hours_p90`: hours from `received_at` to `handled_at` over the handled
  referrals, nearest rank (the value at rank ceil(p * n) of the sorted list), rounded to 2 decimals,
  null when none is handled.
- Rows are sorted by municipality code, then sender kind; the triage group comes after every code.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, or_, select

from postkasse.clock import COPENHAGEN
from postkasse.committee.referrals import RETURN_REASONS
from postkasse.routing.municipalities import Municipalities
from postkasse.store.schema import (
    meetings,
    messages,
    pathway_explanations,
    pathways,
    referrals,
    transfers,
)

TRIAGE = "triage"
PERCENTILES = (50, 90)
COUNTS = (
    "received",
    "routed",
    "triaged",
    "handled",
    "handled_within_deadline",
    "exceptions",
    "returned_total",
    "joint_pathways",
    "forwarded",
    "closed",
    "pathways_started",
    "startup_meetings",
    "startup_meetings_in_time",
    "follow_up_meetings",
    "follow_up_meetings_in_time",
    "explanations",
    "transferred_out_moved",
    "transferred_out_wrong_municipality",
    "transferred_in_moved",
    "transferred_in_wrong_municipality",
)
CSV_COLUMNS = (
    "municipality",
    "municipality_name",
    "sender_kind",
    *COUNTS,
    *(f"returned_{code}" for code in RETURN_REASONS),
    "handling_hours_p50",
    "handling_hours_p90",
    "messages",
)


def period(start: date, end: date) -> tuple[datetime, datetime]:
    """The UTC moments [first, after) covering Danish days `start` to `end`, both inclusive."""
    if start > end:
        raise ValueError(f"the period's first day {start} comes after its last day {end}")
    try:
        first = datetime.combine(start, time(), tzinfo=COPENHAGEN).astimezone(UTC)
        after = datetime.combine(end + timedelta(days=1), time(), tzinfo=COPENHAGEN).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"the period {start} to {end} lies outside the dates the store can hold") from None
    return first, after


def nearest_rank(sorted_values: list[float], percent: int) -> float | None:
    """The value at rank ceil(percent/100 * n) (1-based), counted in integers so no float can move it."""
    if not sorted_values:
        return None
    rank = -(-percent * len(sorted_values) // 100)
    return sorted_values[max(rank, 1) - 1]


@dataclass
class Tally:
    """The numbers of one group, or of all of them."""

    received: int = 0
    routed: int = 0
    triaged: int = 0
    handled: int = 0
    handled_within_deadline: int = 0
    exceptions: int = 0
    returned: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RETURN_REASONS, 0))
    joint_pathways: int = 0
    forwarded: int = 0
    closed: int = 0
    pathways_started: int = 0
    startup_meetings: int = 0
    startup_meetings_in_time: int = 0
    follow_up_meetings: int = 0
    follow_up_meetings_in_time: int = 0
    explanations: int = 0
    transferred_out_moved: int = 0
    transferred_out_wrong_municipality: int = 0
    transferred_in_moved: int = 0
    transferred_in_wrong_municipality: int = 0
    handling_hours: list[float] = field(default_factory=list)

    @property
    def returned_total(self) -> int:
        return sum(self.returned.values())

    def handling_percentile(self, percent: int) -> float | None:
        found = nearest_rank(sorted(self.handling_hours), percent)
        return None if found is None else round(found, 2)

    def add(self, other: Tally) -> None:
        for name in COUNTS:
            if name != "returned_total":
                setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, count in other.returned.items():
            self.returned[code] = self.returned.get(code, 0) + count
        self.handling_hours.extend(other.handling_hours)

    def as_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "routed": self.routed,
            "triaged": self.triaged,
            "handled": self.handled,
            "handled_within_deadline": self.handled_within_deadline,
            "exceptions": self.exceptions,
            "returned": dict(self.returned),
            "returned_total": self.returned_total,
            "joint_pathways": self.joint_pathways,
            "forwarded": self.forwarded,
            "closed": self.closed,
            **{name: getattr(self, name) for name in COUNTS[COUNTS.index("pathways_started") :]},
            **{f"handling_hours_p{p}": self.handling_percentile(p) for p in PERCENTILES},
        }

    def csv_cells(self) -> dict[str, Any]:
        cells: dict[str, Any] = {name: getattr(self, name) for name in COUNTS}
        cells.update({f"returned_{code}": self.returned.get(code, 0) for code in RETURN_REASONS})
        for p in PERCENTILES:
            value = self.handling_percentile(p)
            cells[f"handling_hours_p{p}"] = "" if value is None else value
        return cells


@dataclass(frozen=True)
class Row:
    municipality: str | None
    municipality_name: str | None
    sender_kind: str
    tally: Tally


@dataclass(frozen=True)
class Statistics:
    start: date
    end: date
    messages: int
    rows: tuple[Row, ...]
    totals: Tally

    def as_json(self) -> dict[str, Any]:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "messages": self.messages,
            "totals": self.totals.as_json(),
            "rows": [
                {
                    "municipality": row.municipality,
                    "municipality_name": row.municipality_name,
                    "sender_kind": row.sender_kind,
                    **row.tally.as_json(),
                }
                for row in self.rows
            ],
        }

    def as_csv(self) -> str:
        """A header, a row per group, then the `total` row, which alone carries the period's messages."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in self.rows:
            writer.writerow(
                {
                    "municipality": row.municipality or "",
                    "municipality_name": row.municipality_name
                    or (TRIAGE if row.municipality is None else ""),
                    "sender_kind": row.sender_kind,
                    **row.tally.csv_cells(),
                    "messages": "",
                }
            )
        writer.writerow(
            {
                "municipality": "total",
                "municipality_name": "",
                "sender_kind": "",
                **self.totals.csv_cells(),
                "messages": self.messages,
            }
        )
        return out.getvalue()


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def statistics(conn: Connection, start: date, end: date, municipalities: Municipalities) -> Statistics:
    """The numbers for Danish days `start` to `end`, both inclusive; see the module for what each means."""
    first, after = period(start, end)
    r = referrals.c
    in_period = and_(r.received_at >= first, r.received_at < after)
    group = (r.municipality, r.sender_kind)
    tallies: dict[tuple[str | None, str], Tally] = {}

    for row in conn.execute(
        select(
            *group,
            func.count().label("received"),
            _count_if(r.triage_reason.is_(None)).label("routed"),
            _count_if(r.triage_reason.is_not(None)).label("triaged"),
            _count_if(r.state == "handled").label("handled"),
            _count_if(and_(r.state == "handled", r.handled_at <= r.due_at)).label("handled_within_deadline"),
            _count_if(r.exception.is_not(None)).label("exceptions"),
            _count_if(r.outcome == "joint_pathway").label("joint_pathways"),
            _count_if(r.outcome == "forwarded").label("forwarded"),
            _count_if(r.outcome == "closed").label("closed"),
        )
        .where(in_period)
        .group_by(*group)
    ):
        tallies[(row.municipality, row.sender_kind)] = Tally(
            received=int(row.received),
            routed=int(row.routed),
            triaged=int(row.triaged),
            handled=int(row.handled),
            handled_within_deadline=int(row.handled_within_deadline),
            exceptions=int(row.exceptions),
            joint_pathways=int(row.joint_pathways),
            forwarded=int(row.forwarded),
            closed=int(row.closed),
        )

    for row in conn.execute(
        select(*group, r.return_reason, func.count().label("returned"))
        .where(in_period, r.outcome == "returned")
        .group_by(*group, r.return_reason)
    ):
        code = row.return_reason if row.return_reason in RETURN_REASONS else "other"
        returned = tallies[(row.municipality, row.sender_kind)].returned
        returned[code] += int(row.returned)

    for row in conn.execute(
        select(*group, r.received_at, r.handled_at).where(
            in_period, r.state == "handled", r.handled_at.is_not(None)
        )
    ):
        hours = (row.handled_at - row.received_at).total_seconds() / 3600
        tallies[(row.municipality, row.sender_kind)].handling_hours.append(hours)

    _pathways(conn, in_period, tallies)
    _transfers(conn, in_period, tallies)
    count = conn.execute(
        select(func.count())
        .select_from(messages)
        .where(messages.c.received_at >= first, messages.c.received_at < after)
    ).scalar_one()
    rows = tuple(
        Row(code, _name(municipalities, code), kind, tally)
        for (code, kind), tally in sorted(tallies.items(), key=lambda item: _order(*item[0]))
    )
    return Statistics(start, end, int(count), rows, _total(row.tally for row in rows))


def _pathways(
    conn: Connection, in_period: ColumnElement[bool], tallies: dict[tuple[str | None, str], Tally]
) -> None:
    """The cohort's joint pathways: begun, their meetings (and those held by the deadline), explanations."""
    r = referrals.c
    group = (r.municipality, r.sender_kind)
    for row in conn.execute(
        select(*group, func.count().label("started"))
        .select_from(pathways.join(referrals, referrals.c.id == pathways.c.referral_id))
        .where(in_period)
        .group_by(*group)
    ):
        tallies[(row.municipality, row.sender_kind)].pathways_started += int(row.started)
    m = meetings.c
    in_time = or_(m.due_at.is_(None), m.held_at <= m.due_at)
    for row in conn.execute(
        select(*group, m.kind, func.count().label("held"), _count_if(in_time).label("in_time"))
        .select_from(meetings.join(referrals, referrals.c.id == m.referral_id))
        .where(in_period, m.kind.in_(("opstart", "opfoelgning")))
        .group_by(*group, m.kind)
    ):
        tally = tallies[(row.municipality, row.sender_kind)]
        if row.kind == "opstart":
            tally.startup_meetings += int(row.held)
            tally.startup_meetings_in_time += int(row.in_time)
        else:
            tally.follow_up_meetings += int(row.held)
            tally.follow_up_meetings_in_time += int(row.in_time)
    for row in conn.execute(
        select(*group, func.count().label("given"))
        .select_from(
            pathway_explanations.join(referrals, referrals.c.id == pathway_explanations.c.referral_id)
        )
        .where(in_period)
        .group_by(*group)
    ):
        tallies[(row.municipality, row.sender_kind)].explanations += int(row.given)


def _transfers(
    conn: Connection, in_period: ColumnElement[bool], tallies: dict[tuple[str | None, str], Tally]
) -> None:
    """The cohort's transfers, out of and into each municipality, by reason."""
    t = transfers.c
    for direction, column in (("out", t.from_municipality), ("in", t.to_municipality)):
        for row in conn.execute(
            select(column.label("code"), referrals.c.sender_kind, t.reason, func.count().label("moved"))
            .select_from(transfers.join(referrals, referrals.c.id == t.referral_id))
            .where(in_period, t.reason.in_(("moved", "wrong_municipality")))
            .group_by(column, referrals.c.sender_kind, t.reason)
        ):
            tally = tallies.setdefault((row.code, row.sender_kind), Tally())
            name = f"transferred_{direction}_{row.reason}"
            setattr(tally, name, getattr(tally, name) + int(row.moved))


def _name(municipalities: Municipalities, code: str | None) -> str | None:
    found = municipalities.get(code) if code is not None else None
    return found.name if found else None


def _order(code: str | None, kind: str) -> tuple[bool, str, str]:
    return (code is None, code or "", kind)


def _total(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total
