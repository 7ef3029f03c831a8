"""Receipts: one per accepted message, never to a robot or a list, no personal data, through the relay."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message

import pytest
from sqlalchemy import select

from postkasse.clock import FixedClock
from postkasse.committee import referrals
from postkasse.committee.referrals import NewReferral
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.rules import Rules
from postkasse.flows.receipt import SendReceipt
from postkasse.flows.send import SendMail
from postkasse.pipeline import Next, Pipeline, StepFailed
from postkasse.receipts import outgoing
from postkasse.receipts.autoreply import refusal
from postkasse.receipts.relay import Relay
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Received, Store, outbox
from postkasse.store import messages as stored_messages
from postkasse.store.schema import outgoing_mail
from tests.servers import free_port
from tests.sink import Sink

T0 = datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # 00:30 on 25 October in Copenhagen, the night clocks go back
OWN = ("postkasse@localhost",)
CLAIM_LEASE = timedelta(minutes=10)


def headers(text: str) -> Message:
    return message_from_bytes(text.encode())


@pytest.mark.parametrize(
    ("sender", "head", "reason"),
    [
        ("laege@klinik.example", "Subject: x\n", None),
        ("", "Subject: x\n", "null_sender"),
        ("<>", "Subject: x\n", "null_sender"),
        ("MAILER-DAEMON@klinik.example", "Subject: x\n", "mailer_daemon"),
        ("postmaster@klinik.example", "Subject: x\n", "mailer_daemon"),
        ("postkasse@localhost", "Subject: x\n", "own_address"),
        ("laege@klinik.example", "Auto-Submitted: auto-replied\n", "auto_submitted"),
        ("laege@klinik.example", "Auto-Submitted: auto-generated; type=ooo\n", "auto_submitted"),
        ("laege@klinik.example", "Auto-Submitted: no\n", None),
        ("laege@klinik.example", "Precedence: bulk\n", "bulk_precedence"),
        ("laege@klinik.example", "Precedence: list\n", "bulk_precedence"),
        ("laege@klinik.example", "List-Id: <boern.lists.example>\n", "mailing_list"),
    ],
)
def test_when_not_to_answer(sender: str, head: str, reason: str | None) -> None:
    assert refusal(sender, headers(head), OWN) == reason


class Fixture:
    def __init__(self, store: Store, relay_port: int, per_hour: int = 20) -> None:
        self.store = store
        self.clock = FixedClock(T0)
        municipalities = Municipalities.load(DEFAULT_MUNICIPALITIES)
        relay = Relay("127.0.0.1", relay_port, "none", "", "", None, 10)
        steps = [
            SendReceipt(municipalities, "postkasse@localhost", OWN, per_hour),
            SendMail(relay, "postkasse@localhost", CLAIM_LEASE),
        ]
        self.pipeline = Pipeline(steps, store, self.clock, timedelta(minutes=5))
        self.sent: list[Next] = []

    def message(
        self,
        raw: bytes,
        sender: str = "laege@klinik.example",
        municipality: str | None = "0710",
        triage_reason: str | None = None,
    ) -> int:
        item = Received("smtp", sender, OWN, "127.0.0.1:1", True, T0, raw)
        with self.store.write() as conn:
            (saved,) = stored_messages.save(conn, [item], "receipt", T0)
            if municipality or triage_reason:
                referrals.create(
                    conn,
                    NewReferral(
                        saved.message_id,
                        municipality,
                        triage_reason,
                        (),
                        (),
                        (),
                        "0102154123",
                        "Anna Hansen",
                        "x",
                        False,
                        T0,
                        *Rules().handling(T0),
                    ),
                    T0,
                )
        return saved.message_id

    def run_all(self) -> None:
        """Run every pending outbox row, as the workers would, until none is left that can run."""
        for _ in range(10):
            with self.store.read() as conn:
                due = outbox.due(conn, None, 100)
            if not due:
                return
            for work in due:
                self.pipeline.run(work.id, self.sent.extend)


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


RAW = (
    b"From: Laege <laege@klinik.example>\r\nSubject: Henvisning Anna Hansen 010215-4123\r\n"
    b"Message-ID: <henv-7@klinik.example>\r\n\r\nCPR: 010215-4123\r\nNavn: Anna Hansen\r\n"
)


def test_receipt_says_where_and_when_and_nothing_personal(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW)
    f.run_all()
    (delivered,) = sink.mails()
    assert delivered.envelope_sender == ""  # RFC 3834 3.3: auto-replies use the null return path
    assert b"\n" not in delivered.raw.replace(b"\r\n", b"")  # CRLF only: our own server refuses bare LF
    assert delivered.recipients == ("laege@klinik.example",)
    mail = delivered.mail
    assert mail["Auto-Submitted"] == "auto-replied"
    assert mail["In-Reply-To"] == "<henv-7@klinik.example>"
    assert mail["Subject"] == "Kvittering for modtagelse [PK-000001]"
    text = mail.get_content()
    assert "25-10-2026 kl. 00:30" in text  # received, on the Danish clock
    assert "Favrskov Kommunes koordinationsudvalg" in text
    assert "senest 02-11-2026 kl. 00:30" in text  # 8 days on, the same local time after the change
    assert "automatic receipt" in text
    for personal in ("010215", "4123", "Anna", "Hansen", "Henvisning"):
        assert personal not in delivered.raw.decode(), personal


def test_triage_receipt_says_why_in_plain_words(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW, municipality=None, triage_reason="ambiguous_postal_code")
    f.run_all()
    text = sink.mails()[0].mail.get_content()
    assert "manuel sortering" in text
    assert "Postnummeret ligger i flere kommuner" in text


def test_robots_lists_and_ourselves_get_no_receipt(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW, sender="")
    f.message(b"Auto-Submitted: auto-replied\r\n" + RAW)
    f.message(b"Precedence: bulk\r\n" + RAW)
    f.message(RAW, sender="postkasse@localhost")
    f.run_all()
    assert sink.mails() == []
    with store.read() as conn:
        reasons = sorted(r.suppressed_reason for r in conn.execute(select(outgoing_mail)).all())
    assert reasons == ["auto_submitted", "bulk_precedence", "null_sender", "own_address"]


def test_at_most_n_receipts_per_sender_per_hour(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port, per_hour=3)
    for _ in range(5):
        f.message(RAW)
    f.run_all()
    assert len(sink.mails()) == 3
    f.clock.advance(timedelta(hours=1, seconds=1))
    f.message(RAW)
    f.run_all()
    assert len(sink.mails()) == 4


def test_a_resent_message_gets_the_same_reference(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW)
    f.message(RAW, municipality=None)  # the same Message-ID from the same sender: routing made no referral
    f.run_all()
    first, second = (d.mail for d in sink.mails())
    assert first["Subject"] == second["Subject"] == "Kvittering for modtagelse [PK-000001]"
    assert "allerede modtaget" in second.get_content()


def test_each_message_gets_one_receipt_however_often_the_work_runs(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port)
    message_id = f.message(RAW)
    with store.write() as conn:  # the broker delivered the receipt work twice
        outbox.add(conn, "receipt", message_id, T0, T0)
    f.run_all()
    assert len(sink.mails()) == 1


def test_relay_down_then_up_delivers_each_receipt_once(store: Store) -> None:
    port = free_port()
    f = Fixture(store, port)
    for n in range(3):
        f.message(RAW.replace(b"henv-7", f"henv-{n}".encode()))
    with store.read() as conn:
        due = outbox.due(conn, None, 100)
    for work in due:
        f.pipeline.run(work.id, f.sent.extend)  # receipts written, sends queued
    sends = [n.outbox_id for n in f.sent]
    for outbox_id in sends:
        with pytest.raises(StepFailed, match="Connection refused"):
            f.pipeline.run(outbox_id, f.sent.extend)  # the relay is down: a retry is asked for
    with store.read() as conn:
        assert {r.state for r in conn.execute(select(outgoing_mail)).all()} == {"pending"}
    sink = Sink(port).start()
    try:
        for outbox_id in sends + sends:  # retried, and a broker delivering twice
            f.pipeline.run(outbox_id, f.sent.extend)
        replies = sorted(d.mail["In-Reply-To"] for d in sink.mails())
        assert replies == ["<henv-0@klinik.example>", "<henv-1@klinik.example>", "<henv-2@klinik.example>"]
    finally:
        sink.stop()


def test_a_relay_that_refuses_for_good_marks_the_mail_failed(store: Store) -> None:
    class Refusing(Sink):
        async def handle_RCPT(
            self, server: object, session: object, envelope: object, address: str, options: list[str]
        ) -> str:
            return "550 5.1.1 no such user"

    sink = Refusing().start()
    try:
        f = Fixture(store, sink.port)
        f.message(RAW)
        f.run_all()
    finally:
        sink.stop()
    with store.read() as conn:
        mail = conn.execute(select(outgoing_mail)).one()
        assert outbox.backlog(conn) == {"done": 2}
    assert mail.state == "failed" and "refused the recipient (550)" in mail.last_error


def test_a_receipt_whose_sender_died_mid_send_is_sent_when_its_claim_runs_out(
    store: Store, sink: Sink
) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW)
    with store.read() as conn:
        due = outbox.due(conn, None, 100)
    for work in due:
        f.pipeline.run(work.id, f.sent.extend)  # the receipt is written and its send queued
    (send,) = f.sent
    with store.write() as conn:  # a worker claimed it, began sending, and was killed
        (mail_id,) = conn.execute(select(outgoing_mail.c.id)).scalars()
        assert outgoing.claim(conn, mail_id, f.clock.now(), CLAIM_LEASE) is not None
    f.pipeline.run(send.outbox_id, f.sent.extend)  # the broker redelivers: the claim is still live
    with store.read() as conn:
        row = conn.execute(select(outbox.outbox).where(outbox.outbox.c.id == send.outbox_id)).one()
    assert sink.mails() == []  # not sent twice while the claim might still be a live send
    assert (row.state, row.attempts, row.next_attempt_at) == ("pending", 0, T0 + CLAIM_LEASE)
    f.clock.advance(CLAIM_LEASE - timedelta(seconds=1))
    with store.read() as conn:
        assert outbox.due(conn, f.clock.now(), 100) == []  # the redriver leaves it alone until then
    f.clock.advance(timedelta(seconds=1))
    with store.read() as conn:
        (again,) = outbox.due(conn, f.clock.now(), 100)
    f.pipeline.run(again.id, f.sent.extend)  # the redriver's resend finds the claim run out
    f.pipeline.run(again.id, f.sent.extend)  # and a late duplicate of it changes nothing
    assert len(sink.mails()) == 1
    with store.read() as conn:
        assert conn.execute(select(outgoing_mail.c.state)).scalar_one() == "sent"
        assert outbox.backlog(conn) == {"done": 2}


def test_a_live_send_is_not_sent_again_by_a_redelivered_job(store: Store, sink: Sink) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW)
    f.run_all()
    with store.write() as conn:  # the mail was sent; its job is delivered again later
        outbox.add(conn, "send", conn.execute(select(outgoing_mail.c.id)).scalar_one(), T0, T0)
    f.clock.advance(CLAIM_LEASE * 2)
    f.run_all()
    assert len(sink.mails()) == 1


@pytest.mark.parametrize(
    ("message_id", "in_reply_to"),
    [
        (b"<henv-7@klinik.example\x00>", "<henv-7@klinik.example>"),  # a NUL inside
        (b"<henv-7\x00\x01\x1b@klinik.example>", "<henv-7@klinik.example>"),
        (b"<henv-7@klinik\r\n .example>", None),  # folded inside the id: no id is left to echo
        (b"junk\x07 <henv-7@klinik.example> more", "<henv-7@klinik.example>"),
        (b"<" + b"x" * 2000 + b"@klinik.example>", None),  # longer than a header line may be
        (b"=?utf-8?q?=0D=0ABcc:_x@evil.example?=", None),
    ],
)
def test_a_receipt_is_sent_whatever_the_message_id_holds(
    store: Store, sink: Sink, message_id: bytes, in_reply_to: str | None
) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW.replace(b"<henv-7@klinik.example>", message_id))
    f.run_all()
    (delivered,) = sink.mails()
    mail = delivered.mail
    assert mail["Subject"] == "Kvittering for modtagelse [PK-000001]"
    assert mail["In-Reply-To"] == in_reply_to and mail["References"] == in_reply_to
    assert mail["Bcc"] is None
    head = delivered.raw.split(b"\r\n\r\n")[0]
    assert all(32 <= byte < 127 or byte in b"\r\n\t" for byte in head)
    assert b"\n" not in head.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "sender",
    ["laege@klinik.example\r\nRCPT TO:<x@evil.example>", "laege@klinik.example\x1b", "laege @klinik.example"],
)
def test_a_sender_address_no_header_may_hold_gets_no_receipt(store: Store, sink: Sink, sender: str) -> None:
    f = Fixture(store, sink.port)
    f.message(RAW, sender=sender)
    f.run_all()
    assert sink.mails() == []
    with store.read() as conn:
        assert conn.execute(select(outgoing_mail.c.suppressed_reason)).scalar_one() == "not_an_address"
