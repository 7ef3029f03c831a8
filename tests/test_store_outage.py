"""When the store is down the mailbox says 451 (try again), never 250, and says so on /readyz."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from postkasse.store import Store
from tests.conftest import PG_ADMIN_URL, _pg_conninfo
from tests.helpers import make_message, send, stored_rows
from tests.servers import Daemon


class Outage:
    """A database owned by a role of its own, whose logins an administrator can switch off and on."""

    def __init__(self) -> None:
        self.role = f"pk_outage_{uuid.uuid4().hex[:8]}"
        self.url = make_url(PG_ADMIN_URL).set(username=self.role, password=None, database=self.role)

    def admin(self, *statements: str) -> None:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]

    def begin(self) -> None:
        self.admin(f'CREATE ROLE "{self.role}" LOGIN', f'CREATE DATABASE "{self.role}" OWNER "{self.role}"')

    def cut(self) -> None:
        self.admin(
            f'ALTER ROLE "{self.role}" NOLOGIN',
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{self.role}'",
        )

    def restore(self) -> None:
        self.admin(f'ALTER ROLE "{self.role}" LOGIN')

    def end(self) -> None:
        self.admin(
            f'DROP DATABASE IF EXISTS "{self.role}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{self.role}"'
        )


@pytest.fixture
def outage() -> Iterator[Outage]:
    outage = Outage()
    outage.begin()
    yield outage
    outage.end()


def test_store_down_means_451_and_not_ready(
    daemon_factory: type[Daemon], tmp_path: Path, outage: Outage
) -> None:
    url = outage.url.render_as_string(hide_password=False)
    daemon = daemon_factory(tmp_path, url)
    daemon.start()
    assert send(daemon.smtp_port, make_message(b"before\r\n"))[0] == 250

    outage.cut()
    code, reply = send(daemon.smtp_port, make_message(b"during\r\n"))
    assert code == 451, reply
    assert "try again later" in reply
    status, body = daemon.get("/readyz")
    assert status == 503 and b"store_unavailable" in body

    outage.restore()
    assert send(daemon.smtp_port, make_message(b"after\r\n"))[0] == 250
    assert daemon.get("/readyz")[0] == 200
    store = Store(url)
    assert [r.raw.rsplit(b"\r\n\r\n", 1)[1] for r in stored_rows(store)] == [b"before\r\n", b"after\r\n"]
    store.dispose()
    assert b'reason="store_unavailable"' in daemon.get("/metrics")[1]
