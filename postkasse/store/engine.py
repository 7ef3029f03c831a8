"""Connecting to the store: SQLite (WAL, synchronous=FULL) or PostgreSQL through psycopg 3."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from postkasse.errors import Safe

_WRITE = "postkasse_write"


class StoreUnavailable(Safe):
    """The database cannot be reached or refused the write; callers answer 'try again later'. Its text names
    only the driver's exception type, so it may be logged as it is."""


@contextmanager
def _unavailable_when_busy() -> Iterator[None]:
    """SQLite's "database is locked" (a writer held the lock past the busy timeout) and a lost or refused
    PostgreSQL connection are the store's state, not a fault in the request: they become StoreUnavailable
    (503 with Retry-After over HTTP). Only the exception's type is kept: its text may quote stored values."""
    try:
        yield
    except OperationalError as exc:
        raise StoreUnavailable(f"the store is busy or unreachable ({type(exc.orig).__name__})") from exc


BUSY = "the store is busy (another writer held it past the busy timeout)"


class WriterQueue:
    """SQLite's writers, one at a time, handed on the moment the last one is done.

    SQLite itself makes a writer that finds the lock taken sleep (1, 2, 5, ... up to 100 ms) and look again,
    so with the acceptors and the pipeline writing from several processes, a commit that takes 1 ms keeps
    the next writer waiting 5 to 25. Here the threads of one process queue on a lock, and the processes on
    an flock of a file beside the database, looked at again within a millisecond; SQLite's busy timeout
    still covers any writer that does not queue here (the sqlite3 shell, say)."""

    _local: ClassVar[dict[str, threading.Lock]] = {}
    _local_guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, database: str, timeout: float) -> None:
        self.path = f"{database}-writer.lock"
        self.timeout = timeout
        with self._local_guard:
            self.threads = self._local.setdefault(os.path.realpath(database), threading.Lock())
        self.fd: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        if not self.threads.acquire(timeout=self.timeout):
            raise StoreUnavailable(BUSY)
        try:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            pause = 0.0001
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreUnavailable(
                            "the store is busy (another writer held it too long)"
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.001)
            try:
                yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.threads.release()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Store:
    """The database, with separate read and write transactions.

    On SQLite a write transaction is `BEGIN IMMEDIATE`, taken in turn through a WriterQueue, so writers
    neither fail on a lock upgrade nor sleep on SQLite's busy handler; reads are deferred and never wait on
    a writer in WAL mode.
    """

    def __init__(self, url: str, *, pool_size: int = 8, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, busy_timeout=busy_timeout)
        database = make_url(url).database
        self.writers = (
            WriterQueue(database, busy_timeout)
            if self.dialect == "sqlite" and database and database != ":memory:"
            else None
        )

    def _turn(self) -> AbstractContextManager[None]:
        return self.writers.turn() if self.writers is not None else nullcontext()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def truncate_log(self) -> None:
        """After content was removed: SQLite's write-ahead log still holds the old pages until it is
        checkpointed and truncated (freed pages in the file itself are zeroed by `secure_delete`).
        PostgreSQL's old row versions go with (auto)VACUUM."""
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._turn(), _unavailable_when_busy(), self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def schema_change(self) -> Iterator[Connection]:
        """A write transaction for migrations. SQLite rebuilds a table to alter it (copy, drop, rename), which
        foreign keys referring to it forbid; they are off meanwhile and checked before the commit."""
        sqlite = self.dialect == "sqlite"
        with self._turn(), self.engine.connect() as conn:
            driver: Any = conn.connection.driver_connection
            if sqlite:
                driver.execute("PRAGMA foreign_keys=OFF")  # outside any transaction, or it is ignored
            try:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    yield conn
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise RuntimeError("the migration left rows whose foreign keys point nowhere")
            finally:
                if sqlite:
                    driver.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with _unavailable_when_busy(), self.engine.connect() as conn, conn.begin():
            yield conn

    def ping(self) -> bool:
        try:
            with self.read() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()
        if self.writers is not None:
            self.writers.close()


def make_engine(url: str, *, pool_size: int = 8, busy_timeout: float = 30.0) -> Engine:
    """`busy_timeout`: how long an SQLite writer waits for the lock before the store counts as busy."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, busy_timeout)
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=4,  # beyond the pool a connection is opened and closed per use: keep that rare
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


def _sqlite_engine(url: str, database: str | None, busy_timeout: float) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN, so the pysqlite driver never opens one itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA secure_delete=ON")  # what the retention purge frees is overwritten
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def insert_on_conflict(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The INSERT of the connection's dialect, which has ON CONFLICT (both dialects spell it the same)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring_duplicates(conn: Connection, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING, for the store's two dialects: the row that loses a race is skipped,
    and RETURNING names only the rows written."""
    return insert_on_conflict(conn, table).on_conflict_do_nothing()
