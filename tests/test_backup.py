"""Backup, restore and verify: a backup taken while `serve` takes mail holds every message acknowledged before
it began, restores into an empty store only, and `verify` finds a message whose bytes were changed."""

from __future__ import annotations

import hashlib
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from postkasse import kinds
from postkasse.store import Received, Store
from postkasse.store.backup import BackupError, backup, client_tool, restore, verify
from postkasse.store.messages import save
from postkasse.store.schema import messages, outbox
from tests.conftest import PG_ADMIN_URL, _pg_conninfo
from tests.helpers import RCPT, make_message
from tests.servers import Daemon, wait_until, write_config

MAILS = 300  # at least; the sender goes on until the backup has ended
MOST = 5000


def _needs_tools(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        missing = [t for t in ("pg_dump", "pg_restore") if client_tool(t) is None]
        if missing:
            pytest.skip(
                f"{' and '.join(missing)} not on PATH nor in /usr/lib/postgresql/*/bin; "
                "the PostgreSQL backup needs the client programs"
            )


@contextmanager
def empty_target(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored' / 'postkasse.db'}"
        return
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postkasse(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postkasse", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class Sender(threading.Thread):
    """Sends small messages over one SMTP connection, noting when each got its 250: at least MAILS, and on
    until told to stop."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.acked: list[tuple[float, int, str]] = []  # (monotonic time of the 250, message id, sha256)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
                client.ehlo()
                for n in range(MOST):
                    if n >= MAILS and self.stop.is_set():
                        break
                    raw = make_message(f"Besked {n}\r\n".encode())
                    assert client.mail("laege@klinik.example")[0] == 250
                    assert client.rcpt(RCPT)[0] == 250
                    code, reply = client.data(raw)
                    assert code == 250, reply
                    acked = time.monotonic()
                    stored = int(reply.decode().rsplit("stored as message ", 1)[1].split()[0])
                    self.acked.append((acked, stored, hashlib.sha256(raw).hexdigest()))
        except BaseException as exc:
            self.error = exc


@pytest.mark.slow
def test_a_backup_taken_while_serve_takes_mail_restores_whole(
    store: Store, database_url: str, daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    _needs_tools(database_url)
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    sender = Sender(daemon.smtp_port)
    sender.start()
    wait_until(lambda: len(sender.acked) >= MAILS // 3 or not sender.is_alive(), 120, "a third of the mail")
    assert sender.error is None, sender.error

    backups = tmp_path / "backups"
    backups.mkdir()
    began = time.monotonic()
    done = postkasse(daemon.config, "backup", "--out", str(backups))
    assert done.returncode == 0, done.stderr
    assert sender.is_alive(), f"the sender stopped early: {sender.error}"
    sender.stop.set()
    sender.join(300)
    assert sender.error is None, sender.error
    daemon.terminate()

    (written,) = backups.iterdir()
    suffix = "db" if database_url.startswith("sqlite") else "dump"
    assert written.name.startswith("postkasse-") and written.name.endswith(f".{suffix}")
    assert str(written) in done.stdout

    before = {stored: sha for acked, stored, sha in sender.acked if acked < began}
    assert len(before) >= MAILS // 3
    with empty_target(database_url, tmp_path) as target_url:
        target = Store(target_url)
        try:
            restore(written, target)
            assert verify(target) == []
            with target.read() as conn:
                restored = dict(conn.execute(select(messages.c.id, messages.c.sha256)).all())
                raws = conn.execute(select(messages.c.id, messages.c.raw).where(messages.c.id.in_(before)))
                computed = {row.id: hashlib.sha256(row.raw).hexdigest() for row in raws}
        finally:
            target.dispose()
        config = write_config(tmp_path / "restored.toml", {"database": {"url": target_url}})
        checked = postkasse(config, "verify")
    missing = sorted(set(before) - set(restored))
    assert not missing, f"{len(missing)} of {len(before)} acknowledged messages are not in the backup"
    assert all(restored[m] == before[m] == computed[m] for m in before)
    assert len(restored) < len(sender.acked)  # the backup is the store at one moment, not at the end
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("ok") and f"messages: {len(restored)}" in checked.stdout
    print(
        f"{len(before)} acknowledged before the backup began; {len(restored)} in it; {len(sender.acked)} sent"
    )


def _some_messages(store: Store, count: int = 3) -> None:
    now = datetime.now(UTC)
    batch = [
        Received("smtp", "laege@klinik.example", (RCPT,), "127.0.0.1:1", False, now, make_message())
        for _ in range(count)
    ]
    with store.write() as conn:
        save(conn, batch, kinds.PARSE, now + timedelta(minutes=5))


def test_restore_refuses_a_store_that_is_not_empty(store: Store, database_url: str, tmp_path: Path) -> None:
    _needs_tools(database_url)
    _some_messages(store)
    written = backup(store, tmp_path / "pk.backup")
    with pytest.raises(BackupError, match="not empty: it has postkasse tables"):
        restore(written, store)  # its own store, tables and rows
    with empty_target(database_url, tmp_path) as target_url:
        target = Store(target_url)
        try:
            with target.write() as conn:
                conn.exec_driver_sql("CREATE TABLE notes (line TEXT)")
                conn.exec_driver_sql("INSERT INTO notes VALUES ('x')")
            with pytest.raises(BackupError, match="its table notes has rows"):
                restore(written, target)
        finally:
            target.dispose()
    with pytest.raises(BackupError, match="exists already"):
        backup(store, written)


def test_verify_finds_a_changed_byte_and_a_far_claim(store: Store, database_url: str, tmp_path: Path) -> None:
    _needs_tools(database_url)
    _some_messages(store)
    assert verify(store) == []
    written = backup(store, tmp_path / "pk.backup")
    assert not list(tmp_path.glob(".*partial*"))
    with empty_target(database_url, tmp_path) as target_url:
        copy = Store(target_url)
        try:
            restore(written, copy)
            assert verify(copy) == []
            with copy.write() as conn:
                raw = conn.execute(select(messages.c.raw).where(messages.c.id == 2)).scalar_one()
                changed = raw[:-1] + bytes([raw[-1] ^ 1])
                conn.execute(update(messages).where(messages.c.id == 2).values(raw=changed))
                conn.execute(
                    update(outbox)
                    .where(outbox.c.target_id == 3)
                    .values(next_attempt_at=datetime.now(UTC) + timedelta(days=30))
                )
            problems = verify(copy)
        finally:
            copy.dispose()
    assert problems == [
        "1 messages whose sha256 does not match their raw bytes: ids 2",
        problems[1],
    ]
    assert problems[1].startswith("1 pending outbox rows claimed beyond") and problems[1].endswith("ids 3")
    assert verify(store) == []  # the original is untouched


def test_without_pg_dump_the_error_names_it_and_pitr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("postkasse.store.backup.client_tool", lambda name: None)
    store = Store("postgresql+psycopg://postgres@127.0.0.1:5432/unused")  # never connected to
    with pytest.raises(BackupError, match=r"pg_dump is not installed.*\(PITR\)"):
        backup(store, tmp_path / "pk.dump")
    assert list(tmp_path.iterdir()) == []  # no half backup left behind
    store.dispose()
