"""Transferring a referral to another municipality through the API, on both stores: it arrives there as new
with its history and fresh clocks, the first committee sees it no more, and the sender is told once."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from postkasse.committee.actions import Actions
from postkasse.deadlines.rules import Rules
from postkasse.routing.municipalities import Unit
from postkasse.store import Store
from postkasse.store.schema import audit, outgoing_mail
from tests.test_api import World, make_world


@pytest.fixture
def world(store: Store) -> Iterator[World]:
    yield from make_world(store)


def actions(world: World) -> Actions:
    found: Actions = world.app.state.api.actions
    return found


def test_a_transferred_referral_moves_with_its_history_and_new_clocks(world: World) -> None:
    referral = world.ids["favrskov"]
    world.call("POST", f"/api/v1/referrals/{referral}/pull", "favrskov")
    world.call("POST", f"/api/v1/referrals/{referral}/notes", "favrskov", json={"text": "Familien flytter."})
    received = world.call("GET", f"/api/v1/referrals/{referral}", "favrskov").json()["received_at"]
    world.clock.advance(timedelta(days=3))
    body = {"municipality": "0751", "reason": "moved", "note": "Barnet er flyttet til Aarhus."}
    moved = world.call("POST", f"/api/v1/referrals/{referral}/transfer", "favrskov", json=body)
    assert moved.status_code == 200
    assert moved.json() == {"reference": f"PK-{referral:06d}", "municipality": "0751", "state": "new"}

    for path in ("", "/raw"):
        assert world.call("GET", f"/api/v1/referrals/{referral}{path}", "favrskov").status_code == 404
    queue = world.call("GET", "/api/v1/municipalities/0751/referrals", "aarhus").json()["items"]
    assert referral in [item["id"] for item in queue]
    shown = world.call("GET", f"/api/v1/referrals/{referral}", "aarhus").json()
    assert (shown["state"], shown["municipality"], shown["received_at"]) == ("new", "0751", received)
    assert [(t["from"], t["to"], t["reason"]) for t in shown["transfers"]] == [("0710", "0751", "moved")]
    assert [n["text"] for n in shown["notes"]] == ["Familien flytter."]
    assert "pull" in [h["action"] for h in shown["history"]]
    _, due = Rules().handling(world.clock.now())
    assert shown["deadline"] == due.isoformat()  # counted from the transfer, not from receipt

    with world.store.read() as conn:
        mails = conn.execute(select(outgoing_mail.c.kind, outgoing_mail.c.raw)).all()
        actors = set(conn.execute(select(audit.c.actor).where(audit.c.referral_id == referral)).scalars())
    assert [kind for kind, _ in mails] == ["committee_message"]  # the sender is told, once
    told = message_from_bytes(mails[0].raw, policy=policy.default).get_body().get_content()  # type: ignore[union-attr]
    assert "overført til Aarhus Kommunes koordinationsudvalg" in told and "0102154123" not in told
    assert {"favrskov-sag", "aarhus-sag"} <= actors

    stats = world.call("GET", "/api/v1/stats?from=2026-03-01&to=2026-03-31", "ops").json()
    by_code = {row["municipality"]: row for row in stats["rows"]}
    assert by_code["0710"]["transferred_out_moved"] == 1 and by_code["0751"]["transferred_in_moved"] == 1
    assert stats["totals"]["transferred_out_moved"] == stats["totals"]["transferred_in_moved"] == 1

    again = world.call("POST", f"/api/v1/referrals/{referral}/transfer", "aarhus", json=body)
    assert (again.status_code, again.json()["code"]) == (409, "invalid_state")  # already in 0751


def test_a_transfer_to_a_municipality_outside_the_mailbox_goes_to_triage(world: World) -> None:
    found = actions(world).municipalities
    found.by_code["0727"] = dataclasses.replace(found.by_code["0727"], participating=False)
    referral = world.ids["favrskov"]
    body = {"municipality": "0727", "reason": "wrong_municipality", "note": "Hører til Odder."}
    moved = world.call("POST", f"/api/v1/referrals/{referral}/transfer", "favrskov", json=body)
    assert moved.json()["state"] == "triage"
    triaged = world.call("GET", "/api/v1/triage", "ops").json()["referrals"]
    assert [(t["id"], t["reason"]) for t in triaged if t["id"] == referral] == [
        (referral, "not_participating")
    ]


def test_a_transfer_needs_a_reason_a_note_and_a_real_municipality(world: World) -> None:
    referral = world.ids["favrskov"]
    url = f"/api/v1/referrals/{referral}/transfer"
    for body, field in (
        ({"municipality": "0751", "reason": "bored", "note": "x"}, "reason"),
        ({"municipality": "0751", "reason": "moved", "note": " "}, "note"),
        ({"municipality": "9999", "reason": "moved", "note": "x"}, "municipality"),
    ):
        refused = world.call("POST", url, "favrskov", json=body)
        assert refused.status_code == 422 and field in refused.text, body
    other = world.call("POST", url, "aarhus", json={"municipality": "0751", "reason": "moved", "note": "x"})
    assert other.status_code == 404


def test_a_pathway_moves_along_and_its_plan_goes_with_a_forward(world: World) -> None:
    found = actions(world).municipalities
    unit = Unit("ppr", "PPR Aarhus", "ppr@aarhus.example", "PPR")
    found.by_code["0751"] = dataclasses.replace(found.by_code["0751"], units=(unit,))
    referral = world.ids["favrskov"]
    world.call("POST", f"/api/v1/referrals/{referral}/pull", "favrskov")
    responsible = {"name": "Mette", "title": "Sundhedsplejerske", "telephone": "12345678"}
    world.call(
        "POST",
        f"/api/v1/referrals/{referral}/decision",
        "favrskov",
        json={"outcome": "joint_pathway", "responsible": responsible},
    )
    meeting = {
        "kind": "opstart",
        "held_at": "2026-04-01T10:00:00+02:00",
        "plan": {"goals": ["Trives i skolen"]},
    }
    world.call("POST", f"/api/v1/referrals/{referral}/meetings", "favrskov", json=meeting)
    body = {"municipality": "0751", "reason": "moved", "note": "Flyttet."}
    world.call("POST", f"/api/v1/referrals/{referral}/transfer", "favrskov", json=body)
    assert world.call("GET", f"/api/v1/referrals/{referral}/plan", "aarhus").json()["content"]["goals"] == [
        "Trives i skolen"
    ]
    world.call("POST", f"/api/v1/referrals/{referral}/pull", "aarhus")
    wrong = world.call(
        "POST", f"/api/v1/referrals/{referral}/decision", "aarhus", json={"outcome": "forwarded", "unit": "x"}
    )
    assert wrong.status_code == 422 and "/units" in wrong.json()["detail"]
    world.call(
        "POST",
        f"/api/v1/referrals/{referral}/decision",
        "aarhus",
        json={"outcome": "forwarded", "unit": "ppr"},
    )
    with world.store.read() as conn:
        (raw,) = conn.execute(select(outgoing_mail.c.raw).where(outgoing_mail.c.kind == "forward")).scalars()
    sent = message_from_bytes(raw, policy=policy.default)
    kinds = [part.get_content_type() for part in sent.iter_attachments()]  # type: ignore[attr-defined]
    assert kinds == ["message/rfc822", "application/pdf"]


def test_a_forward_to_a_unit_without_an_address_is_undelivered_until_it_has_one(world: World) -> None:
    found = actions(world).municipalities
    silent = Unit("familie", "Familieafdelingen", None, "familieafdeling")
    found.by_code["0710"] = dataclasses.replace(found.by_code["0710"], units=(silent,))
    referral = world.ids["favrskov"]
    world.call("POST", f"/api/v1/referrals/{referral}/pull", "favrskov")
    decided = world.call(
        "POST",
        f"/api/v1/referrals/{referral}/decision",
        "favrskov",
        json={"outcome": "forwarded", "unit": "familie"},
    ).json()
    assert decided["forward"] == {"unit": "familie", "delivery": "no_address"}
    undelivered = world.call("GET", "/api/v1/triage", "ops").json()["undelivered_forwards"]
    assert [(u["id"], u["why"]) for u in undelivered] == [(referral, "no_address")]
    retry = f"/api/v1/triage/forwards/{referral}/retry"
    assert world.call("POST", retry, "ops").json()["code"] == "unit_unreachable"

    fixed = dataclasses.replace(silent, address="familie@favrskov.example")
    found.by_code["0710"] = dataclasses.replace(found.by_code["0710"], units=(fixed,))
    assert world.call("POST", retry, "ops").status_code == 202
    assert world.call("GET", "/api/v1/triage", "ops").json()["undelivered_forwards"] == []
    with world.store.read() as conn:
        sent = conn.execute(
            select(outgoing_mail.c.recipient).where(outgoing_mail.c.kind == "forward")
        ).scalars()
        assert list(sent) == ["familie@favrskov.example"]
    assert world.call("POST", retry, "ops").json()["code"] == "invalid_state"  # on its way: nothing to redo
