"""Connection limits: a flood of connections against a real `postkasse serve` leaves room for real mail."""

from __future__ import annotations

import asyncio
import errno
import resource
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from postkasse.mailbox.limits import (
    ACCEPT_FAILED,
    FD_RESERVE,
    Tally,
    count_accept_errors,
    fitting_session_limit,
)
from tests.helpers import RCPT, make_message
from tests.servers import Daemon, wait_until

FLOOD = 1_000
FLOOD_FROM = "127.0.0.2"  # all of 127/8 is loopback on Linux: the flood has an address of its own
PER_CLIENT = 50  # the default smtp.max_sessions_per_client


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """The test's own descriptor limit raised for the flood, and put back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 500
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"the flood test needs {wanted} descriptors"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_with_descriptor_limit(daemon: Daemon, soft: int) -> None:
    """Start serve with a low soft descriptor limit (what many systems give a service) for it to raise."""
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, ours[1]))
    try:
        daemon.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, ours)


def daemon_soft_limit(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE)[0]


def connect_from(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def first_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.decode("ascii", "replace").strip()


def no_sessions(daemon: Daemon) -> bool:
    return "\npostkasse_smtp_sessions 0.0\n" in daemon.get("/metrics")[1].decode()


def log_lines(daemon: Daemon) -> int:
    return len(daemon.log().splitlines())


def test_flood_of_connections_leaves_room_for_real_mail(
    daemon_factory: type[Daemon], tmp_path: Path, many_descriptors: None, figures: Callable[[str], None]
) -> None:
    daemon = daemon_factory(tmp_path, f"sqlite:///{tmp_path / 'pk.db'}")
    start_with_descriptor_limit(daemon, 1024)
    assert daemon_soft_limit(daemon) == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert "file descriptor limit raised" in daemon.log()
    lines_before = log_lines(daemon)

    started = time.monotonic()
    flood = [connect_from(FLOOD_FROM, daemon.smtp_port) for _ in range(FLOOD)]
    try:
        opened = time.monotonic() - started
        assert daemon.get("/readyz")[0] == 200
        sent = time.monotonic()
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
            client.ehlo("klinik.example")
            client.mail("laege@klinik.example")
            client.rcpt(RCPT)
            code, reply = client.data(make_message(b"sent during a flood\r\n"))
        delivered_in = time.monotonic() - sent
        assert code == 250, reply
        replies = [first_line(sock) for sock in flood]
        assert daemon.get("/readyz")[0] == 200
    finally:
        for sock in flood:
            sock.close()
    greeted = sum(r.startswith("220 ") for r in replies)
    refused = [r for r in replies if not r.startswith("220 ")]
    assert greeted == PER_CLIENT
    assert refused and all(r.startswith("421 4.7.0 ") and "too many connections" in r for r in refused)
    added = log_lines(daemon) - lines_before
    assert added < 20, daemon.log()[-3000:]
    figures(
        f"flood: {FLOOD} connections from {FLOOD_FROM} opened in {opened:.2f}s; {greeted} greeted, "
        f"{len(refused)} refused with 421 4.7.0; a normal client's mail took {delivered_in:.2f}s (250); "
        f"/readyz 200; log lines added during the flood: {added}; "
        f"serve's descriptor limit raised from 1024 to {daemon_soft_limit(daemon)}"
    )


def test_the_overall_session_limit_refuses_then_admits_again(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(tmp_path, f"sqlite:///{tmp_path / 'pk.db'}", smtp={"max_sessions": 3})
    daemon.start()
    wait_until(lambda: no_sessions(daemon), 30, "the readiness probe's session to end")
    held = [connect_from(f"127.0.0.{n}", daemon.smtp_port) for n in (3, 4, 5)]
    try:
        assert all(first_line(sock).startswith("220 ") for sock in held)
        with connect_from("127.0.0.6", daemon.smtp_port) as refused:
            reply = first_line(refused)
            assert reply.startswith("421 4.7.0 ") and "too many connections" in reply, reply
            assert refused.recv(1024) == b""  # and closed
        held.pop().close()

        def admitted() -> bool:
            with connect_from("127.0.0.6", daemon.smtp_port) as sock:
                return first_line(sock).startswith("220 ")

        wait_until(admitted, 30, "a session to be admitted once one closed")
    finally:
        for sock in held:
            sock.close()


def test_the_session_limit_is_kept_well_below_the_descriptor_limit() -> None:
    assert fitting_session_limit(200, 20_000) == 200
    assert fitting_session_limit(200, 1024) == 200
    lowered = fitting_session_limit(5_000, 1024)
    assert lowered == (1024 - FD_RESERVE) // 2
    assert lowered * 2 + FD_RESERVE <= 1024


class Timers:
    """The scheduler a Tally is given, run by hand: the interval passes when the test says so."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.due.append(callback)

    def interval_ends(self) -> None:
        due, self.due = self.due, []
        for callback in due:
            callback()


def test_a_tally_logs_once_per_interval_with_the_count() -> None:
    timers = Timers()
    tally = Tally("smtp connections refused", timers, interval=60)
    with structlog.testing.capture_logs() as logged:
        for _ in range(500):
            tally.add("too_many_sessions_from_client")
        tally.add("too_many_sessions")
        assert [(e["reason"], e["count"]) for e in logged] == [("too_many_sessions_from_client", 1)]
        timers.interval_ends()
        timers.interval_ends()  # a quiet interval logs nothing and stops the timer
        assert timers.due == []
        tally.add("too_many_sessions")
    assert [(e["reason"], e["count"]) for e in logged] == [
        ("too_many_sessions_from_client", 1),
        ("too_many_sessions", 1),
        ("too_many_sessions_from_client", 499),
        ("too_many_sessions", 1),
    ]


def test_failed_accepts_are_counted_not_logged_each() -> None:
    """asyncio reports every failed accept (EMFILE) to the loop's exception handler; those become counts."""
    loop = asyncio.new_event_loop()
    timers = Timers()
    others: list[dict[str, Any]] = []
    loop.default_exception_handler = others.append  # type: ignore[method-assign]
    try:
        count_accept_errors(loop, Tally("accept failed", timers))
        with structlog.testing.capture_logs() as logged:
            for _ in range(1_000):
                loop.call_exception_handler(
                    {"message": ACCEPT_FAILED, "exception": OSError(errno.EMFILE, "Too many open files")}
                )
            loop.call_exception_handler({"message": "something else"})
            timers.interval_ends()
    finally:
        loop.close()
    assert [(e["event"], e["reason"], e["count"]) for e in logged] == [
        ("accept failed", "EMFILE", 1),
        ("accept failed", "EMFILE", 999),
    ]
    assert others == [{"message": "something else"}]
