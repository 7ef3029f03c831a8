"""Referral states and events: triage, assign, pull, decide, each change an event; routing never loses one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection

from postkasse import cli
from postkasse.clock import FixedClock
from postkasse.committee import referrals
from postkasse.committee.referrals import NewReferral, TransitionError
from postkasse.deadlines.rules import RuleBook
from postkasse.pipeline import Next, Pipeline, StepFailed
from postkasse.routing.policy import ROUTING_FAILED
from postkasse.store import Received, Store, outbox
from postkasse.store import messages as stored_messages
from postkasse.store.migrate import upgrade
from tests.test_pipeline import route_step

T0 = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)  # New Year's Eve, already 1 January in Denmark


def message(store: Store, raw: bytes = b"Subject: x\r\n\r\nHej\r\n") -> int:
    item = Received("smtp", "laege@klinik.example", ("postkasse@localhost",), "127.0.0.1:1", False, T0, raw)
    with store.write() as conn:
        (saved,) = stored_messages.save(conn, [item], "route", T0)
    return saved.message_id


def triaged(conn: Connection, message_id: int) -> int:
    return referrals.create(
        conn,
        NewReferral(
            message_id,
            None,
            "no_cpr",
            ("no_cpr",),
            ("Intet CPR.",),
            (),
            None,
            None,
            "Henvisning",
            False,
            T0,
            T0 + timedelta(days=6),
            T0 + timedelta(days=8),
        ),
        T0,
    )


def test_triage_assign_pull_decide_with_an_event_for_each(store: Store) -> None:
    message_id = message(store)
    with store.write() as conn:
        referral_id = triaged(conn, message_id)
        referrals.assign(
            conn, referral_id, "0710", "Barnet bor i Hinnerup ifølge skolen", T0, "ops:anne", RuleBook()
        )
        referrals.pull(conn, referral_id, T0 + timedelta(hours=1), "favrskov-sag")
        referrals.decide(
            conn,
            referral_id,
            "forwarded",
            "PPR Favrskov",
            "Sendt videre",
            T0 + timedelta(days=2),
            "favrskov-sag",
        )
    with store.read() as conn:
        referral = referrals.for_message(conn, message_id)
        history = [(e.action, e.from_state, e.to_state, e.actor) for e in referrals.events(conn, referral_id)]
    assert (referral.state, referral.municipality, referral.outcome, referral.outcome_detail) == (
        "handled",
        "0710",
        "forwarded",
        "PPR Favrskov",
    )
    assert history == [
        ("triaged", None, "triage", "system"),
        ("assign", "triage", "new", "ops:anne"),
        ("pull", "new", "pulled", "favrskov-sag"),
        ("decide", "pulled", "handled", "favrskov-sag"),
    ]


def test_changes_out_of_order_are_refused(store: Store) -> None:
    message_id = message(store)
    with store.write() as conn:
        referral_id = triaged(conn, message_id)
    for change in (
        lambda c: referrals.pull(c, referral_id, T0, "x"),
        lambda c: referrals.decide(c, referral_id, "closed", None, None, T0, "x"),
    ):
        with pytest.raises(TransitionError, match="is triage"), store.write() as conn:
            change(conn)
    with pytest.raises(ValueError, match="needs a note"), store.write() as conn:
        referrals.assign(conn, referral_id, "0710", "  ", T0, "ops", RuleBook())
    with pytest.raises(LookupError), store.write() as conn:
        referrals.pull(conn, 999_999, T0, "x")


@pytest.mark.parametrize(
    ("outcome", "detail", "error"),
    [
        ("forwarded", None, "needs the unit"),
        ("returned", "", "needs the reason"),
        ("maybe", None, "unknown outcome"),
    ],
)
def test_decisions_need_their_detail(store: Store, outcome: str, detail: str | None, error: str) -> None:
    message_id = message(store)
    with store.write() as conn:
        referral_id = triaged(conn, message_id)
        referrals.assign(conn, referral_id, "0710", "note", T0, "ops", RuleBook())
        referrals.pull(conn, referral_id, T0, "x")
    with pytest.raises(ValueError, match=error), store.write() as conn:
        referrals.decide(conn, referral_id, outcome, detail, None, T0, "x")


def test_a_resend_routed_before_its_original_is_shown_once(store: Store) -> None:
    """Workers take steps in any order: the original is still the one referral, the resend noted on it."""
    raw = b"Message-ID: <henv-1@klinik.example>\r\nSubject: Henvisning\r\n\r\nHej\r\n"
    original, resend = message(store, raw), message(store, raw)
    step = route_step()
    with store.write() as conn:
        after_resend = step.run(conn, resend, T0)
    with store.write() as conn:
        after_original = step.run(conn, original, T0)
    with store.read() as conn:
        referral = referrals.for_message(conn, original)
        assert referral is not None
        assert referrals.for_message(conn, resend) is None
        noted = [e.detail for e in referrals.events(conn, referral.id) if e.action == "duplicate_received"]
    assert noted == [{"message_id": resend}]
    assert [("receipt", original), ("receipt", resend)] == list(after_resend)
    assert list(after_original) == []


def test_routing_that_keeps_failing_ends_in_triage(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    message_id = message(store)
    step = route_step()

    def broken(*_: object) -> None:
        raise RuntimeError("registry timed out")

    monkeypatch.setattr(step.router, "decide_facts", broken)
    pipeline = Pipeline([step], store, FixedClock(T0), timedelta(minutes=5))
    with store.read() as conn:
        (work,) = outbox.due(conn, None, 10)
    sent: list[Next] = []
    for _ in range(step.max_attempts - 1):
        with pytest.raises(StepFailed, match="RuntimeError"):
            pipeline.run(work.id, sent.extend)
    pipeline.run(work.id, sent.extend)
    with store.read() as conn:
        referral = referrals.for_message(conn, message_id)
        assert outbox.backlog(conn) == {"failed": 1, "pending": 1}
    assert (referral.state, referral.triage_reason) == ("triage", ROUTING_FAILED)
    assert [n.kind for n in sent] == ["receipt"]  # the sender still hears that it waits for sorting


def test_route_explain_json_for_scripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", f"sqlite:///{tmp_path / 'pk.db'}")
    eml = tmp_path / "henvisning.eml"
    eml.write_bytes(b"Subject: Henvisning\r\n\r\nCPR: 020317-4222\r\nPostnr: 4100\r\n")
    assert cli.main(["route", "--explain", str(eml), "--json", "--on", "2026-11-23"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "triage"
    assert result["municipality"] is None
    assert result["reasons"] == ["unknown_postal_code"]  # no postal codes imported into this store
    assert result["flags"] == []
    assert cli.main(["route", "--explain", str(eml)]) == 0
    assert "Beslutning: triage (unknown_postal_code)" in capsys.readouterr().out


def test_operator_lists_triage_and_assigns_from_the_shell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'pk.db'}"
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", url)
    store = Store(url)
    upgrade(store)
    message_id = message(store, b"Subject: Barn 010215-4123\r\n\r\nHej\r\n")
    with store.write() as conn:
        referral_id = triaged(conn, message_id)

    assert cli.main(["triage", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["reason"], listed["text"]) == (referral_id, "no_cpr", "Intet CPR.")
    assert "010215" not in json.dumps(listed)  # the reason, never the contents

    assert (
        cli.main(
            [
                "triage",
                "assign",
                str(referral_id),
                "--municipality",
                "9999",
                "--note",
                "x",
                "--operator",
                "anne",
            ]
        )
        == 2
    )
    assert (
        cli.main(
            [
                "triage",
                "assign",
                str(referral_id),
                "--municipality",
                "0710",
                "--note",
                "Skolen oplyser Hinnerup",
                "--operator",
                "anne",
            ]
        )
        == 0
    )
    assert "now in 0710's queue" in capsys.readouterr().out
    with store.read() as conn:
        referral = referrals.for_message(conn, message_id)
        last = referrals.events(conn, referral_id)[-1]
    assert (referral.state, referral.municipality) == ("new", "0710")
    assert (last.actor, last.detail["note"]) == ("ops:anne", "Skolen oplyser Hinnerup")
    assert cli.main(["triage", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    store.dispose()
