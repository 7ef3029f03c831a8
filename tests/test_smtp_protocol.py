"""The SMTP protocol as trusted servers answer it (RFC 5321, RFC 2920, RFC 6531, Postfix's defaults), against
a real `postkasse serve`: each refusal with its exact code and enhanced status; nothing stored by mistake."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from postkasse.receipts.relay import PermanentFailure, Relay
from postkasse.store import Store
from tests.helpers import RCPT, make_message, stored_rows
from tests.servers import Daemon, wait_until
from tests.sink import Sink
from tests.tls import write_server_cert

EHLO = b"EHLO klinik.example\r\n"
MAIL = b"MAIL FROM:<laege@klinik.example>\r\n"
TO = b"RCPT TO:<" + RCPT.encode() + b">\r\n"
NOBODY = b"RCPT TO:<nobody@localhost>\r\n"
DATA = b"DATA\r\n"
MAX_ERRORS = 20
MAX_JUNK = 100


def body(raw: bytes) -> bytes:
    """A message as DATA carries it: dot-stuffed, ended by a lone dot."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def with_received(count: int) -> bytes:
    hops = b"".join(
        b"Received: from relay%d.example by relay%d.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (n, n + 1)
        for n in range(count)
    )
    return hops + make_message()


class Conversation:
    """A raw SMTP client: sends exactly the bytes given, reads replies one by one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        """The next reply's last line ('' when the server has closed the connection)."""
        while True:
            line = self.file.readline()
            if not line:
                return ""
            if line[3:4] != b"-":
                return line.decode("utf-8", "replace").rstrip("\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, data: bytes) -> str:
        self.send(data)
        return self.reply()

    def closed_by_server(self) -> bool:
        try:
            return self.file.read() == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


Step = tuple[bytes, tuple[str, ...]]


def repeated(
    opening: tuple[Step, ...], command: bytes, reply: str, times: int, last: tuple[str, ...]
) -> tuple[Step, ...]:
    """A session that sends `command` `times` times: each answered with `reply`, the last with `last`."""
    return (*opening, *[(command, (reply,))] * (times - 1), (command, last))


@dataclass(frozen=True)
class Case:
    """What a client sends (each step in one write) and the replies, by code and enhanced status, in order."""

    steps: tuple[Step, ...]
    stored: int = 0  # messages the case stores
    closes: bool = False  # the server ends the session after the last reply


def transaction(mail: bytes, raw: bytes, last: str) -> tuple[Step, ...]:
    """One whole transaction, each command waiting for its reply; `last` answers the message."""
    return ((EHLO, ("250",)), (mail, ("250",)), (TO, ("250 2.1.5",)), (DATA, ("354",)), (body(raw), (last,)))


SMUGGLED = b"MAIL FROM:<spoof@evil.example>\r\n" + TO + DATA + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"

CASES: dict[str, Case] = {
    "sender-with-cr": Case(((EHLO, ("250",)), (b"MAIL FROM:<lae\rge@klinik.example>\r\n", ("501 5.1.7",)))),
    "sender-with-space": Case(((EHLO, ("250",)), (b"MAIL FROM:<lae ge@klinik.example>\r\n", ("501 5.1.7",)))),
    "sender-with-nul": Case(((EHLO, ("250",)), (b"MAIL FROM:<lae\0ge@klinik.example>\r\n", ("501 5.1.7",)))),
    "sender-not-utf8": Case(((EHLO, ("250",)), (b"MAIL FROM:<l\xe6ge@klinik.example>\r\n", ("501 5.1.7",)))),
    "sender-without-domain": Case(((EHLO, ("250",)), (b"MAIL FROM:<laege@>\r\n", ("501 5.1.7",)))),
    "sender-double-dot": Case(
        ((EHLO, ("250",)), (b"MAIL FROM:<laege..x@klinik.example>\r\n", ("501 5.1.7",)))
    ),
    "recipient-with-space": Case(
        ((EHLO, ("250",)), (MAIL, ("250",)), (b"RCPT TO:<post kasse@localhost>\r\n", ("501 5.1.3",)))
    ),
    "recipient-empty": Case(((EHLO, ("250",)), (MAIL, ("250",)), (b"RCPT TO:<>\r\n", ("501 5.1.3",)))),
    "quoted-local-part-accepted": Case(
        transaction(b'MAIL FROM:<"laege hansen"@klinik.example>\r\n', make_message(), "250 2.0.0"), stored=1
    ),
    "utf8-sender-without-smtputf8": Case(
        ((EHLO, ("250",)), ("MAIL FROM:<læge@lægehus.example>\r\n".encode(), ("553 5.6.7",)))
    ),
    "utf8-recipient-without-smtputf8": Case(
        (
            (EHLO, ("250",)),
            (MAIL, ("250",)),
            ("RCPT TO:<postkasse@lægehus.example>\r\n".encode(), ("553 5.6.7",)),
        )
    ),
    "utf8-recipient-with-smtputf8-unknown": Case(
        (
            (EHLO, ("250",)),
            (b"MAIL FROM:<laege@klinik.example> SMTPUTF8\r\n", ("250",)),
            ("RCPT TO:<postkasse@lægehus.example>\r\n".encode(), ("550 5.1.1",)),
        )
    ),
    "helo-then-pipelining": Case(
        ((b"HELO klinik.example\r\n", ("250",)), (MAIL + TO, ("554 5.5.0",))), closes=True
    ),
    "commands-with-ehlo": Case(((EHLO + MAIL, ("554 5.5.0",)),), closes=True),
    "body-sent-with-data": Case(
        ((EHLO, ("250",)), (MAIL + TO + DATA + body(make_message()), ("250", "250", "554 5.5.0"))),
        closes=True,
    ),
    "rfc2920-trap-refused-data-carries-a-transaction": Case(
        ((EHLO, ("250",)), (MAIL + NOBODY + DATA + SMUGGLED, ("250", "550 5.1.1", "554 5.5.0"))), closes=True
    ),
    "pipelined-group-as-rfc2920-allows": Case(
        (
            (EHLO, ("250",)),
            (MAIL + TO + DATA, ("250", "250 2.1.5", "354")),
            (body(make_message()), ("250 2.0.0",)),
        ),
        stored=1,
    ),
    "data-after-only-refused-recipients": Case(
        ((EHLO, ("250",)), (MAIL, ("250",)), (NOBODY, ("550 5.1.1",)), (DATA, ("554 5.5.1",)))
    ),
    "data-without-mail": Case(((EHLO, ("250",)), (DATA, ("503 5.5.1",)))),
    "nested-mail": Case(((EHLO, ("250",)), (MAIL, ("250",)), (MAIL, ("503 5.5.1",)))),
    "unknown-command": Case(((EHLO, ("250",)), (b"XYZZY\r\n", ("500 5.5.2",)))),
    "received-100-accepted": Case(transaction(MAIL, with_received(100), "250 2.0.0"), stored=1),
    "received-101-mail-loop": Case(transaction(MAIL, with_received(101), "554 5.4.6")),
    "received-500-mail-loop": Case(transaction(MAIL, with_received(500), "554 5.4.6")),
    "too-many-refused-recipients": Case(
        repeated(
            ((EHLO, ("250",)), (MAIL, ("250",))), NOBODY, "550 5.1.1", MAX_ERRORS, ("550 5.1.1", "421 4.7.0")
        ),
        closes=True,
    ),
    "too-many-unknown-commands": Case(
        repeated(((EHLO, ("250",)),), b"XYZZY\r\n", "500 5.5.2", MAX_ERRORS, ("500 5.5.2", "421 4.7.0")),
        closes=True,
    ),
    "too-many-junk-commands": Case(
        repeated(((EHLO, ("250",)),), b"NOOP\r\n", "250", MAX_JUNK, ("421 4.7.0",)),
        closes=True,
    ),
}


@pytest.fixture(scope="module")
def relay() -> Iterator[Sink]:
    sink = Sink(enable_SMTPUTF8=True).start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory, relay: Sink, ca: trustme.CA) -> Iterator[Daemon]:
    """One serve for every case, with STARTTLS and a relay that speaks SMTPUTF8 for its receipts."""
    folder = tmp_path_factory.mktemp("protocol")
    cert_path, key_path = write_server_cert(ca, folder)
    limits = {"max_errors": MAX_ERRORS, "max_junk_commands": MAX_JUNK}
    daemon = Daemon(
        folder,
        f"sqlite:///{folder / 'postkasse.db'}",
        smtp={"tls_cert": cert_path, "tls_key": key_path, **limits},
        outbound={"host": "127.0.0.1", "port": relay.port, "tls": "none", "from_address": RCPT},
    )
    daemon.start()
    yield daemon
    daemon.kill()


@pytest.fixture(scope="module")
def stored(mailbox: Daemon) -> Iterator[Store]:
    """The serve's own SQLite store, read from the test."""
    store = Store(f"sqlite:///{mailbox.workdir / 'postkasse.db'}")
    yield store
    store.dispose()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_protocol_case(mailbox: Daemon, stored: Store, case: Case) -> None:
    before = len(stored_rows(stored))
    conversation = Conversation(mailbox.smtp_port)
    try:
        assert conversation.greeting.startswith("220 ")
        for payload, expected in case.steps:
            conversation.send(payload)
            for prefix in expected:
                reply = conversation.reply()
                assert reply.startswith(prefix + " ") or reply == prefix, (payload[:60], reply)
                if prefix[:1] in "45" and not prefix.startswith("421"):
                    assert len(reply) > len(prefix) + 1, f"{reply!r} names no reason"
        if case.closes:
            assert conversation.closed_by_server(), "the session was not ended"
        else:
            assert conversation.ask(b"QUIT\r\n").startswith("221")
    finally:
        conversation.close()
    assert len(stored_rows(stored)) == before + case.stored


def test_starttls_inside_tls_is_refused(mailbox: Daemon, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", mailbox.smtp_port, timeout=30) as client:
        client.ehlo("klinik.example")
        client.starttls(context=context)
        client.ehlo("klinik.example")
        assert not client.has_extn("starttls")
        code, reply = client.docmd("STARTTLS")
        assert (code, reply.split()[0]) == (554, b"5.5.1"), reply
        assert client.noop()[0] == 250  # the session goes on, inside the TLS it has


def test_utf8_sender_with_smtputf8_is_stored_and_receipted(
    mailbox: Daemon, stored: Store, relay: Sink
) -> None:
    """Danish addresses exist: with SMTPUTF8 the mail is taken, and the receipt reaches the sender."""
    sender = "læge@lægehus.example"
    with smtplib.SMTP("127.0.0.1", mailbox.smtp_port, timeout=30) as client:
        client.ehlo("klinik.example")
        assert client.has_extn("smtputf8") and client.has_extn("pipelining")
        code, reply = client.mail(sender, ["SMTPUTF8"])
        assert code == 250, reply
        assert client.rcpt(RCPT)[0] == 250
        code, reply = client.data(make_message("Fra Søren\r\n".encode()))
        assert code == 250, reply
    assert stored_rows(stored)[-1].mail_from == sender
    wait_until(lambda: any(sender in m.recipients for m in relay.mails()), 60, "the receipt at the relay")


def test_idle_timer_is_reset_while_data_arrives(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """A slow but steady upload is not idle: chunks every 0.3 s for 3 s against a 1 s idle timeout."""
    daemon = daemon_factory(tmp_path, f"sqlite:///{tmp_path / 'pk.db'}", smtp={"idle_timeout_seconds": 1})
    daemon.start()
    conversation = Conversation(daemon.smtp_port)
    try:
        for command in (EHLO, MAIL, TO):
            assert conversation.ask(command).startswith("250")
        assert conversation.ask(DATA).startswith("354")
        conversation.send(make_message())
        started = time.monotonic()
        while time.monotonic() - started < 3:
            time.sleep(0.3)  # the pace of the upload is what is under test
            conversation.send(b"slow line of a large referral\r\n")
        assert conversation.ask(b".\r\n").startswith("250 2.0.0"), "the upload was cut at the idle timeout"
    finally:
        conversation.close()


def test_nul_in_message_id_is_stored_the_same_on_both_stores(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL's text cannot hold NUL: the Message-ID is kept without it, the raw message byte exact."""
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    raw = make_message().replace(b"Message-ID: <", b"Message-ID: <nul\0")
    conversation = Conversation(daemon.smtp_port)
    try:
        for command in (EHLO, MAIL, TO):
            assert conversation.ask(command).startswith("250")
        assert conversation.ask(DATA).startswith("354")
        assert conversation.ask(body(raw)).startswith("250 2.0.0")
    finally:
        conversation.close()
    store = Store(database_url)
    try:
        (row,) = stored_rows(store)
    finally:
        store.dispose()
    assert row.raw == raw
    assert row.message_id.startswith("<nul") and "\0" not in row.message_id


def test_a_relay_without_smtputf8_fails_a_utf8_receipt_for_good_with_the_reason() -> None:
    sink = Sink(enable_SMTPUTF8=False).start()
    try:
        relay = Relay("127.0.0.1", sink.port, "none", "", "", None, 30)
        with pytest.raises(PermanentFailure, match="does not offer SMTPUTF8"):
            relay.send("", "læge@lægehus.example", make_message())
        relay.send("", "laege@klinik.example", make_message())
    finally:
        sink.stop()
    assert [m.recipients for m in sink.mails()] == [("laege@klinik.example",)]
