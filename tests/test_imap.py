"""IMAP ingest against a real Dovecot: each message in the folder is stored once, then moved, come what may.

Each test runs its own Dovecot (tests/dovecot.py) and `postkasse serve` processes. The crash tests kill the
daemon with SIGKILL in the window between the durable write and the move: once by making the server unable
to move mail (so the daemon is stuck right there when it is killed), once by storing the message's row as the
killed daemon would have left it, before the daemon ever saw the folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from postkasse.clock import SystemClock
from postkasse.config import ConfigError, ImapAccount, load
from postkasse.mailbox.committer import GroupCommitter
from postkasse.mailbox.imap import ImapChannel, envelope_sender, refusal
from postkasse.mailbox.imap_client import _bodies, mailbox_name, uid_set
from postkasse.store import Received, Store, Stored
from postkasse.store import messages as stored_messages
from postkasse.store.migrate import upgrade
from postkasse.store.schema import imap_messages, messages, outgoing_mail
from tests.dovecot import PASSWORD, PLAIN_CAPABILITY, Dovecot
from tests.helpers import make_message, send
from tests.servers import Daemon, wait_until
from tests.test_routing_e2e import CHILD_IN_FAVRSKOV, mail, prepare, wait_for_referral

T = TypeVar("T")
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "postkasse.toml"
PASSWORD_ENV = "PK_TEST_IMAP_PASSWORD"  # not POSTKASSE_*: tests/servers.py keeps those from the daemon


@pytest.fixture(autouse=True)
def imap_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path)
    server.start()
    yield server
    server.close()


def account(server: Dovecot, name: str = "favrskov", **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "host": "127.0.0.1",
        "port": server.port,
        "tls": "implicit",
        "ca_file": str(server.ca_file),
        "user": "favrskov",
        "password_env": PASSWORD_ENV,
        "address": "postkasse@favrskov.example",
        "timeout_seconds": 10,
        "max_backoff_seconds": 1,
        **overrides,
    }


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def imap_daemon(
    factory: type[Daemon], tmp_path: Path, database_url: str, *accounts: dict[str, Any], **sections: Any
) -> Daemon:
    """A daemon with `[[imap]]` tables for `accounts` (tests/servers.py writes only plain sections)."""
    daemon = factory(tmp_path, database_url, **sections)
    tables = "".join(
        "[[imap]]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in a.items()) + "\n"
        for a in accounts
    )
    daemon.config.write_text(daemon.config.read_text() + "\n" + tables)
    return daemon


def imap_status(daemon: Daemon) -> dict[str, Any]:
    status, body = daemon.get("/readyz")
    assert status == 200, body
    accounts: dict[str, Any] = json.loads(body)["imap"]
    return accounts


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    """One sample's value from /metrics (0 when absent, as for a counter not yet counted)."""
    _, body = daemon.get("/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def metric_value(name: str, **labels: str) -> float:
    """A sample's value in this process's own registry, for the channel run in process."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def stored(store: Store) -> list[bytes]:
    with store.read() as conn:
        return list(conn.execute(select(messages.c.raw).where(messages.c.channel == "imap")).scalars())


def count(store: Store, table: Any) -> int:
    with store.read() as conn:
        total: int = conn.execute(select(func.count()).select_from(table)).scalar_one()
        return total


def folder_counts(server: Dovecot) -> tuple[int, int, int]:
    """Messages in INBOX, Processed and Failed."""
    with server.client() as box:
        return box.count("INBOX"), box.count("Processed"), box.count("Failed")


def receipts(store: Store) -> list[int]:
    """The referral each receipt written names (a receipt held back, e.g. by the rate limit, names none)."""
    kind_and_referral = (outgoing_mail.c.kind == "receipt", outgoing_mail.c.referral_id.is_not(None))
    with store.read() as conn:
        return list(conn.execute(select(outgoing_mail.c.referral_id).where(*kind_and_referral)).scalars())


def stored_count_is(store: Store, expected: int) -> Callable[[], bool]:
    return lambda: len(stored(store)) == expected


def folders_are(server: Dovecot, expected: tuple[int, int, int]) -> Callable[[], bool]:
    return lambda: folder_counts(server) == expected


def numbered(n: int, size: int = 0) -> bytes:
    return make_message(b"Besked %d\r\n" % n + b"x" * size + b"\r\n", extra=b"X-Test-Number: %d\r\n" % n)


# --- the pieces, without servers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"From: a@b.example\r\n\r\n" + b"x" * 5000, "too_large"),
        (b"From: a@b.example\n\nbare LF\n", "bare_cr_or_lf"),
        (b"\x00\x01 not mail at all\r\n", "not_a_message"),
        (b"\r\nno headers\r\n", "not_a_message"),
        (b"From: a@b.example\r\nSubject: ok\r\n\r\nHej\r\n", None),
    ],
)
def test_what_cannot_be_taken(raw: bytes, reason: str | None) -> None:
    assert refusal(raw, 4096) == reason


@pytest.mark.parametrize(
    ("headers", "sender"),
    [
        (b"Return-Path: <laege@klinik.example>\r\nFrom: Anden <anden@x.example>\r\n", "laege@klinik.example"),
        (b"Return-Path: <>\r\nFrom: Daemon <mailer-daemon@x.example>\r\n", ""),
        (b"From: Laege <laege@klinik.example>\r\n", "laege@klinik.example"),
        (b"Subject: no sender\r\n", ""),
    ],
)
def test_envelope_sender_from_the_headers(headers: bytes, sender: str) -> None:
    assert envelope_sender(headers + b"\r\nbody\r\n") == sender


def test_uid_sets_and_folder_names() -> None:
    assert uid_set([7, 1, 2, 3, 9, 10, 3]) == "1:3,7,9:10"
    assert uid_set([5]) == "5"
    assert mailbox_name("INBOX") == '"INBOX"'
    assert mailbox_name("Behandlet/Børn & Unge") == '"Behandlet/B&APg-rn &- Unge"'  # RFC 3501 5.1.3


def test_fetch_response_bodies_with_the_uid_on_either_side() -> None:
    lines = [
        b"1 FETCH (UID 10 BODY[] {5}",
        bytearray(b"a)b(c"),
        b")",
        b"2 FETCH (BODY[] {3}",
        bytearray(b"xyz"),
        b" UID 11)",
        b"3 FETCH (FLAGS (\\Seen) UID 12)",
        b"Fetch completed.",
    ]
    assert _bodies(lines) == {10: b"a)b(c", 11: b"xyz"}


def test_account_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"name": "favrskov", "host": "imap.favrskov.example", "user": "pk@favrskov.example"}
    good = ImapAccount(**base, password_env=PASSWORD_ENV)
    assert (good.port, good.tls, good.address, good.folder) == (
        993,
        "implicit",
        "pk@favrskov.example",
        "INBOX",
    )
    assert good.password() == PASSWORD
    assert good.idle_renew_seconds < 29 * 60
    path = tmp_path / "pk.toml"
    for extra, message in [
        ('password_env = "PK_NOT_SET"', "PK_NOT_SET (password_env) is not set"),
        (f'password_env = "{PASSWORD_ENV}"\ntls = "none"', "never sent without TLS"),
        (f'password_env = "{PASSWORD_ENV}"\nname = "Anna Jensen"', "imap.0.name"),
        (f'password_env = "{PASSWORD_ENV}"\nprocessed_folder = "INBOX"', "three different folders"),
        (f'password_env = "{PASSWORD_ENV}"\nidle_renew_seconds = 1800', "idle_renew_seconds"),
    ]:
        lines = [f"{k} = {_toml(v)}" for k, v in base.items() if f"{k} =" not in extra]
        path.write_text("[[imap]]\n" + "\n".join(lines) + "\n" + extra + "\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(path)
    table = "[[imap]]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in base.items())
    path.write_text(f'{table}\npassword_env = "{PASSWORD_ENV}"\n\n{table}\npassword_env = "{PASSWORD_ENV}"\n')
    with pytest.raises(ConfigError, match="same name"):
        load(path)
    path.write_text(f'{table}\npassword_env = "{PASSWORD_ENV}"\n')
    assert PASSWORD not in json.dumps(load(path).masked())


def test_the_documented_example_account_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example [[imap]] in config/postkasse.toml is commented (there is none by default); it must load."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("# [[imap]]")
    end = lines.index("", start)
    block = [line.removeprefix("# ") for line in lines[start:end] if not line.startswith("# ca_file")]
    path = tmp_path / "pk.toml"
    path.write_text("\n".join(block) + "\n", encoding="utf-8")
    monkeypatch.setenv("POSTKASSE_IMAP_FAVRSKOV_PASSWORD", "x")
    (example,) = load(path).imap
    assert example == ImapAccount(
        name="favrskov",
        host="imap.favrskov.example",
        user="postkasse@favrskov.example",
        password_env="POSTKASSE_IMAP_FAVRSKOV_PASSWORD",
    )


# --- against Dovecot, with `postkasse serve` -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_referral_appended_while_idle_becomes_one_routed_referral_with_a_receipt(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str, dovecot: Dovecot, tls: str
) -> None:
    store = prepare(tmp_path, database_url)
    port = dovecot.port if tls == "implicit" else dovecot.starttls_port
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, account(dovecot, tls=tls, port=port))
    daemon.start()
    wait_until(
        lambda: imap_status(daemon)["favrskov"]["idle"], 30, f"the daemon to IDLE; log:\n{daemon.log()}"
    )

    referrals = []
    for n in range(2):  # the second arrives while the daemon idles again after the first
        with dovecot.client() as box:
            box.append(
                mail(f"CPR: {CHILD_IN_FAVRSKOV}\nAdresse: Skolevej 12, 8382 Hinnerup", message_id=f"r{n}@x")
            )
        wait_until(stored_count_is(store, n + 1), 30, f"message {n} stored")
        with store.read() as conn:
            message_id = conn.execute(select(func.max(messages.c.id))).scalar_one()
            row = conn.execute(select(messages).where(messages.c.id == message_id)).one()
        assert (row.channel, row.peer, row.mail_from, row.rcpt_tos, row.tls) == (
            "imap",
            "imap:favrskov",
            "laege@klinik.example",
            ["postkasse@favrskov.example"],
            True,
        )
        referral = wait_for_referral(store, message_id)
        assert (referral.state, referral.municipality) == ("new", "0710")
        referrals.append(referral)
        wait_until(folders_are(dovecot, (0, n + 1, 0)), 30, "the message moved to Processed")
        wait_until(lambda: imap_status(daemon)["favrskov"]["idle"], 30, "the daemon to IDLE again")

    wait_until(lambda: len(receipts(store)) == 2, 60, "a receipt for each referral")
    assert sorted(receipts(store)) == sorted(r.id for r in referrals)
    assert metric(daemon, "postkasse_imap_messages_taken_total", account="favrskov") == 2
    assert metric(daemon, "postkasse_messages_accepted_total", channel="imap") == 2
    last_cycle = metric(daemon, "postkasse_imap_last_cycle_timestamp_seconds", account="favrskov")
    assert abs(last_cycle - time.time()) < 60
    status = imap_status(daemon)["favrskov"]
    assert status["connected"] and status["last_error"] is None and status["last_cycle_at"]

    assert daemon.terminate() == 0  # SIGTERM: stops IDLE and logs out
    assert "Logged out" in dovecot.log()
    assert PASSWORD not in daemon.log()
    assert count(store, messages) == 2
    store.dispose()


@pytest.mark.slow
def test_server_stopped_and_started_while_the_daemon_runs(
    daemon_factory: type[Daemon], tmp_path: Path, dovecot: Dovecot
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, account(dovecot))
    daemon.start()
    wait_until(lambda: imap_status(daemon)["favrskov"]["idle"], 30, "the daemon to IDLE")
    store = Store(database_url)

    for round_ in range(2):
        dovecot.stop()  # clients get BYE in the middle of IDLE
        wait_until(lambda: not imap_status(daemon)["favrskov"]["connected"], 30, "the daemon to notice")
        assert imap_status(daemon)["favrskov"]["last_error"]
        assert send(daemon.smtp_port, make_message())[0] == 250  # SMTP is untouched
        dovecot.start()
        with dovecot.client() as box:
            box.append(numbered(round_))
        wait_until(stored_count_is(store, round_ + 1), 60, "mail after the restart")
        wait_until(folders_are(dovecot, (0, round_ + 1, 0)), 30, "the message moved")
    assert metric(daemon, "postkasse_imap_errors_total", account="favrskov") >= 2
    assert daemon.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_a_silent_server_is_given_up_on_and_connected_to_again(
    daemon_factory: type[Daemon], tmp_path: Path, dovecot: Dovecot
) -> None:
    """No BYE, no closed connection: the server just stops answering, during IDLE and then at connecting."""
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    settings = account(dovecot, timeout_seconds=1, idle_renew_seconds=1)
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, settings)
    daemon.start()
    wait_until(lambda: imap_status(daemon)["favrskov"]["idle"], 30, "the daemon to IDLE")
    dovecot.freeze()
    try:
        wait_until(
            lambda: "no answer" in (imap_status(daemon)["favrskov"]["last_error"] or ""), 30, "a timeout"
        )
        errors = metric(daemon, "postkasse_imap_errors_total", account="favrskov")
        wait_until(
            lambda: metric(daemon, "postkasse_imap_errors_total", account="favrskov") > errors,
            30,
            "a reconnection to time out too",
        )
        assert not imap_status(daemon)["favrskov"]["connected"]
    finally:
        dovecot.freeze(False)
    with dovecot.client() as box:
        box.append(numbered(1))
    store = Store(database_url)
    wait_until(stored_count_is(store, 1), 30, "mail once the server answers again")
    assert daemon.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_killed_between_the_write_and_the_move_stores_nothing_twice(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str, dovecot: Dovecot
) -> None:
    """The server cannot put mail into Processed, so the daemon stores the message and then fails to move it,
    again and again: it is killed right in that window, and the next daemon only moves it."""
    store = Store(database_url)
    upgrade(store)
    with dovecot.client() as box:
        box.create("Processed")
        box.create("Failed")
    dovecot.refuse_mail_in("favrskov", "Processed")
    raw = numbered(1)
    with dovecot.client() as box:
        box.append(raw)
    quick = account(dovecot, timeout_seconds=3, lease_seconds=9)  # the killed daemon's lease runs out soon
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, quick)
    daemon.start()
    wait_until(
        lambda: count(store, imap_messages) == 1, 30, f"the message stored and recorded; {daemon.log()}"
    )
    wait_until(lambda: "MOVE" in (imap_status(daemon)["favrskov"]["last_error"] or ""), 30, "a refused move")
    daemon.kill()
    assert folder_counts(dovecot) == (1, 0, 0)

    dovecot.refuse_mail_in("favrskov", "Processed", refuse=False)
    again = imap_daemon(daemon_factory, tmp_path, database_url, quick)
    again.start()
    wait_until(lambda: folder_counts(dovecot) == (0, 1, 0), 30, f"the message moved; log:\n{again.log()}")
    assert stored(store) == [raw]
    assert metric(again, "postkasse_imap_messages_recognised_total", account="favrskov") == 1
    assert metric(again, "postkasse_imap_messages_taken_total", account="favrskov") == 0
    assert again.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_two_daemons_on_one_account_take_each_message_once_and_the_second_takes_over(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str, dovecot: Dovecot
) -> None:
    """Two daemons configured with the same account, for failover: one reads it, each referral gets one
    receipt, and when the reader is killed the other takes over once the lease has run out (and finishes
    the killed daemon's pipeline work once that work's outbox lease has run out)."""
    store = prepare(tmp_path, database_url)
    settings = account(dovecot, timeout_seconds=3, lease_seconds=9)
    sections: dict[str, Any] = {
        "outbox": {"lease_seconds": 5, "redrive_interval_seconds": 1},
        "receipts": {"max_per_sender_per_hour": 100},  # one clinic sends all 30
    }
    daemons = [imap_daemon(daemon_factory, tmp_path, database_url, settings, **sections) for _ in range(2)]
    for daemon in daemons:
        daemon.start()

    def reading() -> list[bool]:
        return [imap_status(daemon)["favrskov"]["reading"] for daemon in daemons]

    wait_until(lambda: sorted(reading()) == [False, True], 30, "one daemon reading, the other standing by")
    reader, standby = daemons if reading()[0] else daemons[::-1]
    assert imap_status(standby)["favrskov"]["lease_holder"] == imap_status(reader)["favrskov"]["lease_holder"]
    assert metric(reader, "postkasse_imap_reading", account="favrskov") == 1
    assert metric(standby, "postkasse_imap_reading", account="favrskov") == 0

    def referral_mail(n: int) -> bytes:
        return mail(f"CPR: {CHILD_IN_FAVRSKOV}\nAdresse: Skolevej 12, 8382 Hinnerup", message_id=f"r{n}@x")

    with dovecot.client() as box:
        for n in range(20):
            box.append(referral_mail(n))
    wait_until(folders_are(dovecot, (0, 20, 0)), 60, "the first 20 taken")
    reader.kill()
    with dovecot.client() as box:
        for n in range(20, 30):
            box.append(referral_mail(n))
    wait_until(folders_are(dovecot, (0, 30, 0)), 60, f"the rest taken by the other; {standby.log()[-3000:]}")
    assert imap_status(standby)["favrskov"]["reading"]
    assert metric(standby, "postkasse_imap_messages_taken_total", account="favrskov") == 10

    wait_until(lambda: len(receipts(store)) == 30, 60, "a receipt for each referral")
    assert len(set(receipts(store))) == 30
    assert sorted(stored(store)) == sorted(referral_mail(n) for n in range(30))
    assert standby.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_message_stored_before_its_place_was_recorded_is_recognised_by_its_bytes(
    daemon_factory: type[Daemon], tmp_path: Path, dovecot: Dovecot
) -> None:
    """The daemon was killed after the commit of the message but before it recorded the UID: all that is left
    is the stored row. The message comes again (UIDVALIDITY may even have changed) and is only moved."""
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    store = Store(database_url)
    upgrade(store)
    raw, other = numbered(1), numbered(2)
    now = datetime.now(UTC)
    left = Received(
        "imap", "laege@klinik.example", ("postkasse@favrskov.example",), "imap:favrskov", True, now, raw
    )
    # The same bytes from another channel or account are another matter: they do not count.
    smtp = Received(
        "smtp", "laege@klinik.example", ("postkasse@localhost",), "127.0.0.1:1", False, now, other
    )
    with store.write() as conn:
        stored_messages.save(conn, [left, smtp], "parse", now + timedelta(minutes=5))
    with dovecot.client() as box:
        box.append(raw)
        box.append(other)
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, account(dovecot))
    daemon.start()
    wait_until(lambda: folder_counts(dovecot) == (0, 2, 0), 30, f"both moved; log:\n{daemon.log()}")
    assert sorted(stored(store)) == sorted([raw, other])  # `raw` once, `other` now also from IMAP
    assert metric(daemon, "postkasse_imap_messages_recognised_total", account="favrskov") == 1
    assert metric(daemon, "postkasse_imap_messages_taken_total", account="favrskov") == 1
    assert count(store, imap_messages) == 2
    assert daemon.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_poison_messages_go_to_the_failed_folder_and_the_rest_goes_through(
    daemon_factory: type[Daemon], tmp_path: Path, dovecot: Dovecot
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    good = [numbered(n) for n in range(3)]
    with dovecot.client() as box:
        box.append(good[0])
        box.append(b"\x01\x02 this is not mail \xff\r\n")
        box.append(good[1])
        box.append(numbered(99, size=8000))  # above max_message_bytes: not even fetched
        box.append(good[2])
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, account(dovecot, max_message_bytes=4096))
    daemon.start()
    wait_until(lambda: folder_counts(dovecot) == (0, 3, 2), 30, f"every message sorted; log:\n{daemon.log()}")
    store = Store(database_url)
    assert sorted(stored(store)) == sorted(good)
    for reason in ("not_a_message", "too_large"):
        assert metric(daemon, "postkasse_imap_messages_failed_total", account="favrskov", reason=reason) == 1
        assert metric(daemon, "postkasse_messages_rejected_total", channel="imap", reason=reason) == 1
    assert '"imap message moved to the failed folder"' in daemon.log()
    with dovecot.client() as box:  # and more mail still comes through after them
        box.append(numbered(3))
    wait_until(lambda: len(stored(store)) == 4, 30, "the next message")
    assert daemon.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_a_server_without_idle_or_move_is_polled_and_copied_from(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    server = Dovecot(tmp_path, capability=PLAIN_CAPABILITY)
    server.start()
    try:
        database_url = f"sqlite:///{tmp_path / 'pk.db'}"
        daemon = imap_daemon(
            daemon_factory, tmp_path, database_url, account(server, poll_interval_seconds=0.2)
        )
        daemon.start()
        wait_until(lambda: imap_status(daemon)["favrskov"]["last_cycle_at"], 30, "a first poll")
        assert not imap_status(daemon)["favrskov"]["idle"]
        with server.client() as box:
            for n in range(3):
                box.append(numbered(n))
        store = Store(database_url)
        wait_until(lambda: len(stored(store)) == 3, 30, f"three messages; log:\n{daemon.log()}")
        # COPY, \Deleted and UID EXPUNGE: gone from INBOX, not merely flagged
        wait_until(lambda: folder_counts(server) == (0, 3, 0), 30, "the messages moved")
        assert daemon.terminate() == 0
        store.dispose()
    finally:
        server.close()


@pytest.mark.slow
def test_a_failing_account_does_not_stop_the_others(
    daemon_factory: type[Daemon], tmp_path: Path, dovecot: Dovecot
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    daemon = imap_daemon(
        daemon_factory,
        tmp_path,
        database_url,
        account(dovecot, name="aarhus", user="nobody-here"),
        account(dovecot, name="favrskov"),
    )
    daemon.start()
    wait_until(lambda: imap_status(daemon)["aarhus"]["last_error"], 30, "the login to fail")
    assert "login refused" in imap_status(daemon)["aarhus"]["last_error"]
    with dovecot.client() as box:
        box.append(numbered(1))
    store = Store(database_url)
    wait_until(lambda: len(stored(store)) == 1, 30, "favrskov's mail")
    assert send(daemon.smtp_port, make_message())[0] == 250
    assert not imap_status(daemon)["aarhus"]["connected"]
    assert daemon.terminate() == 0
    store.dispose()


@pytest.mark.slow
def test_a_folder_of_5000_messages_is_drained_each_stored_once(
    daemon_factory: type[Daemon], tmp_path: Path, dovecot: Dovecot, capsys: pytest.CaptureFixture[str]
) -> None:
    total = 5000
    sent = [numbered(n) for n in range(total)]
    with dovecot.client() as box:
        for raw in sent:
            box.append(raw)
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    daemon = imap_daemon(daemon_factory, tmp_path, database_url, account(dovecot))
    started = time.monotonic()
    daemon.start()
    store = Store(database_url)
    wait_until(
        lambda: folder_counts(dovecot) == (0, total, 0), 300, f"the folder drained; {daemon.log()[-3000:]}"
    )
    drained = time.monotonic() - started
    rows = stored(store)
    assert Counter(hashlib.sha256(r).digest() for r in rows) == Counter(
        hashlib.sha256(r).digest() for r in sent
    )
    assert count(store, imap_messages) == total
    assert metric(daemon, "postkasse_imap_messages_taken_total", account="favrskov") == total
    assert daemon.terminate() == 0
    with capsys.disabled():
        print(f"\n{total} messages drained from IMAP in {drained:.1f} s (daemon start included)")
    store.dispose()


# --- in process: a message the store refuses -------------------------------------------------------------


class RefusingCommitter(GroupCommitter):
    """Stores like the real one, but refuses any message carrying a marker, as a store might refuse a row."""

    def _commit(self, group: list[Received]) -> list[Stored]:
        if any(b"X-Refuse-Me" in item.raw for item in group):
            raise ValueError("the store refuses this message")
        return super()._commit(group)


def test_a_message_the_store_refuses_goes_to_the_failed_folder(tmp_path: Path, dovecot: Dovecot) -> None:
    store = Store(f"sqlite:///{tmp_path / 'pk.db'}")
    upgrade(store)
    good = [numbered(n) for n in range(4)]
    with dovecot.client() as box:
        box.append(good[0])
        box.append(make_message(extra=b"X-Refuse-Me: yes\r\n"))
        for raw in good[1:]:
            box.append(raw)
    settings = ImapAccount(**account(dovecot))
    loop = asyncio.new_event_loop()  # the daemon's event loop, in a thread of its own
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)

    async def start() -> tuple[GroupCommitter, ImapChannel]:
        committer = RefusingCommitter(store, "parse", timedelta(minutes=5), lambda stored: None)
        committer.start()
        channel = ImapChannel([settings], committer, store, SystemClock())
        channel.start()
        return committer, channel

    committer, channel = on_loop(start())
    try:
        wait_until(lambda: folder_counts(dovecot) == (0, 4, 1), 30, "the refused message in Failed")
        assert (
            metric_value("postkasse_imap_messages_failed_total", account="favrskov", reason="store_refused")
            == 1
        )
    finally:
        on_loop(channel.stop(10))
        on_loop(committer.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert sorted(stored(store)) == sorted(good)
    store.dispose()
