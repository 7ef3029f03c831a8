"""The action plan as a FHIR R4 Bundle (type collection), following the mapping in the design's
JOINT-PATHWAY.md: Patient, RelatedPerson per guardian, Practitioner and PractitionerRole for the responsible
professional, Encounter for the meeting, Goal per goal, and the CarePlan that ties them together.

The models come from `fhir.resources.R4B`. fhir.resources 8 (pydantic v2) ships R5 (default), R4B and STU3
but no R4 subpackage, and no true R4 model package that works with pydantic v2 is to be had (the last R4
release of fhir.resources, 6.x, is pydantic v1). Every resource used here (Patient, RelatedPerson,
Practitioner, PractitionerRole, Encounter, Goal, CarePlan, Bundle) is unchanged between R4 and R4B, so the
JSON validated by the R4B models is R4 JSON.

Each resource is first written as the JSON FHIR defines and then validated by its model, so a wrong element
fails here and not at the receiver. fullUrls are `urn:uuid:`s derived from the plan's reference and version,
so the same plan always gives the same Bundle.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.goal import Goal
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole
from fhir.resources.R4B.relatedperson import RelatedPerson
from fhir.resources.R4B.resource import Resource

from postkasse.pathway.plan import MEETING_NAMES, RELATION_NAMES, ActionPlan, Agreement, Guardian

Json = dict[str, Any]

CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"
ROLE_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOCAL = "https://postkasse.example/fhir"
MEETING_KIND_SYSTEM = f"{LOCAL}/CodeSystem/meeting-kind"
CUSTODY_EXTENSION = f"{LOCAL}/StructureDefinition/custody"
PLAN_VERSION_EXTENSION = f"{LOCAL}/StructureDefinition/plan-version"
PLAN_REFERENCE_SYSTEM = f"{LOCAL}/NamingSystem/plan-reference"

# mother/father/guardian have v3-RoleCode codes; "other" is said in words only.
ROLE_CODES = {"mother": ("MTH", "mother"), "father": ("FTH", "father"), "guardian": ("GUARD", "guardian")}

_NAMESPACE = uuid.UUID("5b0e2c1a-6f43-4d0e-9a55-2f3c1b7a9d10")


def bundle(plan: ActionPlan) -> dict[str, Any]:
    """The plan as a FHIR R4 Bundle of type collection, as JSON (a dict ready for json.dumps)."""
    ids = _Ids(plan)
    goals = [_goal(ids, text) for text in plan.content.goals]
    entries: list[tuple[str, Resource]] = [
        (ids.patient, _patient(plan)),
        *((ids.guardian(i), _related_person(g, ids)) for i, g in enumerate(plan.content.guardians)),
        (ids.practitioner, _practitioner(plan)),
        (ids.role, _practitioner_role(plan, ids)),
        (ids.encounter, _encounter(plan, ids)),
        *((ids.goal(i), goal) for i, goal in enumerate(goals)),
        (ids.careplan, _careplan(plan, ids, len(goals))),
    ]
    result = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "identifier": {"system": PLAN_REFERENCE_SYSTEM, "value": f"{plan.reference}/{plan.version}"},
            "type": "collection",
            "timestamp": plan.held_at.isoformat(),
            "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
        }
    )
    dumped: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dumped


class _Ids:
    """The urn:uuid: of each entry, stable for a plan's reference and version."""

    def __init__(self, plan: ActionPlan) -> None:
        self._base = f"{plan.reference}/{plan.version}"
        self.patient = self._urn("patient")
        self.practitioner = self._urn("practitioner")
        self.role = self._urn("practitioner-role")
        self.encounter = self._urn("encounter")
        self.careplan = self._urn("careplan")

    def guardian(self, index: int) -> str:
        return self._urn(f"guardian/{index}")

    def goal(self, index: int) -> str:
        return self._urn(f"goal/{index}")

    def _urn(self, what: str) -> str:
        return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{self._base}/{what}')}"


def _patient(plan: ActionPlan) -> Patient:
    patient: Json = {"resourceType": "Patient"}
    if plan.cpr:
        patient["identifier"] = [{"system": CPR_SYSTEM, "value": plan.cpr}]
    if plan.child_name:
        patient["name"] = [{"text": plan.child_name}]
    return Patient.model_validate(patient)


def _related_person(guardian: Guardian, ids: _Ids) -> RelatedPerson:
    relationship: Json = {"text": RELATION_NAMES[guardian.relation]}
    if guardian.relation in ROLE_CODES:
        code, display = ROLE_CODES[guardian.relation]
        relationship["coding"] = [{"system": ROLE_CODE_SYSTEM, "code": code, "display": display}]
    person: Json = {
        "resourceType": "RelatedPerson",
        "extension": [{"url": CUSTODY_EXTENSION, "valueBoolean": guardian.custody}],
        "patient": {"reference": ids.patient},
        "relationship": [relationship],
        "name": [{"text": guardian.name}],
    }
    if guardian.address:
        person["address"] = [{"text": guardian.address}]
    return RelatedPerson.model_validate(person)


def _practitioner(plan: ActionPlan) -> Practitioner:
    return Practitioner.model_validate(
        {
            "resourceType": "Practitioner",
            "name": [{"text": plan.responsible.name}],
            "telecom": [{"system": "phone", "value": plan.responsible.telephone, "use": "work"}],
        }
    )


def _practitioner_role(plan: ActionPlan, ids: _Ids) -> PractitionerRole:
    return PractitionerRole.model_validate(
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": ids.practitioner, "display": plan.responsible.name},
            "organization": {"display": plan.municipality_name},
            "code": [{"text": plan.responsible.title}],
            "telecom": [{"system": "phone", "value": plan.responsible.telephone, "use": "work"}],
        }
    )


def _encounter(plan: ActionPlan, ids: _Ids) -> Encounter:
    encounter: Json = {
        "resourceType": "Encounter",
        "status": "finished",
        # R4 requires a class; a meeting held with the family, not an admission: ambulatory.
        "class": {"system": ACT_CODE_SYSTEM, "code": "AMB", "display": "ambulatory"},
        "type": [
            {
                "coding": [
                    {
                        "system": MEETING_KIND_SYSTEM,
                        "code": plan.meeting_kind,
                        "display": MEETING_NAMES[plan.meeting_kind],
                    }
                ],
                "text": MEETING_NAMES[plan.meeting_kind],
            }
        ],
        "subject": {"reference": ids.patient},
        "participant": [
            {"individual": {"display": p.name}, **({"type": [{"text": p.title}]} if p.title else {})}
            for p in plan.participants
        ],
        "period": {"start": plan.held_at.isoformat()},
    }
    if plan.place:
        encounter["location"] = [{"location": {"display": plan.place}}]
    return Encounter.model_validate(encounter)


def _goal(ids: _Ids, text: str) -> Goal:
    return Goal.model_validate(
        {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": text},
            "subject": {"reference": ids.patient},
        }
    )


def _careplan(plan: ActionPlan, ids: _Ids, goals: int) -> CarePlan:
    content = plan.content
    careplan: Json = {
        "resourceType": "CarePlan",
        "extension": [{"url": PLAN_VERSION_EXTENSION, "valuePositiveInt": plan.version}],
        "identifier": [{"system": PLAN_REFERENCE_SYSTEM, "value": plan.reference}],
        "status": "completed" if plan.meeting_kind == "afslutning" else "active",
        "intent": "plan",
        "title": f"Fælles forpligtende handleplan, version {plan.version}",
        "subject": {"reference": ids.patient},
        "encounter": {"reference": ids.encounter},
        "created": plan.held_at.isoformat(),
        "author": {"reference": ids.role, "display": plan.responsible.name},
        "goal": [{"reference": ids.goal(i)} for i in range(goals)],
        "activity": [
            *(_agreement_activity(a) for a in content.agreements),
            *([_next_meeting_activity(plan)] if content.next_meeting else []),
        ],
        "note": [
            {"text": f"{label}\n\n{text}"}
            for label, text in (
                ("Forældremyndighed", content.custody),
                ("Hvad fungerer?", content.what_works),
                ("Hvad er svært?", content.what_is_hard),
                ("Forventningsafstemning", content.expectations),
            )
            if text.strip()
        ],
    }
    return CarePlan.model_validate({k: v for k, v in careplan.items() if v != []})


def _agreement_activity(agreement: Agreement) -> Json:
    description = agreement.what if not agreement.how else f"{agreement.what}\n\nHvordan: {agreement.how}"
    return {
        "detail": {
            "status": "not-started",
            "description": description,
            "performer": [{"display": agreement.responsible}],
        }
    }


def _next_meeting_activity(plan: ActionPlan) -> Json:
    assert plan.content.next_meeting is not None
    return {
        "detail": {
            "kind": "Appointment",
            "status": "scheduled",
            "description": "Næste møde",
            "scheduledPeriod": {"start": plan.content.next_meeting.isoformat()},
        }
    }
