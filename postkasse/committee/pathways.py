"""A joint pathway ("fælles forpligtende forløb", seed 003 5.4-5.7): started by the committee's decision,
kept by its meetings, each with the action plan as it stood afterwards, and closed by the closing meeting.

One meeting deadline runs at a time and is stored with the pathway, like a referral's handling deadline:
the start-up meeting within 28 days of the decision; then the follow-up within 42 days of the start-up
meeting; then each follow-up at the date the last meeting agreed (42 days on when none was agreed). A
meeting or, for a follow-up, a written explanation clears it. `meetings_held` numbers the rounds, so each
round's alerts are raised once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from postkasse.committee.referrals import TransitionError
from postkasse.deadlines.rules import RuleBook
from postkasse.pathway.plan import ActionPlan, Meeting, Participant, PlanContent, Responsible
from postkasse.reference import reference
from postkasse.routing.municipalities import Municipalities
from postkasse.store.schema import meetings, pathway_explanations, pathways, referrals

EXPLAINABLE = ("follow_up_meeting",)  # the seed asks a written explanation of a late follow-up


def start(
    conn: Connection,
    referral_id: int,
    municipality: str,
    responsible: Responsible,
    now: datetime,
    rules: RuleBook,
) -> None:
    """The decision `joint_pathway` starts the pathway and the start-up meeting's clock."""
    own = rules.for_municipality(municipality)
    warn_at, due_at = own.meeting(now, own.startup_meeting_days)
    conn.execute(
        insert(pathways).values(
            referral_id=referral_id,
            municipality=municipality,
            state="active",
            responsible=responsible.model_dump(),
            started_at=now,
            meetings_held=0,
            deadline="startup_meeting",
            warn_at=warn_at,
            due_at=due_at,
            updated_at=now,
        )
    )


def _active(conn: Connection, referral_id: int) -> Any:
    row = conn.execute(select(pathways).where(pathways.c.referral_id == referral_id)).one_or_none()
    if row is None:
        raise TransitionError("the referral has no joint pathway: decide `joint_pathway` first")
    if row.state != "active":
        raise TransitionError("the joint pathway is closed")
    return row


def record_meeting(
    conn: Connection, referral_id: int, meeting: Meeting, actor: str, now: datetime, rules: RuleBook
) -> int:
    """Keep the meeting and its plan, and set the next meeting's clock (or close the pathway)."""
    row = _active(conn, referral_id)
    responsible = meeting.responsible.model_dump() if meeting.responsible else row.responsible
    meeting_id: int = conn.execute(
        insert(meetings)
        .values(
            referral_id=referral_id,
            kind=meeting.kind,
            held_at=meeting.held_at,
            place=meeting.place,
            participants=[p.model_dump() for p in meeting.participants],
            responsible=responsible,
            plan=meeting.plan.model_dump(mode="json"),
            due_at=row.due_at,
            recorded_by=actor,
            recorded_at=now,
        )
        .returning(meetings.c.id)
    ).scalar_one()
    own = rules.for_municipality(row.municipality)
    values: dict[str, Any] = {
        "meetings_held": row.meetings_held + 1,
        "responsible": responsible,
        "updated_at": now,
    }
    if meeting.kind == "afslutning":
        values |= {"state": "closed", "closed_at": now, "deadline": None, "warn_at": None, "due_at": None}
    else:
        if meeting.kind == "opfoelgning" and meeting.plan.next_meeting is not None:
            warn_at, due_at = own.agreed_meeting(meeting.plan.next_meeting)
        else:
            warn_at, due_at = own.meeting(meeting.held_at, own.follow_up_meeting_days)
        values |= {"deadline": "follow_up_meeting", "warn_at": warn_at, "due_at": due_at}
    conn.execute(update(pathways).where(pathways.c.referral_id == referral_id).values(**values))
    return meeting_id


def explain(conn: Connection, referral_id: int, deadline: str, text: str, actor: str, now: datetime) -> None:
    """A written explanation of why a follow-up meeting is not held in time: it stops that clock, and
    the next meeting starts the next one."""
    row = _active(conn, referral_id)
    if deadline not in EXPLAINABLE:
        raise ValueError("deadline: only a follow-up meeting (follow_up_meeting) is explained in writing")
    if row.deadline != deadline:
        raise TransitionError(f"no {deadline} deadline runs on this pathway now")
    conn.execute(
        insert(pathway_explanations).values(
            referral_id=referral_id, deadline=deadline, due_at=row.due_at, text=text, actor=actor, at=now
        )
    )
    conn.execute(
        update(pathways)
        .where(pathways.c.referral_id == referral_id)
        .values(deadline=None, warn_at=None, due_at=None, updated_at=now)
    )


def explained(conn: Connection, referral_id: int, due_at: datetime | None) -> bool:
    """Whether the deadline due at `due_at` was cleared by an explanation (for the resolved alert)."""
    return (
        conn.execute(
            select(pathway_explanations.c.id).where(
                pathway_explanations.c.referral_id == referral_id, pathway_explanations.c.due_at == due_at
            )
        ).first()
        is not None
    )


def summary(conn: Connection, referral_id: int) -> dict[str, Any] | None:
    """The pathway as the referral's view shows it: state, responsible, the running deadline, meetings."""
    row = conn.execute(select(pathways).where(pathways.c.referral_id == referral_id)).one_or_none()
    if row is None:
        return None
    explanations = conn.execute(
        select(pathway_explanations)
        .where(pathway_explanations.c.referral_id == referral_id)
        .order_by(pathway_explanations.c.id)
    ).all()
    return {
        "state": row.state,
        "responsible": row.responsible,
        "started_at": row.started_at.isoformat(),
        "closed_at": row.closed_at.isoformat() if row.closed_at else None,
        "deadline": (
            {"name": row.deadline, "warning": row.warn_at.isoformat(), "due": row.due_at.isoformat()}
            if row.deadline
            else None
        ),
        "meetings": listing(conn, referral_id),
        "explanations": [
            {
                "deadline": e.deadline,
                "due": e.due_at.isoformat() if e.due_at else None,
                "text": e.text,
                "author": e.actor,
                "at": e.at.isoformat(),
            }
            for e in explanations
        ],
    }


def listing(conn: Connection, referral_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(meetings).where(meetings.c.referral_id == referral_id).order_by(meetings.c.id)
    ).all()
    return [
        {
            "id": r.id,
            "version": number,
            "kind": r.kind,
            "held_at": r.held_at.isoformat(),
            "place": r.place,
            "participants": r.participants,
            "responsible": r.responsible,
            "plan": r.plan,
            "in_time": r.due_at is None or r.held_at <= r.due_at,
            "recorded_by": r.recorded_by,
            "recorded_at": r.recorded_at.isoformat(),
        }
        for number, r in enumerate(rows, start=1)
    ]


def plan(conn: Connection, referral_id: int, municipalities: Municipalities) -> ActionPlan | None:
    """The newest version of the action plan: the last meeting's, with the child from the referral."""
    found = listing(conn, referral_id)
    if not found:
        return None
    last = found[-1]
    child = conn.execute(
        select(referrals.c.patient_name, referrals.c.cpr, referrals.c.municipality).where(
            referrals.c.id == referral_id
        )
    ).one()
    known = municipalities.get(child.municipality or "")
    return ActionPlan(
        reference=reference(referral_id),
        municipality=child.municipality or "",
        municipality_name=known.name if known else "",
        version=last["version"],
        child_name=child.patient_name,
        cpr=child.cpr,
        meeting_kind=last["kind"],
        held_at=datetime.fromisoformat(last["held_at"]),
        place=last["place"],
        participants=[Participant.model_validate(p) for p in last["participants"]],
        responsible=Responsible.model_validate(last["responsible"]),
        content=PlanContent.model_validate(last["plan"]),
    )
