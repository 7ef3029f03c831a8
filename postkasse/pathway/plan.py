"""The joint action plan ("fælles forpligtende handleplan", seed 003 section 5.7): what a meeting records,
and the plan as it stands after it. One version per meeting; postkasse's own schema is the truth, FHIR and
the printed plan are exports of it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

MeetingKind = Literal["opstart", "opfoelgning", "afslutning"]
Relation = Literal["mother", "father", "guardian", "other"]
MEETING_NAMES = {"opstart": "opstartsmøde", "opfoelgning": "opfølgningsmøde", "afslutning": "afslutningsmøde"}
RELATION_NAMES = {"mother": "mor", "father": "far", "guardian": "værge", "other": "anden"}

Text = Field(default="", max_length=8000)


class Participant(BaseModel):
    name: str = Field(..., min_length=1, max_length=200)
    title: str = Field("", max_length=200, description="role or title, e.g. sundhedsplejerske, lærer, mor")


class Guardian(BaseModel):
    name: str = Field(..., min_length=1, max_length=200)
    relation: Relation = "guardian"
    address: str = Field("", max_length=500)
    custody: bool = Field(False, description="has custody (forældremyndighed)")


class Responsible(BaseModel):
    """The responsible professional ("indsatsansvarlig"), named in every plan handed to the family."""

    name: str = Field(..., min_length=1, max_length=200)
    title: str = Field(..., min_length=1, max_length=200)
    telephone: str = Field(..., min_length=1, max_length=40)

    @model_validator(mode="after")
    def _filled(self) -> Responsible:
        for field in ("name", "title", "telephone"):
            if not getattr(self, field).strip():
                raise ValueError(f"responsible.{field}: the responsible professional needs a {field}")
        return self


class Agreement(BaseModel):
    """A concrete agreement until the next meeting: what, how, and who is responsible."""

    what: str = Field(..., min_length=1, max_length=2000)
    how: str = Field("", max_length=2000)
    responsible: str = Field(..., min_length=1, max_length=200)


class PlanContent(BaseModel):
    """What the meeting wrote into the plan."""

    guardians: list[Guardian] = Field(default_factory=list, max_length=10)
    custody: str = Field("", max_length=500, description="forældremyndighed, in words")
    what_works: str = Text
    what_is_hard: str = Text
    goals: list[str] = Field(default_factory=list, max_length=30)
    agreements: list[Agreement] = Field(default_factory=list, max_length=50)
    expectations: str = Text
    next_meeting: date | None = Field(None, description="the agreed date of the next meeting")


class Meeting(BaseModel):
    """A meeting of the pathway as the committee records it, with the plan as it stood afterwards."""

    kind: MeetingKind
    held_at: datetime
    place: str = Field("", max_length=500)
    participants: list[Participant] = Field(default_factory=list, max_length=50)
    responsible: Responsible | None = Field(None, description="a new responsible professional, if changed")
    plan: PlanContent = Field(default_factory=PlanContent)

    @model_validator(mode="after")
    def _aware(self) -> Meeting:
        if self.held_at.tzinfo is None:
            raise ValueError("held_at: give the time with its offset, e.g. 2026-12-01T10:00:00+01:00")
        return self


class ActionPlan(BaseModel):
    """The plan as handed to the family: the child, the meeting, the responsible professional, the content."""

    reference: str
    municipality: str
    municipality_name: str
    version: int
    child_name: str | None
    cpr: str | None
    meeting_kind: MeetingKind
    held_at: datetime
    place: str
    participants: list[Participant]
    responsible: Responsible
    content: PlanContent
