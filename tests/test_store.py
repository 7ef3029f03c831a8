"""The store on SQLite and PostgreSQL: migrations match the schema, writes are exact, the outbox behaves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from postkasse.store import Received, Store, outbox
from postkasse.store import messages as stored_messages
from postkasse.store.migrate import current, drift, upgrade
from postkasse.store.schema import messages, referrals

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night Denmark moves to summer time


def received(raw: bytes, at: datetime = T0) -> Received:
    return Received("smtp", "laege@klinik.example", ("postkasse@localhost",), "127.0.0.1:4000", True, at, raw)


def test_migrations_produce_exactly_the_schema(store: Store) -> None:
    assert current(store) is not None
    assert drift(store) == []


def test_sqlite_runs_in_wal_with_full_sync(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'var' / 'postkasse.db'}")  # the folder is made as needed
    upgrade(store)
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_saved_messages_come_back_byte_exact_with_an_outbox_row(store: Store) -> None:
    raws = [
        b"Subject: \xe6\xf8\xe5\r\n\r\n\x00\xff binary\r\n",
        b"Message-ID: <x@y>\r\n\r\n" + bytes(range(256)),
    ]
    with store.write() as conn:
        saved = stored_messages.save(conn, [received(r) for r in raws], "parse", T0 + timedelta(minutes=5))
    with store.read() as conn:
        assert [stored_messages.raw_of(conn, s.message_id) for s in saved] == raws
        row = conn.execute(select(messages).where(messages.c.id == saved[1].message_id)).one()
        assert row.message_id == "<x@y>"
        assert row.received_at == T0
        assert row.received_at.tzinfo is not None
        assert [outbox.claim(conn, s.outbox_id) for s in saved] == [
            outbox.Work(s.outbox_id, "parse", s.message_id, 0) for s in saved
        ]


def test_a_failed_transaction_leaves_nothing_half_stored(store: Store) -> None:
    with pytest.raises(RuntimeError), store.write() as conn:
        stored_messages.save(conn, [received(b"a\r\n")], "parse", T0)
        raise RuntimeError("disk gone")
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar() == 0
        assert outbox.backlog(conn) == {}


def test_outbox_row_is_finished_once(store: Store) -> None:
    with store.write() as conn:
        (saved,) = stored_messages.save(conn, [received(b"a\r\n")], "parse", T0)
    with store.write() as conn:
        outbox.finish(conn, saved.outbox_id, T0)
    with store.write() as conn:
        assert outbox.claim(conn, saved.outbox_id) is None
        with pytest.raises(RuntimeError, match="finished by someone else"):
            outbox.finish(conn, saved.outbox_id, T0)


def test_outbox_failures_count_up_to_failed(store: Store) -> None:
    with store.write() as conn:
        (saved,) = stored_messages.save(conn, [received(b"a\r\n")], "parse", T0)
    results = []
    for attempt in range(3):
        with store.write() as conn:
            results.append(outbox.record_failure(conn, saved.outbox_id, T0, f"boom {attempt}", T0, 3))
    assert results == [False, False, True]
    with store.read() as conn:
        assert outbox.backlog(conn) == {"failed": 1}
        assert outbox.claim(conn, saved.outbox_id) is None


def test_due_rows_are_the_pending_ones_whose_lease_ran_out(store: Store) -> None:
    with store.write() as conn:
        first, second = stored_messages.save(
            conn, [received(b"a\r\n"), received(b"b\r\n")], "parse", T0 + timedelta(minutes=5)
        )
        outbox.finish(conn, second.outbox_id, T0)
    with store.write() as conn:
        assert outbox.due(conn, T0 + timedelta(minutes=4), 10) == []
        assert [w.id for w in outbox.due(conn, T0 + timedelta(minutes=5), 10)] == [first.outbox_id]
        outbox.extend_lease(conn, [first.outbox_id], T0 + timedelta(minutes=10))
        assert outbox.due(conn, T0 + timedelta(minutes=9), 10) == []


def test_naive_timestamps_are_refused(store: Store) -> None:
    with pytest.raises(Exception, match="naive datetime"), store.write() as conn:
        stored_messages.save(conn, [received(b"a\r\n", at=datetime(2026, 1, 1))], "parse", T0)


def test_ping_tells_whether_the_store_answers(store: Store) -> None:
    assert store.ping()
    with store.read() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    broken = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert not broken.ping()


def test_referrals_from_before_the_deadlines_get_their_times_from_their_history(database_url: str) -> None:
    """Migration 0004 on a store already in use: deadlines, queue and decision times are filled in."""
    store = Store(database_url)
    upgrade(store, "0003")
    received = datetime(2026, 3, 25, 11, 0, tzinfo=UTC)  # 12:00 CET
    with store.write() as conn:
        (saved,) = stored_messages.save(
            conn, [Received("smtp", "a@b.example", ("pk@x",), "p", True, received, b"x")], "route", received
        )
        conn.execute(
            text(
                "INSERT INTO referrals (id, message_id, municipality, state, reasons, explanation, flags,"
                " urgent, outcome, outcome_detail, created_at, updated_at) VALUES (1, :m, '0710', 'handled',"
                " '[]', '[]', '[]', false, 'returned', 'Mangler oplysninger', :t, :t)"
            ),
            {"m": saved.message_id, "t": received.replace(tzinfo=None)},
        )
        for action, hours in (("routed", 0), ("pull", 3), ("decide", 30)):
            conn.execute(
                text(
                    "INSERT INTO referral_events (referral_id, at, actor, action, detail)"
                    " VALUES (1, :at, 'x', :action, '{}')"
                ),
                {"at": (received + timedelta(hours=hours)).replace(tzinfo=None), "action": action},
            )
    upgrade(store)
    assert drift(store) == []
    with store.read() as conn:
        row = conn.execute(select(referrals)).one()
    assert (row.received_at, row.queued_at, row.pulled_at, row.handled_at, row.due_at, row.return_reason) == (
        received,
        received,
        received + timedelta(hours=3),
        received + timedelta(hours=30),
        datetime(2026, 4, 2, 10, 0, tzinfo=UTC),  # 12:00 CEST, eight days on
        "other",
    )
    store.dispose()
