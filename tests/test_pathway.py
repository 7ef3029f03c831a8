"""The joint pathway: the decision starts it, meetings keep its action plan, and its meeting deadlines
are watched like the committee's own (stored due times, one alert per round and level, resolved once)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pypdf import PdfReader

from postkasse.clock import COPENHAGEN
from postkasse.committee import pathways, referrals
from postkasse.committee.stats import statistics
from postkasse.deadlines.assess import findings
from postkasse.deadlines.rules import RuleBook, Rules
from postkasse.pathway.plan import Meeting, Responsible
from postkasse.store import Store
from tests.test_api import World, add_referral, make_world
from tests.test_deadlines import MUNICIPALITIES, Checker, alert_mails, alert_rows

RESPONSIBLE = {"name": "Mette Sørensen", "title": "Sundhedsplejerske", "telephone": "+45 87 65 43 21"}
PLAN: dict[str, Any] = {
    "guardians": [
        {
            "name": "Hanne Hansen",
            "relation": "mother",
            "address": "Skolevej 12, 8382 Hinnerup",
            "custody": True,
        },
        {"name": "Peter Hansen", "relation": "father", "address": "Åvej 3, 8000 Aarhus C", "custody": True},
    ],
    "custody": "Fælles forældremyndighed",
    "what_works": "Barnet har en god ven i klassen.",
    "what_is_hard": "Ondt i maven hver morgen før skole.",
    "goals": ["Komme i skole fire dage om ugen", "Sove hele natten"],
    "agreements": [
        {"what": "Samtaler med PPR", "how": "hver onsdag", "responsible": "PPR-psykolog Åse"},
        {"what": "Morgenrutine", "how": "", "responsible": "Forældrene"},
    ],
    "expectations": "Alle melder tilbage inden næste møde.",
    "next_meeting": "2027-01-20",
}
MEETING: dict[str, Any] = {
    "kind": "opstart",
    "held_at": "2026-04-10T10:00:00+02:00",
    "place": "Hinnerup Skole",
    "participants": [{"name": "Hanne Hansen", "title": "mor"}, {"name": "Lars Lærer", "title": "lærer"}],
    "plan": PLAN,
}


@pytest.fixture
def world(store: Store) -> Iterator[World]:
    yield from make_world(store)


def local(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=COPENHAGEN).astimezone(UTC)  # type: ignore[misc]


def test_meeting_deadlines_keep_the_local_time_over_daylight_saving_and_month_ends() -> None:
    rules = Rules()
    warn, due = rules.meeting(local(2026, 3, 10, 10, 0), 28)  # summer time begins 29 March
    assert due.astimezone(COPENHAGEN).replace(tzinfo=None) == datetime(2026, 4, 7, 10, 0)
    assert warn.astimezone(COPENHAGEN).replace(tzinfo=None) == datetime(2026, 3, 31, 10, 0)
    _, due = rules.meeting(local(2026, 10, 1, 9, 30), 42)  # winter time from 25 October
    assert due.astimezone(COPENHAGEN).replace(tzinfo=None) == datetime(2026, 11, 12, 9, 30)
    _, due = rules.meeting(local(2027, 1, 31, 12, 0), 28)
    assert due.astimezone(COPENHAGEN).replace(tzinfo=None) == datetime(2027, 2, 28, 12, 0)
    warn, due = rules.agreed_meeting(date(2026, 3, 29))  # the agreed day, to its very end
    assert due == local(2026, 3, 30, 0, 0) and warn == local(2026, 3, 23, 0, 0)


def decide_pathway(world: World, referral: int) -> Any:
    world.call("POST", f"/api/v1/referrals/{referral}/pull", "favrskov")
    return world.call(
        "POST",
        f"/api/v1/referrals/{referral}/decision",
        "favrskov",
        json={"outcome": "joint_pathway", "responsible": RESPONSIBLE},
    )


def test_a_joint_pathway_needs_its_responsible_professional(world: World) -> None:
    referral = world.ids["favrskov"]
    world.call("POST", f"/api/v1/referrals/{referral}/pull", "favrskov")
    refused = world.call(
        "POST", f"/api/v1/referrals/{referral}/decision", "favrskov", json={"outcome": "joint_pathway"}
    )
    assert refused.status_code == 422 and "responsible" in refused.json()["detail"]
    half = {**RESPONSIBLE, "telephone": " "}
    refused = world.call(
        "POST",
        f"/api/v1/referrals/{referral}/decision",
        "favrskov",
        json={"outcome": "joint_pathway", "responsible": half},
    )
    assert refused.status_code == 422 and "telephone" in refused.json()["detail"]
    decided = decide_pathway(world, referral)
    assert decided.status_code == 200
    pathway = decided.json()["pathway"]
    assert pathway["state"] == "active" and pathway["responsible"] == RESPONSIBLE
    assert pathway["deadline"]["name"] == "startup_meeting"
    due = datetime.fromisoformat(pathway["deadline"]["due"]).astimezone(COPENHAGEN)
    decided_at = world.clock.now().astimezone(COPENHAGEN)  # 28 March: summer time begins the day after
    assert due.replace(tzinfo=None) == decided_at.replace(tzinfo=None) + timedelta(days=28)


def test_the_plan_round_trips_every_field_and_exports_as_fhir_and_pdf(world: World) -> None:
    referral = world.ids["favrskov"]
    decide_pathway(world, referral)
    assert world.call("GET", f"/api/v1/referrals/{referral}/plan", "favrskov").json()["code"] == "no_plan"
    recorded = world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=MEETING)
    assert recorded.status_code == 201
    assert recorded.json()["deadline"]["name"] == "follow_up_meeting"

    plan = world.call("GET", f"/api/v1/referrals/{referral}/plan", "favrskov").json()
    assert plan["content"] == PLAN
    assert (plan["meeting_kind"], plan["place"], plan["version"]) == ("opstart", "Hinnerup Skole", 1)
    assert plan["participants"] == MEETING["participants"]
    assert plan["responsible"] == RESPONSIBLE
    assert (plan["cpr"], plan["child_name"], plan["reference"]) == (
        "0102154123",
        "Anna Hansen",
        f"PK-{referral:06d}",
    )
    assert datetime.fromisoformat(plan["held_at"]) == datetime.fromisoformat(MEETING["held_at"])
    listed = world.call("GET", f"/api/v1/referrals/{referral}/meetings", "favrskov").json()["items"]
    assert [(m["kind"], m["version"], m["in_time"]) for m in listed] == [("opstart", 1, True)]

    from fhir.resources.R4B.bundle import Bundle

    answer = world.call(
        "GET", f"/api/v1/referrals/{referral}/plan", "favrskov", headers={"Accept": "application/fhir+json"}
    )
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate(answer.json())
    resources = {e.resource.get_resource_type(): e.resource for e in bundle.entry or []}  # type: ignore[union-attr]
    patient = resources["Patient"]
    assert [(i.system, i.value) for i in patient.identifier] == [("urn:oid:1.2.208.176.1.2", "0102154123")]
    assert "CarePlan" in resources and "Goal" in resources

    printed = world.call(
        "GET", f"/api/v1/referrals/{referral}/plan", "favrskov", headers={"Accept": "application/pdf"}
    )
    assert printed.content.startswith(b"%PDF-")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(printed.content)).pages)
    for expected in ("Komme i skole fire dage om ugen", "Mette Sørensen", "+45 87 65 43 21"):
        assert expected in text

    for path in ("plan", "meetings"):
        assert world.call("GET", f"/api/v1/referrals/{referral}/{path}", "aarhus").status_code == 404
    assert (
        world.call("POST", f"/api/v1/referrals/{referral}/meetings", "aarhus", json=MEETING).status_code
        == 404
    )


def test_meetings_need_a_pathway_and_a_closing_meeting_ends_it(world: World) -> None:
    referral = world.ids["favrskov"]
    early = world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=MEETING)
    assert (early.status_code, early.json()["code"]) == (409, "invalid_state")
    decide_pathway(world, referral)
    naive = world.call(
        "POST",
        f"/api/v1/referrals/{referral}/meetings",
        "favrskov",
        json={**MEETING, "held_at": "2026-04-10T10:00:00"},
    )
    assert naive.status_code == 422 and "held_at" in naive.json()["detail"]
    world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=MEETING)
    follow = {**MEETING, "kind": "opfoelgning", "held_at": "2026-05-20T10:00:00+02:00"}
    after = world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=follow).json()
    assert datetime.fromisoformat(after["deadline"]["due"]) == local(2027, 1, 21, 0, 0)  # the agreed day
    closing = {**MEETING, "kind": "afslutning", "held_at": "2026-06-01T10:00:00+02:00"}
    closed = world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=closing).json()
    assert (closed["state"], closed["deadline"]) == ("closed", None)
    again = world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=closing)
    assert again.status_code == 409


T0 = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def started(store: Store) -> int:
    referral = add_referral(store, "0710")
    with store.write() as conn:
        referrals.pull(conn, referral, T0, "favrskov")
        referrals.decide(conn, referral, "joint_pathway", None, None, T0, "favrskov")
        pathways.start(conn, referral, "0710", Responsible(**RESPONSIBLE), T0, RuleBook())
    return referral


def meeting(kind: str, at: datetime, next_meeting: date | None = None) -> Meeting:
    return Meeting.model_validate(
        {**MEETING, "kind": kind, "held_at": at.isoformat(), "plan": {**PLAN, "next_meeting": next_meeting}}
    )


def test_a_late_startup_meeting_is_alerted_once_and_resolved_once_by_the_meeting(store: Store) -> None:
    referral = started(store)
    check = Checker(store, T0 + timedelta(days=20))
    check.run()
    assert alert_mails(store) == []
    check.clock.at = T0 + timedelta(days=22)
    check.run()
    check.clock.at = T0 + timedelta(days=29)
    check.run()
    check.run()
    again = Checker(Store(store.engine.url.render_as_string(hide_password=False)), check.clock.at)
    again.run()  # a restarted daemon raises nothing new
    kinds = [m["kind"] for m in alert_mails(store)]
    assert (
        kinds
        == ["startup_meeting; level=warning; raised"] * 2 + ["startup_meeting; level=breach; raised"] * 2
    )
    for mail in alert_mails(store):
        assert f"PK-{referral:06d}" in mail["subject"] and b"0102154123" not in mail["raw"]
        assert b"Anna" not in mail["raw"] and b"Mette" not in mail["raw"]

    with store.write() as conn:  # held late, recorded later still
        pathways.record_meeting(
            conn, referral, meeting("opstart", T0 + timedelta(days=30)), "anna", check.clock.at, RuleBook()
        )
    check.clock.at = T0 + timedelta(days=31)
    check.run()
    check.run()
    resolved = alert_mails(store)[4:]
    assert [m["kind"] for m in resolved] == ["startup_meeting; level=breach; resolved"] * 2
    assert "Mødet er nu holdt" in resolved[0]["body"]

    # the follow-up: due 42 days after the start-up meeting, a round of its own
    with store.read() as conn:
        found = [
            f
            for f in findings(conn, T0 + timedelta(days=30 + 42, hours=1), RuleBook())
            if f.referral_id == referral
        ]
    assert [(f.deadline, f.level, f.due) for f in found] == [
        ("follow_up_meeting", "breach", T0 + timedelta(days=72))
    ]
    check.clock.at = T0 + timedelta(days=73)
    check.run()
    with store.write() as conn:
        with pytest.raises(ValueError):
            pathways.explain(conn, referral, "startup_meeting", "x", "anna", check.clock.at)
        pathways.explain(
            conn, referral, "follow_up_meeting", "Familien var på ferie.", "anna", check.clock.at
        )
    check.clock.at = T0 + timedelta(days=74)
    check.run()
    last = alert_mails(store)[-2:]
    assert [m["kind"] for m in last] == ["follow_up_meeting; level=breach; resolved"] * 2
    assert "skriftlig forklaring" in last[0]["body"]

    # the next follow-up after the next meeting is a new round: it alerts again
    with store.write() as conn:
        pathways.record_meeting(
            conn,
            referral,
            meeting("opfoelgning", T0 + timedelta(days=80)),
            "anna",
            check.clock.at,
            RuleBook(),
        )
    check.clock.at = T0 + timedelta(days=80 + 43)
    check.run()
    rows = [r for r in alert_rows(store) if r[1] == "follow_up_meeting"]
    assert [(level, resolved) for _, _, level, resolved in rows] == [("breach", True), ("breach", False)]

    with store.read() as conn:  # the statistics count the pathway, its meetings and the explanation
        totals = statistics(conn, date(2026, 3, 1), date(2026, 3, 31), MUNICIPALITIES).totals
    assert (totals.pathways_started, totals.startup_meetings, totals.startup_meetings_in_time) == (1, 1, 0)
    assert (totals.follow_up_meetings, totals.follow_up_meetings_in_time, totals.explanations) == (1, 1, 1)


def test_concurrent_checks_raise_a_meeting_alert_once(store: Store) -> None:
    started(store)
    checks = [Checker(store, T0 + timedelta(days=29)) for _ in range(3)]
    for check in checks:
        check.run()
    assert [m["kind"] for m in alert_mails(store)] == ["startup_meeting; level=breach; raised"] * 2
