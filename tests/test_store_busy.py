"""A busy or unreachable store is a state to wait out, not an error: SQLite's "database is locked" and a
refused PostgreSQL connection become StoreUnavailable, which the HTTP API answers 503 with Retry-After."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from postkasse.store import Store, StoreUnavailable
from tests.servers import Daemon
from tests.test_medcom_flow import fixture
from tests.test_medcom_hostile_e2e import post
from tests.test_store_outage import Outage, outage  # noqa: F401  (a fixture)
from tests.test_thread_e2e import new_token


def test_a_locked_sqlite_store_is_unavailable_and_says_nothing_stored(tmp_path: Path) -> None:
    path = tmp_path / "pk.db"
    store = Store(f"sqlite:///{path}", busy_timeout=0.2)
    with store.write() as conn:
        conn.execute(text("CREATE TABLE patients (cpr TEXT UNIQUE)"))
        conn.execute(text("INSERT INTO patients VALUES ('0102154123')"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
    with pytest.raises(StoreUnavailable) as busy, store.write() as conn:
        conn.execute(text("INSERT INTO patients VALUES ('0102154124')"))
    assert "0102154" not in str(busy.value)
    holder.execute("ROLLBACK")
    holder.close()
    with pytest.raises(Exception) as duplicate, store.write() as conn:  # not a busy store: a real error
        conn.execute(text("INSERT INTO patients VALUES ('0102154123')"))
    assert not isinstance(duplicate.value, StoreUnavailable)
    store.dispose()


@pytest.mark.slow
def test_a_document_posted_while_the_store_is_down_gets_503_and_retry_after(
    daemon_factory: type[Daemon],
    tmp_path: Path,
    outage: Outage,  # noqa: F811
) -> None:
    daemon = daemon_factory(tmp_path, outage.url.render_as_string(hide_password=False))
    daemon.start()
    epj = new_token(daemon, "--sender", "--name", "epj")
    document = fixture("Bundle-R-Tek-K")
    outage.cut()
    status, headers, body = post(daemon, epj, document)
    assert (status, headers["Retry-After"]) == (503, "5"), body
    assert b'"code":"store_unavailable"' in body
    outage.restore()
    assert post(daemon, epj, document)[0] == 202


def test_sqlite_writers_of_other_processes_queue_and_go_in_turn(tmp_path: Path) -> None:
    """A writer in another process holds the store's turn: this one waits for it (a busy store past the
    busy timeout), and writes the moment it is given back."""
    path = tmp_path / "pk.db"
    store = Store(f"sqlite:///{path}", busy_timeout=0.3)
    with store.write() as conn:
        conn.execute(text("CREATE TABLE notes (n INTEGER)"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            f"{path}-writer.lock",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with pytest.raises(StoreUnavailable), store.write() as conn:
        conn.execute(text("INSERT INTO notes VALUES (1)"))
    assert holder.communicate(input="") is not None  # gives the turn back by exiting
    with store.write() as conn:
        conn.execute(text("INSERT INTO notes VALUES (2)"))
    with store.read() as conn:
        assert conn.execute(text("SELECT n FROM notes")).scalars().all() == [2]
    store.dispose()
