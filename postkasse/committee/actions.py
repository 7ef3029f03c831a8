"""What a committee or an operator can do, once: the JSON API and the web inbox both call these.

Each action checks who may see the referral (another municipality's answers `not_found`, so existence is
not revealed), makes its change with the change's audit row in one transaction, and hands the pipeline
what follows (a mail to send, an urgent alert). A read is audited before it is shown.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Connection, select

from postkasse import kinds
from postkasse.clock import Clock
from postkasse.committee import (
    audit,
    correspondence,
    forwarding,
    pathways,
    referrals,
    transfers,
    triage,
    views,
)
from postkasse.committee.stats import Statistics, statistics
from postkasse.committee.tokens import Principal
from postkasse.deadlines import assess
from postkasse.deadlines.rules import RuleBook
from postkasse.mailbox import content
from postkasse.pathway import exports
from postkasse.pathway.plan import ActionPlan, Meeting, Responsible
from postkasse.pipeline import Next, Pipeline
from postkasse.receipts import outgoing
from postkasse.reference import reference
from postkasse.retention import subjects
from postkasse.routing.cpr import Cpr
from postkasse.routing.municipalities import Municipalities, Unit
from postkasse.store import Store
from postkasse.store.schema import messages
from postkasse.store.schema import referrals as referrals_table

T = TypeVar("T")

MAX_ID = 2**63 - 1  # the store's ids are 64-bit; anything larger names nothing
QueueState = Literal["new", "pulled", "handled"]
ReturnReason = Literal[
    "missing_information", "ppr_not_involved", "not_target_group", "wrong_municipality", "other"
]


PAGE_SIZE = 50
DUE_AHEAD = timedelta(days=7)


class Refused(Exception):
    """An action that cannot be done as asked: a stable code, a sentence, and the HTTP status it maps to."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


NOT_FOUND = Refused(404, "not_found", "No such referral.")
OPS_ONLY = Refused(403, "forbidden", "Only operations may do this.")


class Decision(BaseModel):
    outcome: Literal["forwarded", "returned", "joint_pathway", "closed"]
    unit: str | None = Field(None, max_length=200, description="the unit forwarded to; needed for forwarded")
    reason: str | None = Field(None, max_length=2000, description="why it is returned; needed for returned")
    reason_code: ReturnReason | None = Field(
        None, description="returned: the reason as counted in the statistics; `other` when not given"
    )
    note: str | None = Field(None, max_length=4000)
    responsible: Responsible | None = Field(
        None, description="joint_pathway: the responsible professional (indsatsansvarlig); needed for it"
    )

    @model_validator(mode="after")
    def _detail(self) -> Decision:
        if self.outcome == "forwarded" and not (self.unit and self.unit.strip()):
            raise ValueError("unit: forwarding names the unit that takes the case")
        if self.outcome == "returned" and not (self.reason and self.reason.strip()):
            raise ValueError("reason: returning a referral (tilbagevisning) needs the reason")
        if self.outcome == "joint_pathway" and self.responsible is None:
            raise ValueError(
                "responsible: a joint pathway names its responsible professional (indsatsansvarlig): "
                "name, title and telephone"
            )
        return self


class Transfer(BaseModel):
    municipality: str = Field(..., pattern=r"^\d{4}$", description="the municipality that takes it over")
    reason: Literal["moved", "wrong_municipality"] = Field(
        ..., description="moved: the child has moved; wrong_municipality: it belonged elsewhere"
    )
    note: str = Field(..., min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _note(self) -> Transfer:
        if not self.note.strip():
            raise ValueError("note: say why, for the receiving committee")
        return self


class Explanation(BaseModel):
    deadline: Literal["follow_up_meeting"] = Field(
        ..., description="the meeting deadline explained; the seed asks it of a late follow-up meeting"
    )
    text: str = Field(..., min_length=1, max_length=8000)

    @model_validator(mode="after")
    def _text(self) -> Explanation:
        if not self.text.strip():
            raise ValueError("text: the explanation is empty")
        return self


class DeadlineException(BaseModel):
    reason: Literal["authority_case", "medical_reason"] = Field(
        ..., description="authority_case: sag af myndighedskarakter; medical_reason: lægefagligt hensyn"
    )
    note: str = Field(..., min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _note(self) -> DeadlineException:
        if not self.note.strip():
            raise ValueError("note: an exception needs a note saying why")
        return self


class MessageToSender(BaseModel):
    text: str = Field(..., min_length=1, max_length=20000)

    @model_validator(mode="after")
    def _text(self) -> MessageToSender:
        if not self.text.strip():
            raise ValueError("text: the message is empty")
        return self


class InternalNote(BaseModel):
    text: str = Field(..., min_length=1, max_length=20000)

    @model_validator(mode="after")
    def _text(self) -> InternalNote:
        if not self.text.strip():
            raise ValueError("text: the note is empty")
        return self


class Assignment(BaseModel):
    municipality: str = Field(..., pattern=r"^\d{4}$")
    note: str = Field(..., min_length=1, max_length=2000)


@dataclass(frozen=True)
class QueuePage:
    """A page of a municipality's queue for people: urgent and overdue first, and how today's emptying
    stands."""

    code: str
    state: QueueState
    lines: list[views.QueueLine]
    total: int
    page: int
    pages: int
    flag: str | None
    emptying: assess.Emptying


@dataclass(frozen=True)
class Due:
    """What a committee must see to: past a warning or a breach, and what falls due in the coming week."""

    code: str
    at: Any
    emptying: assess.Emptying
    late: list[assess.Finding]
    upcoming: list[assess.Finding]


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Overview:
    """Every participating municipality's queue at a glance, for operations: counts and times only."""

    assessment: assess.Assessment
    triage: int
    failed_mail: int


@dataclass
class Actions:
    store: Store
    clock: Clock
    municipalities: Municipalities
    pipeline: Pipeline
    dispatch: Callable[[Sequence[Next]], None]
    from_address: str
    audit_log: audit.AuditLog
    rules: RuleBook
    medcom: correspondence.MedcomWriter | None = None

    def _visible(self, conn: Connection, who: Principal, referral_id: int) -> Any:
        row = conn.execute(
            select(referrals_table.c.id, referrals_table.c.municipality, referrals_table.c.state).where(
                referrals_table.c.id == referral_id
            )
        ).one_or_none()
        if row is None or not who.sees(row.municipality):
            raise NOT_FOUND
        return row

    def committee_name(self, code: str | None) -> str:
        municipality = self.municipalities.get(code or "")
        return (
            f"{municipality.name}s koordinationsudvalg" if municipality else "kommunens koordinationsudvalg"
        )

    def queue(
        self, who: Principal, code: str, state: QueueState, cursor: int = 0, limit: int = 50
    ) -> list[Any]:
        """The municipality's queue in one state, oldest first, a page at a time after `cursor`."""
        if not who.sees(code):
            raise Refused(404, "not_found", "No such queue.")
        with self.store.read() as conn:
            rows = conn.execute(
                select(*views.SUMMARY_COLUMNS)
                .where(
                    referrals_table.c.municipality == code,
                    referrals_table.c.state == state,
                    referrals_table.c.id > cursor,
                )
                .order_by(referrals_table.c.id)
                .limit(limit)
            ).all()
        self.audit_log.record(
            who.name, "list", None, self.clock.now(), municipality=code, state=state, count=len(rows)
        )
        return list(rows)

    def queue_page(
        self, who: Principal, code: str, state: QueueState, page: int = 1, flag: str | None = None
    ) -> QueuePage:
        """The queue as the web inbox shows it: one page, sorted for the person who must act."""
        if not who.sees(code):
            raise Refused(404, "not_found", "No such queue.")
        flag = flag if flag in views.FLAGS else None
        now = self.clock.now()
        with self.store.read() as conn:
            waiting, oldest = assess.waiting(conn, code)
            known = waiting if state == "new" and flag is None else None  # the same count: not twice
            rows, total = views.queue_lines(
                conn, code, state, now, flag, (max(page, 1) - 1) * PAGE_SIZE, PAGE_SIZE, known
            )
        emptying = assess.emptying_of(now, self.rules, code, waiting, oldest)
        self.audit_log.record(
            who.name, "list", None, now, municipality=code, state=state, count=len(rows), via="web"
        )
        own = self.rules.for_municipality(code)
        return QueuePage(
            code,
            state,
            [views.queue_line(row, now, own) for row in rows],
            total,
            max(page, 1),
            max(1, -(-total // PAGE_SIZE)),
            flag,
            emptying,
        )

    def due(self, who: Principal, code: str) -> Due:
        """The municipality's late referrals (as `deadlines report` finds them) and the week ahead."""
        if not who.sees(code):
            raise Refused(404, "not_found", "No such queue.")
        now = self.clock.now()
        with self.store.read() as conn:
            found = assess.assess(conn, now, self.rules, [code])
            coming = assess.upcoming(conn, code, now, now + DUE_AHEAD)
        self.audit_log.record(who.name, "list", None, now, municipality=code, view="due", via="web")
        late = [f for f in found.findings if f.municipality == code]
        return Due(code, now, found.municipalities[code], late, coming)

    def overview(self, who: Principal) -> Overview:
        """Operations' view of all queues: emptying state, waiting, oldest; triage and failed mail counts."""
        _ops(who)
        codes = [m.code for m in self.municipalities.by_code.values() if m.participating]
        with self.store.read() as conn:
            found = assess.assess(conn, self.clock.now(), self.rules, codes)
            waiting = len(triage.waiting(conn))
            failed = len(correspondence.failed_mail(conn))
        return Overview(found, waiting, failed)

    def attachment(self, who: Principal, referral_id: int, number: int) -> Attachment:
        """One attachment of the message, under a name safe to save; the read is audited."""
        found = content.read(self.raw(who, referral_id, action="read_attachment")).attachment(number)
        if found is None:
            raise Refused(404, "not_found", "No such attachment.")
        return Attachment(*found)

    def read(self, who: Principal, referral_id: int, via: str = "api") -> dict[str, Any]:
        """The whole referral; the read is audited before it is shown, and the sender's replies are read."""
        with self.store.read() as conn:
            found = views.detail(conn, referral_id, who.sees)
        if found is None:
            raise NOT_FOUND
        self.audit_log.record(
            who.name, "read", referral_id, self.clock.now(), **({"via": via} if via != "api" else {})
        )
        if found["unread_reply"]:
            with self.store.write() as conn:
                referrals.mark_replies_read(conn, referral_id)
        return found

    def raw(self, who: Principal, referral_id: int, action: str = "read_raw") -> bytes:
        """The message exactly as it was received."""
        with self.store.read() as conn:
            self._visible(conn, who, referral_id)
            raw: bytes = conn.execute(
                select(messages.c.raw)
                .join(referrals_table, referrals_table.c.message_id == messages.c.id)
                .where(referrals_table.c.id == referral_id)
            ).scalar_one()
        self.audit_log.record(who.name, action, referral_id, self.clock.now())
        return raw

    def pull(self, who: Principal, referral_id: int) -> dict[str, Any]:
        """The committee has taken the referral out of the mailbox: `new` -> `pulled`, and who took it."""
        now = self.clock.now()
        with self.store.write() as conn:
            self._visible(conn, who, referral_id)
            _change(lambda: referrals.pull(conn, referral_id, now, who.name))
            audit.record(conn, who.name, "pull", referral_id, now)
            found = views.detail(conn, referral_id)
        assert found is not None
        return found

    def units(self, who: Principal, code: str) -> list[dict[str, Any]]:
        """The units a committee can forward to, from municipalities.toml."""
        known = self.municipalities.get(code)
        if known is None or not who.sees(code):
            raise Refused(404, "not_found", "No such municipality.")
        return [
            {"id": u.id, "name": u.name, "kind": u.kind, "can_receive": u.address is not None}
            for u in known.units
        ]

    def _unit(self, who: Principal, referral_id: int, decision: Decision) -> tuple[Unit | None, bytes | None]:
        """The unit a forward names, and the plan's PDF to send it; checked before anything is written."""
        if decision.outcome != "forwarded":
            return None, None
        with self.store.read() as conn:
            row = self._visible(conn, who, referral_id)
            plan = pathways.plan(conn, referral_id, self.municipalities)
        known = self.municipalities.get(row.municipality or "")
        if known is None or not known.units:
            return None, None  # no units configured: the unit is recorded as a word, as before
        unit = known.unit(decision.unit or "")
        if unit is None:
            raise Refused(
                422,
                "invalid_request",
                f"unit: {row.municipality} has no unit with that id; "
                f"GET /api/v1/municipalities/{row.municipality}/units lists them.",
            )
        return unit, exports.pdf(plan) if plan is not None and unit.address else None

    def decide(self, who: Principal, referral_id: int, decision: Decision) -> dict[str, Any]:
        """Forwarded to a unit (which is sent the referral), returned with a reason (the sender is told), a
        joint pathway, or closed."""
        now = self.clock.now()
        unit, plan_pdf = self._unit(who, referral_id, decision)
        detail = (
            (unit.name if unit else decision.unit) if decision.outcome == "forwarded" else decision.reason
        )
        work: list[Next] = []
        with self.store.write() as conn:
            row = self._visible(conn, who, referral_id)
            _change(
                lambda: referrals.decide(
                    conn,
                    referral_id,
                    decision.outcome,
                    detail,
                    decision.note,
                    now,
                    who.name,
                    decision.reason_code,
                )
            )
            audit.record(conn, who.name, "decide", referral_id, now, outcome=decision.outcome)
            if decision.outcome == "joint_pathway" and decision.responsible is not None:
                pathways.start(conn, referral_id, row.municipality, decision.responsible, now, self.rules)
            committee = self.committee_name(row.municipality)
            if unit is not None:
                follow = forwarding.forward(
                    conn, referral_id, unit, decision.note, committee, self.from_address, now, plan_pdf
                )
                work += self.pipeline.add(conn, follow, now)
                text = correspondence.forwarded_text(reference(referral_id), committee, unit.kind)
                work += self._tell_sender(conn, who, referral_id, text, committee, now, "sender_not_told")
            if decision.outcome == "returned" and decision.reason:
                text = correspondence.returned_text(reference(referral_id), committee, decision.reason)
                work += self._tell_sender(conn, who, referral_id, text, committee, now, "return_not_sent")
            found = views.detail(conn, referral_id)
        self.dispatch(work)
        assert found is not None
        return found

    def _tell_sender(
        self,
        conn: Connection,
        who: Principal,
        referral_id: int,
        text: str,
        committee: str,
        now: Any,
        unreachable: str,
    ) -> list[Next]:
        """A short message to the sender about what became of the referral; none without a return address."""
        try:
            follow = correspondence.write_to_sender(
                conn, referral_id, text, who.name, self.from_address, now, committee, self.medcom
            )
        except correspondence.SenderUnreachable:
            audit.record(conn, who.name, unreachable, referral_id, now, why="no return address")
            return []
        return self.pipeline.add(conn, follow, now)

    def transfer(self, who: Principal, referral_id: int, body: Transfer) -> dict[str, Any]:
        """Move the referral to another municipality's queue (or to triage when it does not take part);
        the sender is told where it went. The first committee sees it no more."""
        to = self.municipalities.get(body.municipality)
        if to is None:
            raise Refused(422, "invalid_request", "municipality: no municipality has that code.")
        now = self.clock.now()
        with self.store.write() as conn:
            row = self._visible(conn, who, referral_id)
            state = _change(
                lambda: transfers.transfer(
                    conn, referral_id, to, body.reason, body.note, who.name, now, self.rules
                )
            )
            audit.record(
                conn, who.name, "transfer", referral_id, now, to=to.code, reason=body.reason, state=state
            )
            committee = self.committee_name(row.municipality)
            text = correspondence.transferred_text(reference(referral_id), self.committee_name(to.code))
            work = self._tell_sender(conn, who, referral_id, text, committee, now, "sender_not_told")
        self.dispatch(work)
        return {"reference": reference(referral_id), "municipality": to.code, "state": state}

    def record_exception(self, who: Principal, referral_id: int, body: DeadlineException) -> dict[str, Any]:
        """Stop the handling clock: an authority case or a medical reason, with a note."""
        now = self.clock.now()
        with self.store.write() as conn:
            self._visible(conn, who, referral_id)
            _change(
                lambda: referrals.record_exception(conn, referral_id, body.reason, body.note, now, who.name)
            )
            audit.record(conn, who.name, "exception", referral_id, now, reason=body.reason)
            found = views.detail(conn, referral_id)
        assert found is not None
        return found

    def write_to_sender(self, who: Principal, referral_id: int, body: MessageToSender) -> str:
        """A message to the sender by mail or MedCom, with the referral's reference; returns the reference."""
        now = self.clock.now()
        with self.store.write() as conn:
            row = self._visible(conn, who, referral_id)
            try:
                follow = correspondence.write_to_sender(
                    conn,
                    referral_id,
                    body.text,
                    who.name,
                    self.from_address,
                    now,
                    self.committee_name(row.municipality),
                    self.medcom,
                )
            except correspondence.SenderUnreachable as exc:
                raise Refused(409, "sender_unreachable", str(exc)) from None
            audit.record(conn, who.name, "message_sender", referral_id, now)
            work = self.pipeline.add(conn, follow, now)
        self.dispatch(work)
        return reference(referral_id)

    def note(self, who: Principal, referral_id: int, body: InternalNote) -> dict[str, Any]:
        """A note for colleagues: stored as an event of the referral, never sent to anyone."""
        now = self.clock.now()
        with self.store.write() as conn:
            self._visible(conn, who, referral_id)
            referrals.note(conn, referral_id, body.text, now, who.name)
            audit.record(conn, who.name, "note", referral_id, now)
            found = views.detail(conn, referral_id)
        assert found is not None
        return found

    def record_meeting(self, who: Principal, referral_id: int, meeting: Meeting) -> dict[str, Any]:
        """A meeting of the pathway with the plan as it stood after it; sets the next meeting's clock."""
        now = self.clock.now()
        with self.store.write() as conn:
            self._visible(conn, who, referral_id)
            meeting_id = _change(
                lambda: pathways.record_meeting(conn, referral_id, meeting, who.name, now, self.rules)
            )
            audit.record(conn, who.name, "meeting", referral_id, now, kind=meeting.kind, meeting=meeting_id)
            found = pathways.summary(conn, referral_id)
        assert found is not None
        return found

    def meetings(self, who: Principal, referral_id: int) -> list[dict[str, Any]]:
        """The pathway's meetings, each with its version of the plan; audited as a read."""
        with self.store.read() as conn:
            self._visible(conn, who, referral_id)
            found = pathways.listing(conn, referral_id)
        self.audit_log.record(who.name, "read_meetings", referral_id, self.clock.now())
        return found

    def plan(self, who: Principal, referral_id: int) -> ActionPlan:
        """The newest version of the action plan; audited as a read."""
        with self.store.read() as conn:
            self._visible(conn, who, referral_id)
            found = pathways.plan(conn, referral_id, self.municipalities)
        if found is None:
            raise Refused(404, "no_plan", "The referral has no action plan yet: record a meeting first.")
        self.audit_log.record(who.name, "read_plan", referral_id, self.clock.now())
        return found

    def explain(self, who: Principal, referral_id: int, body: Explanation) -> dict[str, Any]:
        """A written explanation of a follow-up meeting not held in time: stops that clock."""
        now = self.clock.now()
        with self.store.write() as conn:
            self._visible(conn, who, referral_id)
            _change(lambda: pathways.explain(conn, referral_id, body.deadline, body.text, who.name, now))
            audit.record(conn, who.name, "explanation", referral_id, now, deadline=body.deadline)
            found = pathways.summary(conn, referral_id)
        assert found is not None
        return found

    def triage(self, who: Principal) -> dict[str, Any]:
        """What could not be routed, and mail that could not be sent: reasons, never contents."""
        _ops(who)
        with self.store.read() as conn:
            waiting = [t.as_json() for t in triage.waiting(conn)]
            failed = correspondence.failed_mail(conn)
            undelivered = forwarding.undelivered(conn)
        return {"referrals": waiting, "failed_mail": failed, "undelivered_forwards": undelivered}

    def retry_mail(self, who: Principal, outgoing_id: int) -> None:
        """Operations send a mail that failed for good once more, through the same `send` step."""
        _ops(who)
        now = self.clock.now()
        with self.store.write() as conn:
            if not outgoing.retry(conn, outgoing_id, now):
                raise Refused(409, "invalid_state", "Only a mail that failed can be sent again.")
            audit.record(conn, who.name, "retry_mail", None, now, mail=outgoing_id)
            work = self.pipeline.add(conn, [(kinds.SEND, outgoing_id)], now)
        self.dispatch(work)

    def retry_forward(self, who: Principal, referral_id: int) -> None:
        """Send an undelivered forward to its unit again, as the unit is configured now (an address added
        or corrected in municipalities.toml since): a new mail, through the same `send` step."""
        _ops(who)
        with self.store.read() as conn:
            row = conn.execute(
                select(
                    referrals_table.c.municipality, referrals_table.c.unit, referrals_table.c.outcome_detail
                ).where(referrals_table.c.id == referral_id)
            ).one_or_none()
            delivery = forwarding.delivery(conn, referral_id)
            plan = pathways.plan(conn, referral_id, self.municipalities)
        if row is None or delivery not in ("failed", "no_address"):
            raise Refused(409, "invalid_state", "Only a forward its unit never got can be sent again.")
        known = self.municipalities.get(row.municipality or "")
        unit = known.unit(row.unit) if known else None
        if unit is None or unit.address is None:
            raise Refused(
                409, "unit_unreachable", "The unit has no address in municipalities.toml; add it and restart."
            )
        plan_pdf = exports.pdf(plan) if plan is not None else None
        now = self.clock.now()
        with self.store.write() as conn:
            committee = self.committee_name(row.municipality)
            follow = forwarding.forward(
                conn, referral_id, unit, None, committee, self.from_address, now, plan_pdf
            )
            audit.record(conn, who.name, "retry_forward", referral_id, now, unit=unit.id)
            work = self.pipeline.add(conn, follow, now)
        self.dispatch(work)

    def assign(self, who: Principal, referral_id: int, body: Assignment) -> None:
        """Send a triaged referral to a municipality's queue, with a note saying why."""
        _ops(who)
        if self.municipalities.get(body.municipality) is None:
            raise Refused(422, "invalid_request", "municipality: no municipality has that code.")
        now = self.clock.now()
        with self.store.write() as conn:
            follow = _change(
                lambda: triage.assign(
                    conn, referral_id, body.municipality, body.note, now, who.name, self.rules
                )
            )
            audit.record(conn, who.name, "assign", referral_id, now, municipality=body.municipality)
            work = self.pipeline.add(conn, follow, now)
        self.dispatch(work)

    def subject(self, who: Principal, cpr: str, reason: str) -> list[dict[str, Any]]:
        """Everything kept about one person (GDPR art. 15), for an ops token given `subject_access`; the
        export is audited with the token's name and the reason. Messages come base64-encoded."""
        if who.scope != "ops" or "subject_access" not in who.rights:
            raise Refused(403, "forbidden", "Only an ops token with the subject_access right may do this.")
        if not reason.strip():
            raise Refused(422, "invalid_request", "reason: say why the person's data is exported.")
        try:
            number = Cpr.parse(cpr, self.clock.now().date()).number
        except ValueError:
            raise Refused(422, "invalid_request", "cpr: not a valid CPR number.") from None
        now = self.clock.now()
        with self.store.write() as conn:
            found = subjects.records(conn, number, self.municipalities)
            subjects.audited(conn, found, who.name, reason.strip(), now)
        for record in found:
            record["messages"] = [
                {"name": name, "base64": base64.b64encode(raw).decode()} for name, raw in record["messages"]
            ]
        return found

    def stats(self, who: Principal, start: date, end: date) -> Statistics:
        """The pilot's numbers per municipality and sender kind: counts only, no personal data."""
        _ops(who)
        if start > end:
            raise Refused(422, "invalid_request", "from: the first day of the period comes after `to`.")
        try:
            with self.store.read() as conn:
                found = statistics(conn, start, end, self.municipalities)
        except ValueError as exc:
            raise Refused(422, "invalid_request", f"{exc}.") from None
        self.audit_log.record(
            who.name, "stats", None, self.clock.now(), **{"from": start.isoformat(), "to": end.isoformat()}
        )
        return found


def _ops(who: Principal) -> None:
    if who.scope != "ops":
        raise OPS_ONLY


def _change(change: Callable[[], T]) -> T:
    try:
        return change()
    except LookupError:
        raise NOT_FOUND from None
    except referrals.TransitionError as exc:
        raise Refused(409, "invalid_state", str(exc)) from None
