"""A deployed store keeps working across the upgrade: the outbox rows the previous release left pending, of
every kind, are found and run to the end by this release's steps.

The kind names are written here as the previous release wrote them, as literal strings, so a renamed step
breaks this test rather than a deployment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from postkasse import flows
from postkasse.clock import FixedClock
from postkasse.committee import referrals
from postkasse.committee.referrals import NewReferral
from postkasse.config import Settings
from postkasse.deadlines.alerts import Alerter
from postkasse.deadlines.rules import RuleBook
from postkasse.receipts import compose, outgoing
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Received, Store, outbox
from postkasse.store import messages as stored_messages
from postkasse.store.migrate import upgrade
from postkasse.store.schema import deadline_alerts, outgoing_mail
from postkasse.store.schema import outbox as outbox_table
from postkasse.store.schema import referrals as referrals_table
from tests.helpers import make_message
from tests.sink import Sink

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
STOPPED = T0 + timedelta(hours=22)  # when the previous release stopped, with the work below pending
OPS = "drift@region.example"
SENDER = "laege@klinik.example"
PREVIOUS_RELEASE_KINDS = {"parse", "route", "receipt", "urgent", "alert", "alert_resolved", "send"}


def _stored(conn: Connection, raw: bytes, first_step: str) -> int:
    item = Received("smtp", SENDER, ("postkasse@localhost",), "127.0.0.1:1", True, T0, raw)
    (saved,) = stored_messages.save(conn, [item], first_step, T0 + timedelta(minutes=5))
    return saved.message_id


def _routed(conn: Connection, urgent: bool = False) -> tuple[int, int]:
    """A message the previous release has routed to Favrskov: (message, referral)."""
    message_id = _stored(conn, make_message(), "route")
    (route_row,) = conn.execute(
        select(outbox_table.c.id).where(
            outbox_table.c.kind == "route", outbox_table.c.target_id == message_id
        )
    ).scalars()
    outbox.finish(conn, route_row, T0)
    warn_at, due_at = RuleBook().for_municipality("0710").handling(T0)
    referral = NewReferral(
        message_id, "0710", None, (), (), (), None, None, "Henvisning", urgent, T0, warn_at, due_at
    )
    return message_id, referrals.create(conn, referral, T0)


def leave_work_of_every_kind(store: Store, settings: Settings) -> None:
    """The previous release's store, stopped with work of each kind pending and no broker to carry it."""
    alerter = Alerter(
        RuleBook(),
        Municipalities.load(settings.routing.municipalities_file),
        settings.outbound.from_address,
        OPS,
    )
    with store.write() as conn:
        _stored(conn, make_message(b"CPR: 010215-4123\r\nKommune: 0710\r\n"), "parse")
        _stored(conn, make_message(b"CPR: 020317-4222\r\nKommune: 0710\r\n"), "route")
        message, urgent = _routed(conn, urgent=True)
        _, late = _routed(conn)
        _, cleared = _routed(conn)
        receipt = compose.receipt(
            from_address=settings.outbound.from_address,
            to=SENDER,
            reference=f"PK-{late:06d}",
            received_at=T0,
            destination="Beskeden er sendt til Favrskov Kommunes koordinationsudvalg.",
            deadline=None,
            repeated=False,
            in_reply_to=None,
        )
        mail = outgoing.add(
            conn, "receipt", receipt, recipient=SENDER, referral_id=late, answers_message=None, now=T0
        )
        raised = [target for _, target in alerter.check(conn, T0 + timedelta(hours=21)).follow]
        referrals.pull(conn, cleared, STOPPED, "favrskov")
        resolved = [target for _, target in alerter.check(conn, STOPPED).follow]
        late_alerts = conn.execute(
            select(deadline_alerts.c.id).where(
                deadline_alerts.c.id.in_(raised), deadline_alerts.c.referral_id == late
            )
        ).scalars()
        work = [("receipt", message), ("urgent", urgent), ("send", mail)]
        work += [("alert", alert) for alert in late_alerts] + [
            ("alert_resolved", alert) for alert in resolved
        ]
        outbox.add_many(conn, [(kind, target, STOPPED) for kind, target in work], STOPPED)


def pending(store: Store) -> list[tuple[int, str]]:
    with store.read() as conn:
        rows = conn.execute(
            select(outbox_table.c.id, outbox_table.c.kind).where(outbox_table.c.state == "pending")
        ).all()
    return [(row.id, row.kind) for row in rows]


def test_pending_work_of_every_kind_from_the_previous_release_is_drained(database_url: str) -> None:
    sink = Sink().start()
    try:
        settings = Settings(
            outbound={"host": "127.0.0.1", "port": sink.port, "tls": "none"},
            deadlines={"operations_address": OPS},
        )
        before = Store(database_url)
        upgrade(before)
        leave_work_of_every_kind(before, settings)
        before.dispose()

        store = Store(database_url)  # the new release starts: it upgrades the store, then works the outbox
        upgrade(store)
        assert {kind for _, kind in pending(store)} == PREVIOUS_RELEASE_KINDS
        pipeline = flows.build(settings, store, FixedClock(STOPPED + timedelta(minutes=1)))
        for _ in range(10):  # each round runs what the last one left; the broker is not needed for that
            for outbox_id, _kind in pending(store):
                pipeline.run(outbox_id, lambda _: None)
        assert pending(store) == []
        with store.read() as conn:
            failed = conn.execute(select(outbox_table.c.kind).where(outbox_table.c.state == "failed")).all()
            mails = conn.execute(select(outgoing_mail.c.kind, outgoing_mail.c.state)).all()
            filed = conn.execute(select(referrals_table.c.message_id)).scalars().all()
        assert failed == []
        assert len(filed) == 5  # the two messages routed now, beside the three routed before
        assert {state for _, state in mails} == {"sent"}
        # a receipt each for the two messages routed now, the one routed before and the one left to send;
        # one alert to operations each: the urgent referral, the late one, and the one that cleared
        assert sorted(kind for kind, _ in mails) == ["alert"] * 3 + ["receipt"] * 4
        assert len(sink.mails()) == len(mails)
        store.dispose()
    finally:
        sink.stop()
