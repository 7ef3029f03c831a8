"""Deadlines: the clock table, the daily emptying, exceptions, alerts exactly once, and the report."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from postkasse import cli
from postkasse.clock import COPENHAGEN
from postkasse.committee import referrals
from postkasse.committee.referrals import NewReferral, TransitionError
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.alerts import Alerter
from postkasse.deadlines.assess import assess
from postkasse.deadlines.rules import RuleBook, Rules
from postkasse.flows.alerts import SendAlert, SendResolved, run_check
from postkasse.pipeline import Pipeline
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Received, Store
from postkasse.store import messages as stored_messages
from postkasse.store.schema import deadline_alerts, outbox, outgoing_mail


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Copenhagen wall-clock time, as UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=COPENHAGEN).astimezone(UTC)


CALENDAR = Rules()
WORKING = Rules(working_days=True)

# (why, rules, received (UTC), warning (UTC), due (UTC))
CLOCK_TABLE = [
    (
        "just before midnight: the day of receipt is the Danish one",
        CALENDAR,
        local(2026, 11, 23, 23, 59),
        local(2026, 11, 29, 23, 59),
        local(2026, 12, 1, 23, 59),
    ),
    (
        "spring change (29 March 2026): the same local time, one hour less in UTC",
        CALENDAR,
        utc(2026, 3, 25, 11, 0),  # 12:00 CET
        utc(2026, 3, 31, 10, 0),  # 12:00 CEST
        utc(2026, 4, 2, 10, 0),
    ),
    (
        "due in the hour the spring change skips: 02:30 does not exist, so 03:30 CEST",
        CALENDAR,
        utc(2026, 3, 21, 1, 30),  # 02:30 CET
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST
    ),
    (
        "autumn change (25 October 2026): the same local time, one hour more in UTC",
        CALENDAR,
        utc(2026, 10, 20, 10, 0),  # 12:00 CEST
        utc(2026, 10, 26, 11, 0),  # 12:00 CET
        utc(2026, 10, 28, 11, 0),
    ),
    (
        "due in the hour the autumn change repeats: the first 02:30, still summer time",
        CALENDAR,
        utc(2026, 10, 17, 0, 30),  # 02:30 CEST
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, before the clocks go back
    ),
    (
        "across the new year, received at 23:30 on New Year's Eve",
        CALENDAR,
        local(2026, 12, 31, 23, 30),
        local(2027, 1, 6, 23, 30),
        local(2027, 1, 8, 23, 30),
    ),
    (
        "received at 00:30 on New Year's Day, still 31 December in UTC",
        CALENDAR,
        utc(2026, 12, 31, 23, 30),
        local(2027, 1, 7, 0, 30),
        local(2027, 1, 9, 0, 30),
    ),
    (
        "working days over Easter 2027: Maundy Thursday to Easter Monday and the weekend do not count",
        WORKING,
        local(2027, 3, 24, 10, 0),  # Wednesday before Easter
        local(2027, 4, 7, 0, 0),  # end of Tuesday 6 April, the 6th working day
        local(2027, 4, 9, 0, 0),  # end of Thursday 8 April, the 8th
    ),
    (
        "working days: a Friday-night message starts counting on Monday",
        WORKING,
        local(2026, 11, 27, 23, 59),
        local(2026, 12, 8, 0, 0),  # end of Monday 7 December, the 6th working day
        local(2026, 12, 10, 0, 0),  # end of Wednesday 9 December, the 8th
    ),
    (
        "working days over Christmas and the new year",
        WORKING,
        local(2026, 12, 22, 9, 0),
        local(2027, 1, 1, 0, 0),  # 23, 24, 28, 29, 30, 31 December
        local(2027, 1, 6, 0, 0),  # 1 January is a holiday: 4 and 5 January
    ),
]


@pytest.mark.parametrize(
    ("why", "rules", "received", "warning", "due"), CLOCK_TABLE, ids=[c[0] for c in CLOCK_TABLE]
)
def test_handling_deadline_on_the_danish_clock(
    why: str, rules: Rules, received: datetime, warning: datetime, due: datetime
) -> None:
    assert rules.handling(received) == (warning, due), why


def test_working_day_mode_counts_with_the_danish_calendar() -> None:
    received = local(2026, 4, 1, 12, 0)  # Wednesday before Easter 2026
    assert CALENDAR.handling(received)[1] == local(2026, 4, 9, 12, 0)
    # 2, 3 April (Maundy Thursday, Good Friday) and 6 April (Easter Monday) are holidays:
    # 7, 8, 9, 10, 13, 14, 15, 16 April.
    assert WORKING.handling(received)[1] == local(2026, 4, 17, 0, 0)


# --- the store -------------------------------------------------------------------------------------

T0 = local(2026, 3, 28, 12, 0)  # Saturday noon, the day before the spring change
FAVRSKOV = "koordination@favrskov.example"
OPS = "drift@postkasse.example"
MUNICIPALITIES = Municipalities(
    [
        replace(m, notification_address=FAVRSKOV) if m.code == "0710" else m
        for m in Municipalities.load(DEFAULT_MUNICIPALITIES).by_code.values()
    ],
    Municipalities.load(DEFAULT_MUNICIPALITIES).regions,
)


def add(
    store: Store,
    received: datetime,
    municipality: str | None = "0710",
    urgent: bool = False,
    rules: RuleBook | None = None,
) -> int:
    """A referral the mailbox accepted at `received` and routed (or triaged) at once."""
    item = Received(
        "smtp", "laege@klinik.example", ("postkasse@localhost",), "127.0.0.1:1", True, received, b"x"
    )
    warn_at, due_at = (rules or RuleBook()).for_municipality(municipality).handling(received)
    with store.write() as conn:
        (saved,) = stored_messages.save(conn, [item], "route", received)
        return referrals.create(
            conn,
            NewReferral(
                saved.message_id,
                municipality,
                None if municipality else "no_cpr",
                (),
                (),
                (),
                "0102154123",
                "Anna Hansen",
                "Henvisning om Anna",
                urgent,
                received,
                warn_at,
                due_at,
            ),
            received,
        )


def levels(store: Store, at: datetime, rules: RuleBook | None = None) -> dict[tuple[int, str], str]:
    with store.read() as conn:
        found = assess(conn, at, rules or RuleBook())
    return {(f.referral_id, f.deadline): f.level for f in found.findings}


def test_daily_emptying_counts_elapsed_hours_on_weekends_and_across_daylight_saving(store: Store) -> None:
    referral = add(store, T0)
    assert levels(store, T0 + timedelta(hours=19, minutes=59)) == {}
    assert levels(store, T0 + timedelta(hours=20)) == {(referral, "emptying"): "warning"}
    # 24 hours later is 13:00 on Sunday by the clock: the night lost an hour to summer time.
    assert levels(store, local(2026, 3, 29, 12, 59)) == {(referral, "emptying"): "warning"}
    assert levels(store, local(2026, 3, 29, 13, 0)) == {(referral, "emptying"): "breach"}
    with store.write() as conn:
        referrals.pull(conn, referral, local(2026, 3, 29, 14, 0), "favrskov")
    assert levels(store, local(2026, 3, 29, 14, 0)) == {}


def test_municipality_emptying_status_and_its_own_rules(store: Store) -> None:
    rules = RuleBook(
        Rules(), {"0751": Rules(emptying_warning=timedelta(hours=40), emptying_breach=timedelta(hours=48))}
    )
    add(store, T0, "0710", rules=rules)
    add(store, T0, "0751", rules=rules)
    at = T0 + timedelta(hours=30)
    with store.read() as conn:
        found = assess(conn, at, rules, ["0710", "0751", "0101"])
    status = {code: e.level for code, e in found.municipalities.items()}
    assert status == {"0710": "breach", "0751": "ok", "0101": "ok"}
    assert found.municipalities["0751"].waiting == 1
    assert found.municipalities["0751"].due == T0 + timedelta(hours=48)
    assert found.municipalities["0101"].oldest_since is None


def test_handling_deadline_until_handled_and_an_exception_stops_it(store: Store) -> None:
    late, excepted, done = add(store, T0), add(store, T0), add(store, T0)
    with store.write() as conn:
        for referral in (late, excepted, done):
            referrals.pull(conn, referral, T0 + timedelta(hours=1), "favrskov")
        referrals.decide(conn, done, "closed", None, None, T0 + timedelta(days=2), "favrskov")
        referrals.record_exception(
            conn, excepted, "authority_case", "Sagen behandles som myndighedssag", T0, "favrskov"
        )
        with pytest.raises(TransitionError):
            referrals.record_exception(conn, done, "medical_reason", "x", T0, "favrskov")
        with pytest.raises(ValueError, match="note"):
            referrals.record_exception(conn, late, "medical_reason", "  ", T0, "favrskov")
    due = local(2026, 4, 5, 12, 0)  # eight days later, on summer time
    assert levels(store, due - timedelta(days=2, seconds=1)) == {}
    assert levels(store, due - timedelta(days=2)) == {(late, "handling"): "warning"}
    assert levels(store, due) == {(late, "handling"): "breach"}
    with store.read() as conn:
        (event,) = [e for e in referrals.events(conn, excepted) if e.action == "exception"]
    assert event.detail == {"reason": "authority_case", "note": "Sagen behandles som myndighedssag"}


def test_a_referral_assigned_from_triage_gets_the_municipalitys_rules(store: Store) -> None:
    rules = RuleBook(Rules(), {"0710": Rules(working_days=True)})
    referral = add(store, T0, None, rules=rules)
    assert levels(store, T0 + timedelta(days=8), rules) == {(referral, "handling"): "breach"}
    with store.write() as conn:
        referrals.assign(
            conn, referral, "0710", "Skolen oplyser adressen", T0 + timedelta(hours=2), "ops:anne", rules
        )
    # Working days from receipt (Saturday 28 March): 30, 31 March, 1, 7, 8, 9, 10, 13 April; Easter's
    # 2, 3 and 6 April do not count. Warning at the end of the 6th, due at the end of the 8th.
    assert levels(store, local(2026, 4, 9, 23, 59), rules) == {(referral, "emptying"): "breach"}
    assert levels(store, local(2026, 4, 10, 0, 0), rules) == {
        (referral, "handling"): "warning",
        (referral, "emptying"): "breach",
    }
    assert levels(store, local(2026, 4, 14, 0, 0), rules)[(referral, "handling")] == "breach"


# --- alerts ----------------------------------------------------------------------------------------


class Checker:
    """The periodic check as the daemon runs it, with the clock in the test's hand."""

    def __init__(self, store: Store, at: datetime) -> None:
        self.store = store
        self.clock = _Clock(at)
        self.alerter = Alerter(RuleBook(), MUNICIPALITIES, "postkasse@localhost", OPS)
        steps = [SendAlert(self.alerter), SendResolved(self.alerter)]
        self.pipeline = Pipeline(steps, store, self.clock, timedelta(minutes=5))

    def run(self) -> None:
        """The check, then the steps that write its mails (`send` is left waiting: no relay here)."""
        for work in run_check(self.pipeline, self.alerter):
            self.pipeline.run(work.outbox_id, lambda _: None)


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def alert_mails(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(
            select(outgoing_mail.c.recipient, outgoing_mail.c.raw, outgoing_mail.c.referral_id)
            .where(outgoing_mail.c.kind == "alert")
            .order_by(outgoing_mail.c.id)
        ).all()
    found = []
    for row in rows:
        mail = message_from_bytes(row.raw, policy=policy.default)
        found.append(
            {
                "to": row.recipient,
                "subject": str(mail["Subject"]),
                "kind": str(mail["X-Postkasse-Alert"]),
                "body": mail.get_body().get_content(),  # type: ignore[union-attr]
                "raw": row.raw,
            }
        )
    return found


def alert_rows(store: Store) -> list[tuple[int, str, str, bool]]:
    with store.read() as conn:
        rows = conn.execute(select(deadline_alerts).order_by(deadline_alerts.c.id)).all()
    return [(r.referral_id, r.deadline, r.level, r.resolved_at is not None) for r in rows]


def test_one_alert_per_referral_per_level_then_one_when_it_clears(store: Store) -> None:
    referral = add(store, T0)
    check = Checker(store, T0 + timedelta(hours=19))
    check.run()
    assert alert_mails(store) == []

    check.clock.at = T0 + timedelta(hours=20, minutes=1)
    check.run()
    check.run()
    mails = alert_mails(store)
    assert sorted(m["to"] for m in mails) == [OPS, FAVRSKOV]
    ref = f"PK-{referral:06d}"
    for mail in mails:
        assert ref in mail["subject"] and "Favrskov Kommune" in mail["subject"]
        assert mail["kind"] == "emptying; level=warning; raised"
        for secret in (b"0102154123", b"010215", b"Anna", b"Henvisning om"):
            assert secret not in mail["raw"]

    check.clock.at = T0 + timedelta(hours=25)
    for _ in range(3):
        check.run()
    assert [m["kind"] for m in alert_mails(store)][2:] == ["emptying; level=breach; raised"] * 2

    # A restart: a new store connection and a new alerter find the alerts already raised.
    again = Checker(Store(store.engine.url.render_as_string(hide_password=False)), check.clock.at)
    again.run()
    assert len(alert_mails(store)) == 4

    with store.write() as conn:
        referrals.pull(conn, referral, T0 + timedelta(hours=26), "favrskov")
    check.clock.at = T0 + timedelta(hours=26)
    check.run()
    check.run()
    resolved = alert_mails(store)[4:]
    assert [m["kind"] for m in resolved] == ["emptying; level=breach; resolved"] * 2
    assert "hentet" in resolved[0]["body"]
    assert alert_rows(store) == [
        (referral, "emptying", "warning", True),
        (referral, "emptying", "breach", True),
    ]
    with store.read() as conn:
        sends = conn.execute(select(func.count()).select_from(outbox).where(outbox.c.kind == "send")).scalar()
    assert sends == 6  # every mail was handed to the `send` step, once


def test_checks_from_several_daemons_at_once_alert_once(store: Store) -> None:
    for _ in range(5):
        add(store, T0)
    url = store.engine.url.render_as_string(hide_password=False)
    checkers = [Checker(Store(url), T0 + timedelta(days=9)) for _ in range(4)]
    start = threading.Barrier(len(checkers))
    errors: list[BaseException] = []

    def run(checker: Checker) -> None:
        start.wait()
        try:
            for _ in range(3):
                checker.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in checkers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Five referrals, each past the emptying and the handling breach: ten alerts, two mails each.
    assert len(alert_rows(store)) == 10
    assert len(alert_mails(store)) == 20


def test_a_referral_pulled_while_the_check_reads_raises_nothing(store: Store) -> None:
    """The check reads what is late before its write transaction; a committee pulling the referral in
    between must not get an alert about a queue it has just emptied."""
    waiting, pulled = add(store, T0), add(store, T0)
    check = Checker(store, T0 + timedelta(hours=25))
    with store.read() as conn:
        survey = check.alerter.survey(conn, check.clock.now())
    assert {f.referral_id for f in survey.found.findings} == {waiting, pulled}
    with store.write() as conn:
        referrals.pull(conn, pulled, T0 + timedelta(hours=25), "favrskov")
    with store.write() as conn:
        result = check.alerter.apply(conn, survey)
    assert {(f.referral_id, f.deadline) for f in result.raised} == {(waiting, "emptying")}
    assert alert_rows(store) == [(waiting, "emptying", "breach", False)]


def test_triage_alerts_go_to_operations_and_resolve_when_assigned(store: Store) -> None:
    referral = add(store, T0, None)
    check = Checker(store, T0 + timedelta(days=7))
    check.run()
    (mail,) = alert_mails(store)
    assert mail["to"] == OPS and "manuel sortering" in mail["subject"]
    with store.write() as conn:
        referrals.assign(conn, referral, "0710", "Adressen er fundet", check.clock.at, "ops:anne", RuleBook())
    check.run()
    told = alert_mails(store)[1:]
    assert sorted((m["to"], m["kind"]) for m in told) == [
        (OPS, "handling; level=warning; raised"),
        (FAVRSKOV, "handling; level=warning; raised"),
    ]
    assert all("Favrskov Kommune" in m["subject"] for m in told)
    with store.write() as conn:
        referrals.pull(conn, referral, check.clock.at, "favrskov")
        referrals.decide(conn, referral, "joint_pathway", None, None, check.clock.at, "favrskov")
    check.run()
    cleared = alert_mails(store)[3:]
    assert sorted((m["to"], m["kind"]) for m in cleared) == [
        (OPS, "handling; level=warning; resolved"),
        (FAVRSKOV, "handling; level=warning; resolved"),
    ]
    assert all(resolved for *_, resolved in alert_rows(store))


def test_urgent_alerts_the_committee_at_once(store: Store) -> None:
    referral = add(store, T0, urgent=True)
    quiet = add(store, T0)
    alerter = Alerter(RuleBook(), MUNICIPALITIES, "postkasse@localhost", OPS)
    with store.write() as conn:
        follow = alerter.urgent(conn, referral, T0)
        assert alerter.urgent(conn, referral, T0) == []
        assert alerter.urgent(conn, quiet, T0) == []
    assert len(follow) == 2
    assert sorted(m["to"] for m in alert_mails(store)) == [OPS, FAVRSKOV]
    assert all(m["kind"] == "urgent; level=urgent; raised" for m in alert_mails(store))


def test_report_as_of_a_moment_for_operators_and_scripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'pk.db'}"
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", url)
    assert cli.main(["migrate"]) == 0
    store = Store(url)
    waiting = add(store, T0)
    pulled = add(store, T0 - timedelta(days=7))
    with store.write() as conn:
        referrals.pull(conn, pulled, T0 - timedelta(days=6), "favrskov")
    capsys.readouterr()

    # Friday afternoon, a week later: what is due, as of then, changing nothing.
    assert cli.main(["deadlines", "report", "--at", "2026-04-03T16:00", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["at"] == "2026-04-03T16:00:00+02:00"
    assert report["municipalities"]["0710"]["emptying"] == "breach"
    assert report["municipalities"]["0751"]["emptying"] == "ok"
    assert len(report["municipalities"]) == 98
    assert {(r["id"], r["deadline"], r["level"], r["due"]) for r in report["referrals"]} == {
        (pulled, "handling", "breach", "2026-03-29T12:00:00+02:00"),  # 12:00 CET + 8 days, on summer time
        (waiting, "emptying", "breach", "2026-03-29T13:00:00+02:00"),
        (waiting, "handling", "warning", "2026-04-05T12:00:00+02:00"),
    }
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(deadline_alerts)).scalar() == 0

    assert cli.main(["deadlines", "report", "--at", "2026-04-03T16:00"]) == 0
    text = capsys.readouterr().out
    assert f"PK-{waiting:06d}" in text and "OVERSKREDET" in text
    assert "0102154123" not in text
    assert cli.main(["deadlines", "report", "--at", "fredag"]) == 2
