"""The action plan's two exports: the FHIR Bundle re-parses with the FHIR library and says what the plan says;
the printed PDF holds the plan's words, in Danish, with typed-in HTML printed as text."""

from __future__ import annotations

import io
import json
from datetime import date, datetime
from typing import Any

import pypdf
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan

from postkasse.clock import COPENHAGEN
from postkasse.pathway import fhir, printed
from postkasse.pathway.plan import ActionPlan

CPR = "0312201234"
GOALS = [
    "Åse sover igennem om natten",
    "Går i skole fire dage om ugen",
    "Mødes med sin mormor én gang om måneden",
]


def full_plan(**changes: Any) -> ActionPlan:
    plan = ActionPlan.model_validate(
        {
            "reference": "PK-000123",
            "municipality": "0101",
            "municipality_name": "Københavns Kommune",
            "version": 3,
            "child_name": "Åse Ødegård Kærsgaard",
            "cpr": CPR,
            "meeting_kind": "opfoelgning",
            "held_at": datetime(2026, 12, 3, 10, 0, tzinfo=COPENHAGEN),
            "place": "Ørestad Skole, mødelokale 2",
            "participants": [
                {"name": "Mette Ærø", "title": "sundhedsplejerske"},
                {"name": "Jens Ågård", "title": "klasselærer"},
                {"name": "Hanne Kærsgaard", "title": "mor"},
            ],
            "responsible": {
                "name": "Søren Østergaard",
                "title": "socialrådgiver",
                "telephone": "33 66 12 34",
            },
            "content": {
                "guardians": [
                    {
                        "name": "Hanne Kærsgaard",
                        "relation": "mother",
                        "address": "Æblevej 4, 2300 København S",
                        "custody": True,
                    },
                    {"name": "Bjørn Ødegård", "relation": "father", "address": "Søvej 9, 8000 Aarhus C"},
                    {"name": "Kirsten Lø", "relation": "guardian", "address": "Kærvej 1, 5000 Odense C"},
                    {"name": "Mormor Åse", "relation": "other"},
                ],
                "custody": "Mor har forældremyndigheden alene.",
                "what_works": "Åse er glad for sin klasse og for fodbold om tirsdagen.",
                "what_is_hard": "Søvnen, og morgenerne før skole.",
                "goals": GOALS,
                "agreements": [
                    {
                        "what": "Søvndagbog",
                        "how": "Mor skriver hver morgen i to uger",
                        "responsible": "Hanne",
                    },
                    {"what": "Samtale med PPR", "how": "Skolen booker tid", "responsible": "Jens Ågård"},
                ],
                "expectations": "Alle melder tilbage til Søren inden næste møde.",
                "next_meeting": date(2027, 1, 14),
            },
        }
    )
    return plan.model_copy(update=changes)


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


# The FHIR Bundle


def test_bundle_reparses_with_the_fhir_library() -> None:
    exported = fhir.bundle(full_plan())
    parsed = Bundle.model_validate(json.loads(json.dumps(exported)))
    assert parsed.type == "collection"
    assert {e.fullUrl for e in parsed.entry or []} == set(by_url(exported))
    assert all(url.startswith("urn:uuid:") for url in by_url(exported))
    assert fhir.bundle(full_plan()) == exported  # the same plan, the same Bundle


def test_patient_holds_the_cpr_and_name() -> None:
    (patient,) = resources(fhir.bundle(full_plan()), "Patient")
    assert patient["identifier"] == [{"system": "urn:oid:1.2.208.176.1.2", "value": CPR}]
    assert patient["name"] == [{"text": "Åse Ødegård Kærsgaard"}]


def test_careplan_references_goals_and_schedules_the_next_meeting() -> None:
    exported = fhir.bundle(full_plan())
    entries = by_url(exported)
    (careplan,) = resources(exported, "CarePlan")
    CarePlan.model_validate(careplan)
    assert careplan["status"] == "active"
    assert careplan["intent"] == "plan"
    assert careplan["identifier"][0]["value"] == "PK-000123"
    assert entries[careplan["subject"]["reference"]]["resourceType"] == "Patient"
    goals = [entries[g["reference"]] for g in careplan["goal"]]
    assert [g["resourceType"] for g in goals] == ["Goal"] * 3
    assert [g["description"]["text"] for g in goals] == GOALS
    assert {g["lifecycleStatus"] for g in goals} == {"active"}

    details = [a["detail"] for a in careplan["activity"]]
    (appointment,) = [d for d in details if d.get("kind") == "Appointment"]
    assert appointment["status"] == "scheduled"
    assert appointment["scheduledPeriod"]["start"] == "2027-01-14"
    agreements = [d for d in details if d.get("kind") != "Appointment"]
    assert [d["performer"][0]["display"] for d in agreements] == ["Hanne", "Jens Ågård"]
    assert agreements[0]["description"].startswith("Søvndagbog")
    assert "Mor skriver hver morgen i to uger" in agreements[0]["description"]
    assert {d["status"] for d in agreements} == {"not-started"}

    notes = "\n".join(n["text"] for n in careplan["note"])
    for words in ("fodbold om tirsdagen", "morgenerne før skole", "inden næste møde", "alene"):
        assert words in notes


def test_author_is_the_responsible_professional_with_title_and_telephone() -> None:
    exported = fhir.bundle(full_plan())
    entries = by_url(exported)
    (careplan,) = resources(exported, "CarePlan")
    role = entries[careplan["author"]["reference"]]
    assert role["resourceType"] == "PractitionerRole"
    assert role["code"] == [{"text": "socialrådgiver"}]
    assert role["telecom"][0] == {"system": "phone", "value": "33 66 12 34", "use": "work"}
    practitioner = entries[role["practitioner"]["reference"]]
    assert practitioner["name"] == [{"text": "Søren Østergaard"}]


def test_related_persons_relationship_codes_address_and_custody() -> None:
    exported = fhir.bundle(full_plan())
    patient_url = next(u for u, r in by_url(exported).items() if r["resourceType"] == "Patient")
    people = resources(exported, "RelatedPerson")
    codes = [[c["code"] for c in p["relationship"][0].get("coding", [])] for p in people]
    assert codes == [["MTH"], ["FTH"], ["GUARD"], []]
    assert {c["system"] for p in people for c in p["relationship"][0].get("coding", [])} == {
        "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
    }
    assert people[3]["relationship"][0]["text"] == "anden"
    assert people[0]["address"] == [{"text": "Æblevej 4, 2300 København S"}]
    assert "address" not in people[3]
    custody = [p["extension"][0] for p in people]
    assert {e["url"] for e in custody} == {"https://postkasse.example/fhir/StructureDefinition/custody"}
    assert [e["valueBoolean"] for e in custody] == [True, False, False, False]
    assert {p["patient"]["reference"] for p in people} == {patient_url}


def test_encounter_is_the_meeting() -> None:
    (encounter,) = resources(fhir.bundle(full_plan()), "Encounter")
    assert encounter["period"]["start"] == "2026-12-03T10:00:00+01:00"
    assert encounter["location"] == [{"location": {"display": "Ørestad Skole, mødelokale 2"}}]
    (coding,) = encounter["type"][0]["coding"]
    assert coding == {
        "system": "https://postkasse.example/fhir/CodeSystem/meeting-kind",
        "code": "opfoelgning",
        "display": "opfølgningsmøde",
    }
    assert [(p["individual"]["display"], p["type"][0]["text"]) for p in encounter["participant"]] == [
        ("Mette Ærø", "sundhedsplejerske"),
        ("Jens Ågård", "klasselærer"),
        ("Hanne Kærsgaard", "mor"),
    ]


def test_plan_without_cpr_or_next_meeting_still_validates() -> None:
    plan = full_plan(cpr=None, child_name=None, place="")
    plan = plan.model_copy(update={"content": plan.content.model_copy(update={"next_meeting": None})})
    exported = fhir.bundle(plan)
    Bundle.model_validate(exported)
    (patient,) = resources(exported, "Patient")
    assert "identifier" not in patient
    (careplan,) = resources(exported, "CarePlan")
    assert not [a for a in careplan["activity"] if a["detail"].get("kind") == "Appointment"]
    (encounter,) = resources(exported, "Encounter")
    assert "location" not in encounter


def test_a_bare_closing_plan_validates_and_is_completed() -> None:
    plan = full_plan(meeting_kind="afslutning", participants=[])
    plan = plan.model_copy(update={"content": type(plan.content)()})
    exported = fhir.bundle(plan)
    Bundle.model_validate(exported)
    (careplan,) = resources(exported, "CarePlan")
    assert careplan["status"] == "completed"
    assert "goal" not in careplan
    assert "activity" not in careplan
    assert not resources(exported, "Goal")


# The printed plan


def pdf_text(data: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


@pytest.fixture(scope="module")
def printed_text() -> str:
    plan = full_plan()
    plan.content.goals.append("<script>alert('x')</script> og <b>fed skrift</b>")
    data = printed.pdf(plan)
    assert data.startswith(b"%PDF-")
    return pdf_text(data)


def test_pdf_holds_the_plan_in_danish(printed_text: str) -> None:
    squeezed = " ".join(printed_text.split())
    for words in (
        "Fælles forpligtende handleplan",
        "PK-000123",
        "Åse Ødegård Kærsgaard",
        "031220-1234",
        "3. december 2026 kl. 10.00",
        "Ørestad Skole, mødelokale 2",
        "opfølgningsmøde",
        "Mette Ærø",
        "sundhedsplejerske",
        "Æblevej 4, 2300 København S",
        "Forældremyndighed",
        "Mor har forældremyndigheden alene.",
        "Indsatsansvarlig",
        "Søren Østergaard",
        "socialrådgiver",
        "33 66 12 34",
        "Hvad fungerer?",
        "Hvad er svært?",
        "Mål",
        *GOALS,
        "Konkrete aftaler indtil næste møde",
        "Søvndagbog",
        "Forventningsafstemning",
        "Dato for næste møde",
        "14. januar 2027",
    ):
        assert words in squeezed, words


def test_html_in_a_field_is_printed_as_text(printed_text: str) -> None:
    squeezed = " ".join(printed_text.split())
    assert "<script>alert('x')</script> og <b>fed skrift</b>" in squeezed


def test_html_is_escaped_in_the_page() -> None:
    plan = full_plan(place="<img src='http://example.invalid/x.png'>")
    page = printed.html(plan)
    assert "<img" not in page
    assert "&lt;img src=" in page


def test_pdf_of_a_bare_plan_still_names_the_responsible_professional() -> None:
    plan = full_plan(cpr=None, child_name=None, participants=[], place="")
    plan = plan.model_copy(update={"content": type(plan.content)()})
    text = " ".join(pdf_text(printed.pdf(plan)).split())
    assert "Søren Østergaard" in text
    assert "33 66 12 34" in text
    assert "Ikke aftalt." in text


def test_danish_dates_are_copenhagen_time() -> None:
    summer = datetime.fromisoformat("2026-06-30T22:30:00+00:00")
    assert printed.danish_time(summer) == "1. juli 2026 kl. 00.30"
    assert printed.cpr_text("0312201234") == "031220-1234"
    assert printed.cpr_text(None) == ""


def test_the_renderer_fetches_nothing_from_the_network() -> None:
    fetcher = printed._no_network()
    for url in ("http://example.invalid/x.png", "https://example.invalid/a.css", "file:///etc/passwd"):
        with pytest.raises(ValueError, match="disallowed protocol"):
            fetcher.fetch(url)
