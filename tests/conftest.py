"""Shared fixtures: both stores, free loopback ports, and real `postkasse serve` processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from postkasse.store import Store
from postkasse.store.migrate import upgrade
from tests.browser import _chromium, browser, browser_context, page  # noqa: F401 (fixtures)
from tests.servers import Daemon

PG_ADMIN_URL = os.environ.get("POSTKASSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("POSTKASSE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend: a file for SQLite, a fresh database for PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'postkasse.db'}"
        return
    name = f"pk_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    upgrade(store)
    yield store
    store.dispose()


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A dramatiq namespace of its own on the shared Redis, removed afterwards."""
    import redis

    namespace = f"pk-test-{uuid.uuid4().hex[:8]}"
    yield namespace
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[type[Daemon]]:
    """Starts `postkasse serve` processes for a test and kills any still running at its end."""
    started: list[Daemon] = []

    class Tracked(Daemon):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for daemon in started:
        daemon.kill()


_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Report a measured figure (cases, peak memory, ...): `make test` prints them all at its end."""
    found = request.config.stash.setdefault(_FIGURES, [])
    return lambda line: found.append(f"{request.node.name}: {line}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    found = config.stash.get(_FIGURES, [])
    if found:
        terminalreporter.section("figures")
        for line in found:
            terminalreporter.write_line(line)
