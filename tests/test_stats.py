"""The pilot's statistics against a generated data set whose answers are known by construction: the
module, the API and the command, on both stores. The period 23-29 March 2026 ends on the night summer
time begins, so its last day is 23 hours long and its end is 22:00 UTC, not 23:00."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from postkasse import cli
from postkasse.clock import COPENHAGEN, FixedClock
from postkasse.committee import referrals, tokens
from postkasse.committee.api import Api
from postkasse.committee.audit import AuditLog
from postkasse.committee.referrals import RETURN_REASONS, NewReferral
from postkasse.committee.stats import CSV_COLUMNS, nearest_rank, period, statistics
from postkasse.committee.tokens import Authenticator
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.rules import RuleBook, Rules
from postkasse.pipeline import Pipeline
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Received, Store
from postkasse.store import messages as stored_messages
from postkasse.store.schema import audit
from postkasse.web import create_app

FROM, TO = date(2026, 3, 23), date(2026, 3, 29)
CPR, NAME, SUBJECT = "0102154123", "Anna Hansen", "Henvisning om Anna"


def local(day: int, hour: int, minute: int = 0) -> datetime:
    """A Danish wall-clock time in March 2026, as the store keeps it: UTC."""
    return datetime(2026, 3, day, hour, minute, tzinfo=COPENHAGEN).astimezone(UTC)


@dataclass(frozen=True)
class Case:
    """One referral: where it went, how, and what the committee did, when."""

    at: datetime
    municipality: str | None
    kind: str
    triage: str | None = None  # the triage reason; with a municipality, an operator has since assigned it
    outcome: str | None = None
    reason: str | None = None  # the return reason's code; none given counts as `other`
    hours: float | None = None  # handled this long after the mailbox accepted it
    at_due: bool = False  # handled exactly at its due time
    exception: str | None = None


CASES = [
    # 0710 gp: 00:30 on the first day is 23:30 UTC the day before, and counts
    Case(local(23, 0, 30), "0710", "gp", outcome="returned", reason="missing_information", hours=24),
    Case(local(24, 10), "0710", "gp", outcome="returned", reason="ppr_not_involved", hours=48),
    Case(local(24, 11), "0710", "gp", triage="no_cpr", outcome="joint_pathway", hours=12),
    Case(local(25, 9), "0710", "gp", outcome="forwarded", hours=240),  # two days late
    Case(local(26, 14), "0710", "gp"),  # still new
    # 0710 child psychiatry: 23:30 summer time on the last day is 21:30 UTC, and counts
    Case(local(27, 8), "0710", "child_psychiatry", exception="medical_reason"),  # pulled, clock stopped
    Case(local(29, 23, 30), "0710", "child_psychiatry"),
    Case(local(28, 10), "0710", "child_psychiatry", outcome="closed", hours=1.5),
    # 0751 gp: handled exactly at the deadline is in time; 8 days over the DST change are 191 hours
    Case(local(23, 12), "0751", "gp", outcome="returned", reason="not_target_group", hours=36),
    Case(local(23, 13), "0751", "gp", outcome="returned", reason="not_target_group", at_due=True),
    Case(local(23, 14), "0751", "gp", outcome="returned", hours=100),
    Case(local(25, 12), "0751", "gp", outcome="joint_pathway", hours=240, exception="authority_case"),
    # 0751 somatic ward: local midnight starting the first day is the period's first moment
    Case(
        local(24, 9),
        "0751",
        "somatic_ward",
        triage="ambiguous_postal_code",
        outcome="joint_pathway",
        hours=20.25,
    ),
    Case(local(23, 0), "0751", "somatic_ward"),
    # 0740 other: ten handled, 1 to 10 hours; p50 is rank 5, p90 rank 9 (an interpolation would say 9.1)
    *(
        Case(local(26, 10, n), "0740", "other", outcome="forwarded" if n <= 6 else "closed", hours=n)
        for n in range(1, 11)
    ),
    # waiting in triage
    Case(local(28, 15), None, "gp", triage="no_cpr"),
]
OUTSIDE = [
    Case(local(22, 23, 30), "0710", "gp", outcome="returned", reason="missing_information", hours=2),
    Case(local(30, 0, 0), "0751", "gp", outcome="joint_pathway", hours=2),  # the first moment after
    Case(local(30, 0, 30), "0751", "gp"),  # 22:30 UTC on the 29th: a UTC day would count it
]
# Messages that created no referral: a reply and a resend of the first referral in the period, and a
# reply before it.
LOOSE_MESSAGES = [(local(27, 12), "<svar1@klinik.example>"), (local(27, 13), "<h0@klinik.example>")]
LOOSE_MESSAGES.append((local(22, 12), "<svar2@klinik.example>"))


def group(
    received: int,
    routed: int,
    triaged: int,
    handled: int,
    within: int,
    exceptions: int,
    returned: dict[str, int],
    joint: int,
    forwarded: int,
    closed: int,
    p50: float | None,
    p90: float | None,
) -> dict[str, Any]:
    return {
        "received": received,
        "routed": routed,
        "triaged": triaged,
        "handled": handled,
        "handled_within_deadline": within,
        "exceptions": exceptions,
        "returned": {code: returned.get(code, 0) for code in RETURN_REASONS},
        "returned_total": sum(returned.values()),
        "joint_pathways": joint,
        "forwarded": forwarded,
        "closed": closed,
        "pathways_started": 0,
        "startup_meetings": 0,
        "startup_meetings_in_time": 0,
        "follow_up_meetings": 0,
        "follow_up_meetings_in_time": 0,
        "explanations": 0,
        "transferred_out_moved": 0,
        "transferred_out_wrong_municipality": 0,
        "transferred_in_moved": 0,
        "transferred_in_wrong_municipality": 0,
        "handling_hours_p50": p50,
        "handling_hours_p90": p90,
    }


# Worked out by hand from CASES above.
EXPECTED_ROWS = [
    ("0710", "Favrskov Kommune", "child_psychiatry", group(3, 3, 0, 1, 1, 1, {}, 0, 0, 1, 1.5, 1.5)),
    (
        "0710",
        "Favrskov Kommune",
        "gp",
        group(5, 4, 1, 4, 3, 0, {"missing_information": 1, "ppr_not_involved": 1}, 1, 1, 0, 24.0, 240.0),
    ),
    ("0740", "Silkeborg Kommune", "other", group(10, 10, 0, 10, 10, 0, {}, 0, 6, 4, 5.0, 9.0)),
    (
        "0751",
        "Aarhus Kommune",
        "gp",
        group(4, 4, 0, 4, 3, 1, {"not_target_group": 2, "other": 1}, 1, 0, 0, 100.0, 240.0),
    ),
    ("0751", "Aarhus Kommune", "somatic_ward", group(2, 1, 1, 1, 1, 0, {}, 1, 0, 0, 20.25, 20.25)),
    (None, None, "gp", group(1, 0, 1, 0, 0, 0, {}, 0, 0, 0, None, None)),
]
# Handling hours over all: 1, 1.5, 2..10, 12, 20.25, 24, 36, 48, 100, 191, 240, 240: rank 10 and rank 18.
EXPECTED_TOTALS = group(
    25,
    22,
    3,
    20,
    18,
    2,
    {"missing_information": 1, "ppr_not_involved": 1, "not_target_group": 2, "other": 1},
    3,
    7,
    5,
    9.0,
    191.0,
)
EXPECTED_MESSAGES = len(CASES) + 2


def received(conn: Any, at: datetime, message_id: str) -> int:
    raw = (
        f"From: laege@klinik.example\r\nSubject: {SUBJECT}\r\nMessage-ID: {message_id}\r\n\r\nCPR: {CPR}\r\n"
    )
    item = Received(
        "smtp", "laege@klinik.example", ("postkasse@localhost",), "127.0.0.1:1", True, at, raw.encode()
    )
    (saved,) = stored_messages.save(conn, [item], "route", at)
    return saved.message_id


def build(store: Store) -> None:
    """The data set, through the same functions routing, triage and the committees use."""
    for n, case in enumerate([*CASES, *OUTSIDE]):
        warn_at, due_at = Rules().handling(case.at)
        with store.write() as conn:
            referral_id = referrals.create(
                conn,
                NewReferral(
                    received(conn, case.at, f"<h{n}@klinik.example>"),
                    None if case.triage else case.municipality,
                    case.triage,
                    (case.triage,) if case.triage else ("decided_by_registry",),
                    ("Forklaring.",),
                    (),
                    CPR,
                    NAME,
                    SUBJECT,
                    False,
                    case.at,
                    warn_at,
                    due_at,
                    case.kind,
                ),
                case.at,
            )
            if case.triage and case.municipality:
                referrals.assign(
                    conn,
                    referral_id,
                    case.municipality,
                    "Skolen oplyser adressen",
                    case.at,
                    "ops:anne",
                    RuleBook(),
                )
            if case.exception:
                referrals.record_exception(
                    conn, referral_id, case.exception, "Se journalen", case.at, "udvalg"
                )
            if case.outcome:
                handled_at = due_at if case.at_due else case.at + timedelta(hours=case.hours or 0)
                referrals.pull(conn, referral_id, case.at, "udvalg")
                detail = {"forwarded": "PPR", "returned": "Se brevet"}.get(case.outcome)
                referrals.decide(
                    conn,
                    referral_id,
                    case.outcome,
                    detail,
                    None,
                    handled_at,
                    "udvalg",
                    return_reason=case.reason,
                )
            elif case.exception:
                referrals.pull(conn, referral_id, case.at, "udvalg")
    with store.write() as conn:
        for at, message_id in LOOSE_MESSAGES:
            received(conn, at, message_id)


@pytest.fixture
def data(store: Store) -> Store:
    build(store)
    return store


def expected_json() -> dict[str, Any]:
    return {
        "from": "2026-03-23",
        "to": "2026-03-29",
        "messages": EXPECTED_MESSAGES,
        "totals": EXPECTED_TOTALS,
        "rows": [
            {"municipality": code, "municipality_name": name, "sender_kind": kind, **numbers}
            for code, name, kind, numbers in EXPECTED_ROWS
        ],
    }


def test_the_data_set_is_what_the_expectations_assume(data: Store) -> None:
    """Checks of the construction itself, so a wrong expectation is not mistaken for a wrong query."""
    c2 = CASES[9]
    _, due_at = Rules().handling(c2.at)
    assert (due_at - c2.at) == timedelta(hours=191)
    late = [c for c in CASES if c.hours == 240]
    assert all(Rules().handling(c.at)[1] < c.at + timedelta(hours=240) for c in late)
    first, after = period(FROM, TO)
    assert (first, after) == (datetime(2026, 3, 22, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC))
    assert all(first <= c.at < after for c in CASES)
    assert not any(first <= c.at < after for c in OUTSIDE)
    assert OUTSIDE[2].at.date() == date(2026, 3, 29)  # the trap: the 29th in UTC, the 30th in Denmark


def test_the_pilots_three_questions_and_every_other_number(data: Store) -> None:
    with data.read() as conn:
        found = statistics(conn, FROM, TO, Municipalities.load(DEFAULT_MUNICIPALITIES)).as_json()
    # messages to the mailbox; returned referrals per area; joint pathways
    assert found["messages"] == 27
    returned_by_area = {row["municipality"]: 0 for row in found["rows"]}
    for row in found["rows"]:
        returned_by_area[row["municipality"]] += row["returned_total"]
    assert returned_by_area == {"0710": 2, "0740": 0, "0751": 3, None: 0}
    assert found["totals"]["joint_pathways"] == 3
    assert found == expected_json()


def test_no_personal_data_in_any_form(data: Store) -> None:
    with data.read() as conn:
        found = statistics(conn, FROM, TO, Municipalities.load(DEFAULT_MUNICIPALITIES))
    for text in (json.dumps(found.as_json()), found.as_csv()):
        for secret in (CPR, "010215", NAME, "Anna", SUBJECT, "klinik"):
            assert secret not in text


def test_csv_has_fixed_columns_a_row_per_group_and_a_total(data: Store) -> None:
    with data.read() as conn:
        text = statistics(conn, FROM, TO, Municipalities.load(DEFAULT_MUNICIPALITIES)).as_csv()
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == [
        "municipality",
        "municipality_name",
        "sender_kind",
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
        "returned_missing_information",
        "returned_ppr_not_involved",
        "returned_not_target_group",
        "returned_wrong_municipality",
        "returned_other",
        "handling_hours_p50",
        "handling_hours_p90",
        "messages",
    ]
    assert tuple(lines[0]) == CSV_COLUMNS
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["municipality"], r["sender_kind"]) for r in rows] == [
        ("0710", "child_psychiatry"),
        ("0710", "gp"),
        ("0740", "other"),
        ("0751", "gp"),
        ("0751", "somatic_ward"),
        ("", "gp"),
        ("total", ""),
    ]
    assert rows[3] == {
        "municipality": "0751",
        "municipality_name": "Aarhus Kommune",
        "sender_kind": "gp",
        "received": "4",
        "routed": "4",
        "triaged": "0",
        "handled": "4",
        "handled_within_deadline": "3",
        "exceptions": "1",
        "returned_total": "3",
        "joint_pathways": "1",
        "forwarded": "0",
        "closed": "0",
        "pathways_started": "0",
        "startup_meetings": "0",
        "startup_meetings_in_time": "0",
        "follow_up_meetings": "0",
        "follow_up_meetings_in_time": "0",
        "explanations": "0",
        "transferred_out_moved": "0",
        "transferred_out_wrong_municipality": "0",
        "transferred_in_moved": "0",
        "transferred_in_wrong_municipality": "0",
        "returned_missing_information": "0",
        "returned_ppr_not_involved": "0",
        "returned_not_target_group": "2",
        "returned_wrong_municipality": "0",
        "returned_other": "1",
        "handling_hours_p50": "100.0",
        "handling_hours_p90": "240.0",
        "messages": "",
    }
    triage, total = rows[5], rows[6]
    assert (triage["municipality_name"], triage["handling_hours_p50"], triage["received"]) == (
        "triage",
        "",
        "1",
    )
    assert (total["received"], total["returned_total"], total["joint_pathways"], total["messages"]) == (
        "25",
        "5",
        "3",
        "27",
    )
    assert (total["handling_hours_p50"], total["handling_hours_p90"]) == ("9.0", "191.0")


def test_an_empty_period_has_zero_totals_and_no_rows(data: Store) -> None:
    with data.read() as conn:
        found = statistics(
            conn, date(2025, 1, 1), date(2025, 1, 31), Municipalities.load(DEFAULT_MUNICIPALITIES)
        )
    assert found.as_json() == {
        "from": "2025-01-01",
        "to": "2025-01-31",
        "messages": 0,
        "totals": group(0, 0, 0, 0, 0, 0, {}, 0, 0, 0, None, None),
        "rows": [],
    }
    assert found.as_csv().splitlines()[-1].startswith("total,,,0,0,")


def test_one_day_counts_only_that_danish_day(data: Store) -> None:
    """The 29th is 23 hours long: 22:00 UTC on the 28th up to 22:00 UTC on the 29th."""
    with data.read() as conn:
        found = statistics(conn, TO, TO, Municipalities.load(DEFAULT_MUNICIPALITIES)).as_json()
    assert found["messages"] == 1
    assert [(r["municipality"], r["sender_kind"], r["received"]) for r in found["rows"]] == [
        ("0710", "child_psychiatry", 1)
    ]


@pytest.mark.parametrize(
    ("n", "p50", "p90"),
    [(1, 1, 1), (2, 1, 2), (4, 2, 4), (10, 5, 9), (11, 6, 10), (20, 10, 18), (100, 50, 90)],
)
def test_nearest_rank(n: int, p50: int, p90: int) -> None:
    values = [float(v) for v in range(1, n + 1)]
    assert (nearest_rank(values, 50), nearest_rank(values, 90)) == (p50, p90)
    assert nearest_rank([], 50) is None


def test_a_period_must_run_forwards_and_fit_the_calendar() -> None:
    with pytest.raises(ValueError, match="comes after"):
        period(TO, FROM)
    with pytest.raises(ValueError, match="outside"):
        period(date.min, FROM)
    with pytest.raises(ValueError, match="outside"):
        period(FROM, date.max)


@dataclass
class World:
    client: TestClient
    store: Store
    tokens: dict[str, str]

    def get(self, path: str, who: str) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {self.tokens[who]}"})


@pytest.fixture
def world(data: Store) -> Iterator[World]:
    clock = FixedClock(datetime(2026, 4, 1, 8, tzinfo=UTC))
    api = Api(
        data,
        Authenticator(data),
        clock,
        Municipalities.load(DEFAULT_MUNICIPALITIES),
        Pipeline([], data, clock, timedelta(minutes=5)),
        lambda work: None,
        "postkasse@localhost",
        AuditLog(data),
        RuleBook(),
    )
    with data.write() as conn:
        made = {
            "ops": tokens.create(conn, "drift", "ops", None, clock.now()),
            "favrskov": tokens.create(conn, "favrskov-sag", "committee", "0710", clock.now()),
        }
    with TestClient(create_app(data, api)) as client:
        yield World(client, data, made)
    api.audit_log.close()


def test_the_api_answers_operations_only_and_audits_the_read(world: World) -> None:
    response = world.get("/api/v1/stats?from=2026-03-23&to=2026-03-29", "ops")
    assert response.status_code == 200
    assert response.json() == expected_json()
    with world.store.read() as conn:
        (row,) = conn.execute(select(audit).where(audit.c.action == "stats")).all()
    assert (row.actor, row.referral_id, row.detail) == (
        "drift",
        None,
        {"from": "2026-03-23", "to": "2026-03-29"},
    )

    for path in ("/api/v1/stats?from=2026-03-23&to=2026-03-29", "/api/v1/stats"):
        refused = world.get(path, "favrskov")
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-03-29&to=2026-03-23", "from"),
        ("from=2026-02-30&to=2026-03-23", "from"),
        ("from=2026-03-23", "to"),
        ("from=0001-01-01&to=2026-03-23", "outside"),
        ("from=2026-03-23&to=9999-12-31", "outside"),
    ],
)
def test_the_api_refuses_a_bad_period_with_a_sentence(world: World, query: str, field: str) -> None:
    response = world.get(f"/api/v1/stats?{query}", "ops")
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")
    assert field in response.json()["detail"]


@pytest.fixture
def config_file(data: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("POSTKASSE_DATABASE__URL", raising=False)
    path = tmp_path / "postkasse.toml"
    path.write_text(f'[database]\nurl = "{data.url}"\n', encoding="utf-8")
    return path


def test_the_command_prints_json_and_csv(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(["--config", str(config_file), "stats", "--from", "2026-03-23", "--to", "2026-03-29"]) == 0
    )
    assert json.loads(capsys.readouterr().out) == expected_json()
    argv = [
        "--config",
        str(config_file),
        "stats",
        "--from",
        "2026-03-23",
        "--to",
        "2026-03-29",
        "--format",
        "csv",
    ]
    assert cli.main(argv) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[-1]["municipality"] == "total" and rows[-1]["messages"] == "27"
    assert rows[0]["municipality_name"] == "Favrskov Kommune"


@pytest.mark.parametrize(
    ("start", "end", "says"),
    [
        ("2026-03-32", "2026-03-29", "YYYY-MM-DD"),
        ("i går", "2026-03-29", "YYYY-MM-DD"),
        ("2026-03-29", "2026-03-23", "after"),
    ],
)
def test_the_command_refuses_bad_days(
    config_file: Path, capsys: pytest.CaptureFixture[str], start: str, end: str, says: str
) -> None:
    assert cli.main(["--config", str(config_file), "stats", "--from", start, "--to", end]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and says in captured.err
