"""Real SMTP conversations with a running `postkasse serve`: what is accepted, stored and refused."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from postkasse.store import Store
from tests.helpers import RCPT, make_message, send, stored_id, stored_rows
from tests.servers import Daemon, wait_until
from tests.tls import write_server_cert

MAX_BYTES = 12 * 1024 * 1024


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_server_cert(ca, tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def mailbox(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path]) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("mailbox")
    daemon = Daemon(
        folder,
        f"sqlite:///{folder / 'postkasse.db'}",
        smtp={"max_message_bytes": MAX_BYTES, "tls_cert": tls_files[0], "tls_key": tls_files[1]},
    )
    daemon.start()
    yield daemon
    daemon.kill()


@pytest.fixture(scope="module")
def mailbox_store(mailbox: Daemon) -> Iterator[Store]:
    store = Store(f"sqlite:///{mailbox.workdir / 'postkasse.db'}")
    yield store
    store.dispose()


def test_accepted_mail_is_stored_byte_exact_with_its_envelope(mailbox: Daemon, mailbox_store: Store) -> None:
    raw = make_message(b"Kaere koordinationsudvalg\r\n..dot-stuffed line\r\n")
    code, reply = send(mailbox.smtp_port, raw)
    assert code == 250, reply
    row = next(r for r in stored_rows(mailbox_store) if r.id == stored_id(reply))
    assert row.raw == raw
    assert row.sha256 == hashlib.sha256(raw).hexdigest()
    assert (row.channel, row.mail_from, row.rcpt_tos, row.tls) == (
        "smtp",
        "laege@klinik.example",
        [RCPT],
        False,
    )
    assert row.peer.startswith("127.0.0.1:")
    assert row.message_id and row.message_id.endswith("@klinik.example>")
    assert row.received_at.tzinfo is not None


def test_null_sender_is_accepted(mailbox: Daemon, mailbox_store: Store) -> None:
    code, reply = send(mailbox.smtp_port, make_message(), sender="")
    assert code == 250, reply
    assert next(r for r in stored_rows(mailbox_store) if r.id == stored_id(reply)).mail_from == ""


def test_unknown_recipient_is_refused_at_rcpt(mailbox: Daemon, mailbox_store: Store) -> None:
    before = len(stored_rows(mailbox_store))
    code, reply = send(mailbox.smtp_port, make_message(), rcpts=("someone.else@localhost",))
    assert code == 550
    assert "no such mailbox" in reply
    assert len(stored_rows(mailbox_store)) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: a\r\nBcc: victim@example\nX: y\r\n\r\nbody\r\n",  # bare LF inside the headers
        b"Subject: a\r\n\r\nbody with a bare\rCR\r\n",
        b"Subject: a\r\n\r\nbody\n.\nsmuggled\r\n",
    ],
    ids=["bare-lf-header", "bare-cr-body", "lf-dot-lf"],
)
def test_bare_cr_or_lf_is_refused_and_nothing_stored(
    mailbox: Daemon, mailbox_store: Store, raw: bytes
) -> None:
    before = len(stored_rows(mailbox_store))
    code, reply = send(mailbox.smtp_port, raw)
    assert code == 550
    assert "bare CR or LF" in reply
    assert len(stored_rows(mailbox_store)) == before


def test_ten_mib_message_is_stored_byte_exact(mailbox: Daemon, mailbox_store: Store) -> None:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    raw = make_message(line * (10 * 1024 * 1024 // len(line) + 1))
    assert len(raw) > 10 * 1024 * 1024
    code, reply = send(mailbox.smtp_port, raw)
    assert code == 250, reply
    row = next(r for r in stored_rows(mailbox_store) if r.id == stored_id(reply))
    assert row.size == len(raw)
    assert row.raw == raw


def test_message_over_the_limit_is_refused_with_552(mailbox: Daemon, mailbox_store: Store) -> None:
    before = len(stored_rows(mailbox_store))
    raw = make_message(b"x" * 998 + b"\r\n") * (MAX_BYTES // 1000 + 10)
    code, reply = send(mailbox.smtp_port, raw)  # no SIZE declared: refused after the data
    assert code == 552, reply
    code, reply = send(mailbox.smtp_port, raw, options=[f"SIZE={len(raw)}"])  # declared: refused at MAIL
    assert code == 552, reply
    assert len(stored_rows(mailbox_store)) == before


def test_eight_bit_and_non_utf8_content_is_stored_byte_exact(mailbox: Daemon, mailbox_store: Store) -> None:
    latin1 = make_message(
        "Hilsen fra lægen på Århus Sygehus\r\n".encode("iso-8859-1"),
        subject="Bekymring for barn, søster i Ærø".encode("iso-8859-1"),
        extra=b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n",
    )
    utf8 = make_message(
        "Æblegrød og rødgrød med fløde\r\n".encode(), extra=b"Content-Type: text/plain; charset=utf-8\r\n"
    )
    garbage = make_message(bytes(range(128, 256)) + b"\r\n")
    for raw in (latin1, utf8, garbage):
        code, reply = send(mailbox.smtp_port, raw, options=["BODY=8BITMIME"])
        assert code == 250, reply
        assert next(r for r in stored_rows(mailbox_store) if r.id == stored_id(reply)).raw == raw


def test_smtputf8_sender_is_accepted(mailbox: Daemon, mailbox_store: Store) -> None:
    raw = make_message("Fra Søren\r\n".encode())
    code, reply = send(mailbox.smtp_port, raw, sender="søren@lægehus.example", options=["SMTPUTF8"])
    assert code == 250, reply
    assert (
        next(r for r in stored_rows(mailbox_store) if r.id == stored_id(reply)).mail_from
        == "søren@lægehus.example"
    )


def test_starttls_is_offered_and_marks_the_message(
    mailbox: Daemon, mailbox_store: Store, ca: trustme.CA
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", mailbox.smtp_port, timeout=30) as client:
        client.ehlo("klinik.example")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        client.starttls(context=context)
        client.ehlo("klinik.example")
        assert not client.has_extn("auth")
        client.mail("laege@klinik.example")
        client.rcpt(RCPT)
        code, reply = client.data(make_message())
    assert code == 250
    assert next(r for r in stored_rows(mailbox_store) if r.id == stored_id(reply.decode())).tls is True


def test_required_starttls_refuses_mail_in_the_clear(
    daemon_factory: type[Daemon], tmp_path: Path, tls_files: tuple[Path, Path], ca: trustme.CA
) -> None:
    daemon = daemon_factory(
        tmp_path,
        f"sqlite:///{tmp_path / 'pk.db'}",
        smtp={"tls_cert": tls_files[0], "tls_key": tls_files[1], "require_starttls": True},
    )
    daemon.start()
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo()
        code, reply = client.mail("laege@klinik.example")
        assert code == 530, reply
        context = ssl.create_default_context()
        ca.configure_trust(context)
        client.starttls(context=context)
        client.ehlo()
        assert client.mail("laege@klinik.example")[0] == 250
        assert client.rcpt(RCPT)[0] == 250
        assert client.data(make_message())[0] == 250
    assert b'reason="starttls_required"' in daemon.get("/metrics")[1]


def test_idle_session_is_closed(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(tmp_path, f"sqlite:///{tmp_path / 'pk.db'}", smtp={"idle_timeout_seconds": 0.5})
    daemon.start()
    with socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=30) as sock:
        assert sock.recv(1024).startswith(b"220")
        sock.sendall(b"EHLO klinik.example\r\n")
        received = b""
        while chunk := sock.recv(1024):  # the server closes the connection: recv returns b""
            received += chunk
    assert received.startswith(b"250")


def test_whole_session_time_is_limited(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """A client that keeps the session busy (never idle) is still cut off when the session limit ends."""
    daemon = daemon_factory(tmp_path, f"sqlite:///{tmp_path / 'pk.db'}", smtp={"session_timeout_seconds": 1})
    daemon.start()
    deadline = time.monotonic() + 30
    with socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=30) as sock:
        sock.recv(1024)
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"NOOP\r\n")
                closed = not sock.recv(1024)
            except OSError:
                closed = True
    assert closed, "the session outlived its time limit"


def test_sigterm_finishes_the_open_transaction_then_exits_zero(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(tmp_path, f"sqlite:///{tmp_path / 'pk.db'}")
    daemon.start()
    raw = make_message(b"sent while the daemon stops\r\n")
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.ehlo()
        client.mail("laege@klinik.example")
        client.rcpt(RCPT)
        assert daemon.proc is not None
        gone = socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=30)
        assert gone.recv(1024).startswith(b"220")
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        daemon.proc.send_signal(15)
        gone.close()  # a client that vanishes (reset) while the daemon says goodbye must not stop it

        def refusing_new_connections() -> bool:
            try:
                socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refusing_new_connections, 30, "the listener to close")
        code, reply = client.data(raw)
        assert code == 250, reply
    assert daemon.proc.wait(60) == 0
    store = Store(f"sqlite:///{tmp_path / 'pk.db'}")
    assert [r.raw for r in stored_rows(store)] == [raw]
    store.dispose()


def test_health_readiness_and_metrics(mailbox: Daemon) -> None:
    send(mailbox.smtp_port, make_message())
    send(mailbox.smtp_port, make_message(), rcpts=("nobody@localhost",))
    assert mailbox.get("/healthz")[0] == 200
    assert mailbox.get("/readyz") == (200, b'{"status":"ready"}')
    status, body = mailbox.get("/metrics")
    assert status == 200
    text = body.decode()
    assert 'postkasse_messages_accepted_total{channel="smtp"}' in text
    assert 'postkasse_messages_rejected_total{channel="smtp",reason="unknown_recipient"}' in text
    assert "postkasse_store_commit_seconds_bucket" in text
    assert "postkasse_store_commit_group_size_bucket" in text


def test_no_cpr_number_reaches_the_log(mailbox: Daemon) -> None:
    code, _ = send(
        mailbox.smtp_port,
        make_message(b"CPR: 0102031234\r\n", subject=b"Barn 010203-1234"),
        sender="0102031234@klinik.example",
    )
    assert code == 250
    log = mailbox.log()
    assert "message accepted" in log
    assert "0102031234" not in log and "010203-1234" not in log
