"""Backing up the store, restoring a backup into an empty one, and checking a store's integrity.

SQLite: the online backup API, copying the file page by page inside one read transaction, so the copy is the
store as it was at one moment while `serve` goes on writing (WAL lets writers proceed meanwhile).
PostgreSQL: `pg_dump --format=custom` (one repeatable-read snapshot) and `pg_restore`. Point-in-time recovery
(base backups and WAL archiving) is the database administrator's, outside postkasse.

A backup is written under a temporary name in the target's directory and renamed when complete, so a half
backup never looks whole. Nothing here prints or returns message contents: problems name row ids only.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, Connection, Table, func, inspect, select
from sqlalchemy.engine import make_url

from postkasse import kinds
from postkasse.store.engine import Store
from postkasse.store.migrate import alembic_config, current
from postkasse.store.schema import deadline_alerts, messages, metadata, outbox, outgoing_mail, referrals

PAGES_PER_STEP = 1024  # SQLite pages copied per backup step (4 MiB at the default page size)
BATCH = 500  # rows fetched at a time when streaming messages
FAR_FUTURE = timedelta(days=1)  # a lease or claim reaching further than this is not one the daemon took
_SHOWN = 10  # ids named per problem; the count says how many more


class BackupError(Exception):
    """A backup or restore could not be made; the text says why and names no stored content."""


def backup(store: Store, out: Path) -> Path:
    """Write a consistent backup of `store` to `out` (or, if `out` is a directory, to a timestamped file in
    it) and return its path. Safe to run while `serve` writes."""
    out = Path(out)
    if out.is_dir():
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        out = out / f"postkasse-{stamp}.{'db' if store.dialect == 'sqlite' else 'dump'}"
    if out.exists():
        raise BackupError(f"{out} exists already; a backup never overwrites one")
    with _partial(out) as partial:
        if store.dialect == "sqlite":
            _sqlite_backup(_sqlite_path(store), partial)
        elif store.dialect == "postgresql":
            _pg_run(
                "pg_dump",
                ["--format=custom", f"--file={partial}", "--no-password"],
                store.url,
            )
        else:
            raise BackupError(f"no backup for a {store.dialect} store")
    return out


def restore(backup_file: Path, store: Store) -> None:
    """Copy a backup made by `backup` into `store`, which must be empty: no postkasse table, no rows."""
    backup_file = Path(backup_file)
    if not backup_file.is_file():
        raise BackupError(f"{backup_file} is not a file")
    refusal = _not_empty(store)
    if refusal:
        raise BackupError(f"refusing to restore into a store that is not empty: {refusal}")
    store.dispose()  # no pooled connection holds the old (empty) file or database open
    if store.dialect == "sqlite":
        _sqlite_restore(backup_file, _sqlite_path(store))
    elif store.dialect == "postgresql":
        _pg_run(
            "pg_restore",
            ["--no-owner", "--exit-on-error", "--single-transaction", "--no-password", str(backup_file)],
            store.url,
            dbname_flag=True,
        )
    else:
        raise BackupError(f"no restore for a {store.dialect} store")
    store.dispose()


@dataclass
class Verification:
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)


def verify(store: Store, now: datetime | None = None) -> list[str]:
    """The store's integrity problems; empty when it is sound."""
    return check(store, now).problems


def check(store: Store, now: datetime | None = None) -> Verification:
    """`verify`, with the number of rows checked of each kind."""
    now = now or datetime.now(UTC)
    result = Verification()
    head = ScriptDirectory.from_config(alembic_config(store)).get_current_head()
    at = current(store)
    if at != head:
        result.problems.append(f"schema at revision {at or 'none'}, not at the head {head}")
        return result  # the checks below read tables the head revision defines
    with store.read() as conn:
        _check_messages(conn, result)
        _check_referrals(conn, result)
        _check_outbox(conn, result, now)
    return result


def _check_messages(conn: Connection, result: Verification) -> None:
    query = select(messages.c.id, messages.c.sha256, messages.c.size, messages.c.raw).where(
        messages.c.purged_at.is_(None)
    )
    wrong_hash: list[int] = []
    wrong_size: list[int] = []
    checked = 0
    for row in conn.execution_options(yield_per=BATCH).execute(query.order_by(messages.c.id)):
        checked += 1
        raw = bytes(row.raw)
        if len(raw) != row.size:
            wrong_size.append(row.id)
        if hashlib.sha256(raw).hexdigest() != row.sha256:
            wrong_hash.append(row.id)
    result.checked["messages"] = checked
    result.checked["purged messages"] = conn.execute(
        select(func.count()).select_from(messages).where(messages.c.purged_at.is_not(None))
    ).scalar_one()
    _report(result, wrong_hash, "messages whose sha256 does not match their raw bytes")
    _report(result, wrong_size, "messages whose size does not match their raw bytes")


def _check_referrals(conn: Connection, result: Verification) -> None:
    result.checked["referrals"] = conn.execute(select(func.count()).select_from(referrals)).scalar_one()
    missing = _dangling(conn, referrals, referrals.c.message_id, messages)
    _report(result, missing, "referrals whose message is missing")


# Which table each outbox step's target_id names.
_TARGETS: dict[str, Table] = {
    kinds.PARSE: messages,
    kinds.ROUTE: messages,
    kinds.RECEIPT: messages,
    kinds.SEND: outgoing_mail,
    kinds.URGENT: referrals,
    kinds.ALERT: deadline_alerts,
    kinds.ALERT_RESOLVED: deadline_alerts,
}


def _check_outbox(conn: Connection, result: Verification, now: datetime) -> None:
    result.checked["outbox rows"] = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    for kind, table in _TARGETS.items():
        missing = _dangling(conn, outbox, outbox.c.target_id, table, outbox.c.kind == kind)
        _report(result, missing, f"outbox {kind} rows whose target ({table.name}) is missing")
    unknown = conn.execute(
        select(outbox.c.id).where(outbox.c.kind.not_in(list(_TARGETS))).order_by(outbox.c.id)
    ).scalars()
    _report(result, list(unknown), "outbox rows of an unknown kind")
    far = now + FAR_FUTURE
    leased = conn.execute(
        select(outbox.c.id)
        .where(outbox.c.state == "pending", outbox.c.next_attempt_at > far)
        .order_by(outbox.c.id)
    ).scalars()
    _report(result, list(leased), f"pending outbox rows claimed beyond {far.isoformat(timespec='seconds')}")
    claimed = conn.execute(
        select(outgoing_mail.c.id).where(outgoing_mail.c.claimed_until > far).order_by(outgoing_mail.c.id)
    ).scalars()
    _report(result, list(claimed), f"outgoing mails claimed beyond {far.isoformat(timespec='seconds')}")


def _dangling(
    conn: Connection, table: Table, column: ColumnElement[int], target: Table, *where: ColumnElement[bool]
) -> list[int]:
    """Ids of `table`'s rows whose `column` names no row of `target`."""
    query = (
        select(table.c.id)
        .select_from(table.outerjoin(target, column == target.c.id))
        .where(target.c.id.is_(None), *where)
        .order_by(table.c.id)
    )
    return list(conn.execute(query).scalars())


def _report(result: Verification, ids: list[int], what: str) -> None:
    if not ids:
        return
    shown = ", ".join(str(i) for i in ids[:_SHOWN])
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    result.problems.append(f"{len(ids)} {what}: ids {shown}{more}")


# --- emptiness -----------------------------------------------------------------------------------------


def _not_empty(store: Store) -> str | None:
    """Why `store` is not empty, or None when it is."""
    ours = {*metadata.tables, "alembic_version"}
    with store.read() as conn:
        names = inspect(conn).get_table_names()
        present = sorted(ours.intersection(names))
        if present:
            return f"it has postkasse tables ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''})"
        for name in names:
            quoted = conn.dialect.identifier_preparer.quote(name)
            if conn.exec_driver_sql(f"SELECT 1 FROM {quoted} LIMIT 1").first() is not None:
                return f"its table {name} has rows"
    return None


# --- SQLite ----------------------------------------------------------------------------------------------


def _sqlite_path(store: Store) -> Path:
    database = make_url(store.url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite store has no file to back up or restore into")
    return Path(database)


def _sqlite_backup(source: Path, target: Path) -> None:
    if not source.is_file():
        raise BackupError(f"the SQLite store {source} does not exist")
    src = sqlite3.connect(source, isolation_level=None, timeout=30)  # read-only URIs cannot open a WAL
    with closing(src), closing(sqlite3.connect(target, isolation_level=None)) as dst:
        # One read transaction across every step: in WAL mode each step reads the same snapshot, and writes
        # by `serve` meanwhile neither restart the copy nor enter it.
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        try:
            src.backup(dst, pages=PAGES_PER_STEP)
        finally:
            src.execute("COMMIT")
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        ok = dst.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise BackupError("the copy failed SQLite's quick_check")


def _sqlite_restore(backup_file: Path, target: Path) -> None:
    src = sqlite3.connect(f"{backup_file.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    with closing(src), closing(sqlite3.connect(target, isolation_level=None, timeout=30)) as dst:
        ok = src.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise BackupError(f"{backup_file} is not a sound SQLite database (quick_check failed)")
        dst.execute("PRAGMA journal_mode=DELETE")  # the backup API may not change a WAL target's page size
        src.backup(dst, pages=PAGES_PER_STEP)
        dst.execute("PRAGMA journal_mode=WAL")


# --- PostgreSQL ------------------------------------------------------------------------------------------


def client_tool(name: str) -> str | None:
    """The PostgreSQL client program `name`: on PATH, else the newest in Debian's /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3] or 0)
    )
    return candidates[-1] if candidates else None


def _pg_run(tool: str, args: list[str], url: str, *, dbname_flag: bool = False) -> None:
    program = client_tool(tool)
    if program is None:
        raise BackupError(
            f"{tool} is not installed (install the PostgreSQL client, e.g. postgresql-client); "
            "without it use the database's own backups: base backups with WAL archiving (PITR)"
        )
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)  # not on the command line, where ps would show it
    libpq = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    command = [program, *args, f"--dbname={libpq}" if dbname_flag else libpq]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BackupError(f"{tool} failed with exit status {done.returncode}: {detail[0]}")


# --- writing under a temporary name ----------------------------------------------------------------------


@contextmanager
def _partial(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed to `out` (and flushed to disk) when the block succeeds and
    removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        yield partial
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, out)
        directory = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        partial.unlink(missing_ok=True)
