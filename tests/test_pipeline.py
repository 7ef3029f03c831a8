"""Pipeline steps run once per outbox row, however often the broker delivers it; failures are counted."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import Worker
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import DataError

from postkasse import logs
from postkasse.clock import FixedClock
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.rules import RuleBook
from postkasse.flows.parse import ParseHeaders
from postkasse.flows.receipt import SendReceipt
from postkasse.flows.route import RouteMessage
from postkasse.pipeline import Follow, Next, Pipeline, Step, StepFailed
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import AgeRange
from postkasse.routing.router import Router
from postkasse.routing.senders import SenderKinds
from postkasse.store import Received, Store, outbox
from postkasse.store import messages as stored_messages
from postkasse.store.schema import message_headers, referrals
from postkasse.tasks import Actors
from postkasse.workers import redrive

T0 = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # the night Denmark moves back to winter time
LEASE = timedelta(minutes=5)
RAW = (
    b"From: =?iso-8859-1?q?S=F8ren_L=E6ge?= <laege@klinik.example>\r\n"
    b"Subject: Henvisning vedr. barn\r\nDate: Sun, 25 Oct 2026 02:30:00 +0100\r\n\r\nHej\r\n"
)


def route_step() -> RouteMessage:
    return RouteMessage(
        Router(Municipalities.load(DEFAULT_MUNICIPALITIES), AgeRange()), RuleBook(), SenderKinds(())
    )


def pipeline(store: Store, clock: FixedClock, first: Step | None = None) -> Pipeline:
    """Parse, route and receipt; `send` is left out, so its rows wait (no relay runs in these tests)."""
    route = route_step()
    receipt = SendReceipt(route.router.municipalities, "postkasse@localhost", ["postkasse@localhost"], 20)
    return Pipeline([first or ParseHeaders(), route, receipt], store, clock, LEASE)


def by_kind(store: Store) -> dict[tuple[str, str], int]:
    with store.read() as conn:
        rows = conn.execute(
            select(outbox.outbox.c.kind, outbox.outbox.c.state, func.count()).group_by(
                outbox.outbox.c.kind, outbox.outbox.c.state
            )
        ).all()
    return {(kind, state): n for kind, state, n in rows}


def save(store: Store, raw: bytes = RAW) -> stored_messages.Stored:
    item = Received("smtp", "laege@klinik.example", ("postkasse@localhost",), "127.0.0.1:1", False, T0, raw)
    with store.write() as conn:
        (saved,) = stored_messages.save(conn, [item], "parse", T0 + LEASE)
    return saved


def headers_count(store: Store) -> int:
    with store.read() as conn:
        count: int = conn.execute(select(func.count()).select_from(message_headers)).scalar_one()
        return count


def nothing(_: Sequence[Next]) -> None:
    pass


def test_parse_step_reads_the_headers(store: Store) -> None:
    saved = save(store)
    follow: list[Next] = []
    pipeline(store, FixedClock(T0)).run(saved.outbox_id, follow.extend)
    with store.read() as conn:
        row = conn.execute(select(message_headers)).one()
        assert row.from_header == "Søren Læge <laege@klinik.example>"
        assert row.subject == "Henvisning vedr. barn"
        assert row.content_type == "text/plain"
        assert row.parsed_at == T0
        assert outbox.backlog(conn) == {"done": 1, "pending": 1}
    assert [n.kind for n in follow] == ["route"]  # the next step, sent once committed


def test_a_redelivered_message_changes_nothing(store: Store) -> None:
    saved = save(store)
    steps = pipeline(store, FixedClock(T0))
    for _ in range(3):
        steps.run(saved.outbox_id, nothing)
    assert headers_count(store) == 1


class PreparedParse(ParseHeaders):
    """A parse step with reading to do before its write, as the route step has."""

    def __init__(self) -> None:
        self.prepared: list[int] = []

    def prepare(self, store: Store, message_id: int) -> None:
        self.prepared.append(message_id)


def test_the_step_named_by_the_broker_runs_once_and_a_wrong_name_changes_nothing(store: Store) -> None:
    """The actors name the row's step: a step that works only in the write transaction then needs no read
    first. A name that is wrong (the row's step prepares) is not trusted: the preparation still happens."""
    first, second = save(store), save(store)
    steps = pipeline(store, FixedClock(T0))
    for _ in range(2):
        steps.run(first.outbox_id, nothing, "parse")
    assert headers_count(store) == 1
    prepares = PreparedParse()
    follow: list[Next] = []
    pipeline(store, FixedClock(T0), prepares).run(second.outbox_id, follow.extend, "receipt")
    assert prepares.prepared == [second.message_id]
    assert headers_count(store) == 2
    assert [n.kind for n in follow] == ["route"]


# What a store error looks like: SQLAlchemy quotes the statement's parameters, the patient's name and CPR.
CONTENT_ERROR = DataError(
    "INSERT INTO message_headers (subject) VALUES (?)",
    {"subject": "Henvisning Anna Hansen 010215 4123"},
    ValueError("invalid byte sequence for encoding UTF8: 0x00"),
)


class Flaky(ParseHeaders):
    name = "parse"
    max_attempts = 3
    min_backoff = timedelta(seconds=1)
    max_backoff = timedelta(seconds=1)

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        super().run(conn, message_id, now)  # written, then rolled back by the failure
        if self.failures:
            self.failures -= 1
            raise CONTENT_ERROR
        return ()


def test_a_failing_step_is_retried_and_rolled_back(store: Store) -> None:
    saved = save(store)
    steps = pipeline(store, FixedClock(T0), Flaky(failures=1))
    with pytest.raises(StepFailed):  # the first attempt asks for a retry
        steps.run(saved.outbox_id, nothing)
    assert headers_count(store) == 0
    steps.run(saved.outbox_id, nothing)
    assert headers_count(store) == 1
    with store.read() as conn:
        assert outbox.backlog(conn) == {"done": 1}


def test_a_step_that_keeps_failing_ends_failed_not_lost(store: Store) -> None:
    saved = save(store)
    steps = pipeline(store, FixedClock(T0), Flaky(failures=99))
    raised = 0
    follow: list[Next] = []
    for _ in range(Flaky.max_attempts):
        try:
            steps.run(saved.outbox_id, follow.extend)
        except StepFailed:
            raised += 1
    assert raised == Flaky.max_attempts - 1  # the last attempt records the failure instead of raising
    with store.read() as conn:
        assert outbox.backlog(conn) == {"failed": 1, "pending": 1}
        errors = conn.execute(select(outbox.outbox.c.last_error).where(outbox.outbox.c.state == "failed"))
        assert errors.scalar_one() == "DataError: the store refused a value"
    assert [n.kind for n in follow] == ["route"]  # headers unreadable: the message is still routed


def test_a_failure_is_stored_logged_and_raised_without_the_content(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("INFO", json=True)  # after capsys has taken stderr
    saved = save(store)
    steps = pipeline(store, FixedClock(T0), Flaky(failures=99))
    with pytest.raises(StepFailed) as raised:
        steps.run(saved.outbox_id, nothing)
    assert str(raised.value) == "DataError: the store refused a value"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no chained traceback
    for _ in range(Flaky.max_attempts - 1):
        with contextlib.suppress(StepFailed):
            steps.run(saved.outbox_id, nothing)
    with store.read() as conn:
        stored = conn.execute(select(outbox.outbox.c.last_error).where(outbox.outbox.c.kind == "parse"))
        written = stored.scalar_one() + capsys.readouterr().err
    assert "outbox step failed for good" in written
    for content in ("Anna", "Hansen", "010215", "4123", "INSERT", "UTF8"):
        assert content not in written, content


def test_redrive_resends_only_rows_whose_lease_ran_out(store: Store) -> None:
    clock = FixedClock(T0)
    broker = StubBroker()
    actors = Actors(broker, pipeline(store, clock))
    saved = [save(store) for _ in range(3)]
    assert redrive(store, clock, LEASE, actors) == 0
    assert redrive(store, clock, LEASE, actors, everything=True, page=2) == 3  # at start: all pending
    assert redrive(store, clock, LEASE, actors) == 0
    clock.advance(LEASE)
    assert redrive(store, clock, LEASE, actors) == 3
    assert redrive(store, clock, LEASE, actors) == 0  # leased again: not sent twice
    worker = Worker(broker, worker_timeout=100)
    worker.start()
    try:
        broker.join("postkasse")
        worker.join()
    finally:
        worker.stop()
    assert headers_count(store) == len(saved)
    assert by_kind(store) == {
        ("parse", "done"): 3,
        ("route", "done"): 3,
        ("receipt", "done"): 3,
        ("send", "pending"): 3,
    }  # each receipt waits for a relay
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(referrals)).scalar() == 3
