"""Deadline check benchmark: one check over 1,000,000 referrals and the alert steps after it, on SQLite and
PostgreSQL.

What it does, all with one seed so every run sees the same data:

1. Generates 1,000,000 referrals spread over ~3 years and the 98 municipalities (population-like weights),
   each with its `messages` row (a few bytes of raw mail). Almost all are `handled`; the open ones are
   placed near `NOW` (a fixed moment, Friday 20 November 2026 13:00 in Copenhagen): 0.3% `new`, mostly
   queued within the last 20 hours, the late ones mostly in six slow municipalities; 1.5% `pulled`, mostly
   received within the last 6 days; 0.05% in `triage`. Some hundreds are past a warning or a breach, and a
   few of the late ones carry a committee exception. warn_at/due_at come from
   `postkasse.deadlines.rules.Rules().handling(received_at)` itself. The expected findings are counted
   from the generated data, independently of `assess`, and `assess` must find exactly those.
2. Migrates a fresh store and loads it in bulk: SQLite with `sqlite3` executemany in batches (file in a
   temporary directory), PostgreSQL with COPY through psycopg into the database `pk_bench_deadlines`
   (created, then dropped at the end), followed by VACUUM (ANALYZE) and CHECKPOINT, what autovacuum and
   the checkpointer would soon do anyway. The load goes into the migrated schema, indexes and foreign
   keys in place; its timing is reported but is not the target.
3. Measures in a fresh process per store (its peak RSS is the check's memory; VmHWM is reset before each
   phase through /proc/self/clear_refs), each phase `--repeat` times (min/median/max):
   * `assess(conn, NOW, rules, codes)` alone, in a read transaction;
   * the first check, `run_check(...)` raising every alert: the alert rows (one multi-row INSERT ... ON
     CONFLICT DO NOTHING RETURNING) and one outbox row per alert (kind `alert`), no mails; before each
     repeat the alerts, mails and outbox rows of the previous one are deleted (not timed);
   * the mail composition that follows a first check: every `Next` the check returned run through
     `Pipeline.run` (the `alert` step, `SendAlert`: compose the mails, store them with their `send` outbox
     rows, mark the row done), one after the other, each step in its own short transactions, as the
     daemon's workers run them; before each repeat a reset and a first check (not timed). Total, per
     alert, and the slowest step;
   * the steady check, `run_check(...)` when every alert is already raised and mailed (it must write
     nothing);
   * baselines in the same process, inside a transaction that is rolled back: `assess` with the indexes
     (state, queued_at) and (state, warn_at) dropped (the planner's next choice), `assess` with every
     index on `referrals` unusable (a full scan), and `SELECT count(*) FROM referrals`; and 800 round
     trips (`SELECT 1`), the price of a statement on this machine.
   The query plans of the three `assess` statements (EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on
   PostgreSQL) are captured from the statements `assess` really runs. One steady check, one first check
   and the mail composition after it are also run under cProfile with SQL statement timing, to show where
   the time goes.

The check is built as the daemon builds it (`Alerter` with the rules from the default settings, a
`Pipeline` with the `alert` and `alert_resolved` steps, logging set up as `serve` does, at INFO, into a
file). Every municipality gets a notification address and operations has one, so each alert is two mails
(one for a referral in triage). The `send` rows the alert steps write are left pending (no relay here).
The report compares with the last numbers of the old design, where the check composed and stored every
mail inside its own write transaction (`OLD_DESIGN`).

    .venv/bin/python bench/deadlines.py                         # both stores, print the results
    .venv/bin/python bench/deadlines.py --record                # and write bench/RESULTS.md
    .venv/bin/python bench/deadlines.py --referrals 100000 --store sqlite --repeat 3   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime as dt
import hashlib
import io
import json
import pstats
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import (  # bench/ is the script's folder, first on sys.path
    CLK_TCK,
    BenchError,
    code_version,
    command,
    cpu_ticks,
    current_rss_mb,
    machine,
    noise,
    peak_hwm_mb,
    record_section,
    reset_hwm,
)
from sqlalchemy import Connection, event, func, select, text

from postkasse import logs
from postkasse.clock import FixedClock
from postkasse.config import DEFAULT_MUNICIPALITIES, DeadlineSettings
from postkasse.deadlines.alerts import Alerter
from postkasse.deadlines.assess import Assessment, assess
from postkasse.deadlines.rules import Rules, rulebook
from postkasse.flows.alerts import SendAlert, SendResolved, run_check
from postkasse.pipeline import Next, Pipeline
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from postkasse.store.schema import deadline_alerts, outbox, outgoing_mail, referrals

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
SECTION_BEGIN = "<!-- bench/deadlines.py: begin (replaced by --record) -->"
SECTION_END = "<!-- bench/deadlines.py: end -->"

TARGET_S = 1.0  # one deadline check
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)  # a Friday, 13:00 in Copenhagen
YEARS = 3
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "pk_bench_deadlines"
FROM_ADDRESS = "postkasse@postkasse.example"
OPERATIONS_ADDRESS = "drift@postkasse.example"
BATCH = 50_000
INDEXES = ("ix_referrals_state_queued_at", "ix_referrals_state_warn_at")
ROUND_TRIPS = 800  # the statements of one steady check in the old design (one per finding)
LEASE = dt.timedelta(seconds=300)  # the default [outbox] lease_seconds


@dataclass(frozen=True)
class OldDesign:
    """The last numbers recorded for the old design, where the check inserted one alert row per finding
    (each its own INSERT ... ON CONFLICT) and composed and stored the mails inside its write transaction.
    Medians of 5 runs, from bench/RESULTS.md as recorded; the deadline code at 0d46769 is that of 04ab039."""

    commit: str = "0d46769"
    recorded: str = "2026-11-23 05:00 UTC, 2 CPUs (Intel(R) Xeon(R) Processor), Linux 6.18.44-fc-v669"
    referrals: int = 1_000_000
    seed: int = 2026
    alerts: int = 812
    mails: int = 1614
    steady_ms: tuple[tuple[str, int], ...] = (("sqlite", 159), ("postgresql", 399))
    first_ms: tuple[tuple[str, int], ...] = (("sqlite", 2676), ("postgresql", 4988))


OLD_DESIGN = OldDesign()

SECOND = 1_000_000  # times are integer microseconds since the epoch while generating
HOUR = 3600 * SECOND
DAY = 24 * HOUR
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NAIVE_EPOCH = dt.datetime(1970, 1, 1)
NOW_US = (NOW - EPOCH) // dt.timedelta(microseconds=1)

STATES = ("handled", "new", "pulled", "triage")
HANDLED, NEW, PULLED, TRIAGE = range(4)
EXCEPTIONS = (None, "authority_case", "medical_reason")
FIRST = ("Anna", "Emil", "Freja", "Noah", "Ida", "William", "Clara", "Oscar", "Alma", "Karl")
LAST = ("Hansen", "Jensen", "Nielsen", "Pedersen", "Andersen", "Larsen", "Sørensen", "Rasmussen")
RAW = b"From: laege@klinik.example\r\nSubject: Henvisning\r\n\r\nx\r\n"
RAW_SHA256 = hashlib.sha256(RAW).hexdigest()


# --- measuring ------------------------------------------------------------------------------------


def processes() -> dict[int, tuple[str, str, int]]:
    """pid -> (comm, cmdline, user+system jiffies) of every process we can read."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2 :].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[int(entry.name)] = (comm, cmdline, int(rest[11]) + int(rest[12]))
    return out


def own_postgres_ticks(snapshot: dict[int, tuple[str, str, int]]) -> int:
    """CPU jiffies of the PostgreSQL backends serving the benchmark's database (by their process title)."""
    return sum(t for comm, cmd, t in snapshot.values() if comm == "postgres" and f" {PG_DATABASE} " in cmd)


@dataclass
class Run:
    """One timed call: wall and CPU seconds of this process, PostgreSQL backend CPU, machine noise."""

    wall: float
    cpu: float
    pg_cpu: float
    steal: float  # share of all CPU time the hypervisor gave to other guests
    other: float  # CPUs kept busy by anything but this process and its PostgreSQL backends


def timed(fn: Callable[[], Any], postgres: bool) -> tuple[Run, Any]:
    """Call `fn` once; its wall and CPU time, and what else the machine did meanwhile."""
    pg0 = own_postgres_ticks(processes()) if postgres else 0
    start = cpu_ticks()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    value = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    end = cpu_ticks()
    pg = ((own_postgres_ticks(processes()) - pg0) / CLK_TCK) if postgres else 0.0
    return Run(wall, cpu, pg, *noise(start, end, wall, cpu + pg)), value


# --- generating the data --------------------------------------------------------------------------


@dataclass
class Data:
    """The referrals as columns, in id order (id = index + 1; received_at ascending); -1 is NULL."""

    codes: list[str]
    received: array[int]
    queued: array[int]
    pulled: array[int]
    handled: array[int]
    warn: array[int]
    due: array[int]
    state: array[int]
    muni: array[int]  # index into codes
    exception: array[int]  # index into EXCEPTIONS
    urgent: array[int]
    via_triage: array[int]
    slow: list[str]  # the municipalities whose queues were not emptied
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.received)


def us_of(moment: dt.datetime) -> int:
    return (moment - EPOCH) // dt.timedelta(microseconds=1)


def moment_of(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def generate(n: int, codes: list[str], seed: int) -> Data:
    """`n` referrals in the mix described in the module docstring."""
    started = time.perf_counter()
    rng = random.Random(seed)
    uniform, r = rng.uniform, rng.random
    weights = [rng.lognormvariate(0, 1) for _ in codes]
    slow = set(rng.sample(range(len(codes)), 6))
    slow_list = sorted(slow)
    draws = iter(rng.choices(range(len(codes)), weights, k=n))
    counts = {TRIAGE: round(n * 0.0005), NEW: round(n * 0.003), PULLED: round(n * 0.015)}
    counts[HANDLED] = n - sum(counts.values())
    start = NOW_US - YEARS * 365 * DAY

    def delay() -> tuple[int, int]:
        """From acceptance to the municipality's queue: seconds, or hours when sorted by hand first."""
        if r() < 0.03:
            return int(uniform(0.5, 30) * HOUR), 1
        return int(uniform(1, 60) * SECOND), 0

    rows: list[tuple[int, int, int, int, int, int, int, int, int]] = []
    for state, count in counts.items():
        for _ in range(count):
            muni = next(draws)
            exc = 0
            if state == TRIAGE:
                received = NOW_US - int(min(rng.expovariate(1 / 1.5), 30) * DAY)
                rows.append((received, state, -1, -1, -1, -1, 0, int(r() < 0.03), 1))
                continue
            if state == NEW:
                x = r()
                age = (
                    uniform(0, 20) * HOUR
                    if x < 0.88
                    else uniform(20, 24) * HOUR
                    if x < 0.95
                    else uniform(1, 4) * DAY
                    if x < 0.99
                    else uniform(4, 12) * DAY
                )
                if age >= 20 * HOUR and r() < (0.97 if age >= 24 * HOUR else 0.9):
                    muni = rng.choice(slow_list)  # a queue nobody emptied
                queued = NOW_US - int(age)
                wait, via = delay()
                received = queued - wait
                pulled = handled = -1
            elif state == PULLED:
                x = r()
                age = uniform(0, 6) if x < 0.97 else uniform(6, 8) if x < 0.99 else uniform(8, 60)
                received = NOW_US - int(age * DAY)
                wait, via = delay()
                queued = min(received + wait, NOW_US)
                pulled = queued + int(uniform(0, min(20 * HOUR, NOW_US - queued)))
                handled = -1
            else:
                received = int(uniform(start, NOW_US - HOUR))
                wait, via = delay()
                queued = min(received + wait, NOW_US)
                pulled = min(queued + int(uniform(0.5, 20) * HOUR), NOW_US)
                handled = min(pulled + int(uniform(1 * HOUR, 7 * DAY)), NOW_US)
                exc = 1 + (r() < 0.5) if r() < 0.003 else 0
            if state != HANDLED and NOW_US - received >= 6 * DAY and r() < 0.05:
                exc = 1 + (r() < 0.5)  # the committee stopped the clock
            rows.append((received, state, muni, queued, pulled, handled, exc, int(r() < 0.03), via))
    rows.sort()
    data = Data(
        codes,
        array("q", (x[0] for x in rows)),
        array("q", (x[3] for x in rows)),
        array("q", (x[4] for x in rows)),
        array("q", (x[5] for x in rows)),
        array("q"),
        array("q"),
        array("b", (x[1] for x in rows)),
        array("h", (x[2] for x in rows)),
        array("b", (x[6] for x in rows)),
        array("b", (x[7] for x in rows)),
        array("b", (x[8] for x in rows)),
        [codes[i] for i in slow_list],
    )
    del rows
    rules = Rules()
    for received in data.received:  # the production arithmetic itself, ~10 µs a referral
        warn_at, due_at = rules.handling(moment_of(received))
        data.warn.append(us_of(warn_at))
        data.due.append(us_of(due_at))
    data.seconds = time.perf_counter() - started
    return data


@dataclass
class Expected:
    """What `assess` must find at NOW, counted from the generated data alone."""

    findings: dict[str, int]  # "deadline level" -> count
    queues: dict[str, int]  # emptying level -> municipalities
    mails: int  # mails the alert steps after a first check write
    states: dict[str, int]
    exceptions_late: int  # late open referrals whose clock a committee stopped

    @property
    def total(self) -> int:
        return sum(self.findings.values())


def expected(data: Data) -> Expected:
    findings: Counter[str] = Counter()
    oldest: dict[int, int] = {}
    mails = exceptions_late = 0
    for i in range(len(data)):
        state = data.state[i]
        if state == HANDLED:
            continue
        muni = data.muni[i]
        if state == NEW:
            queued = data.queued[i]
            oldest[muni] = min(oldest.get(muni, queued), queued)
            if NOW_US - queued >= 20 * HOUR:
                findings["emptying " + ("breach" if NOW_US - queued >= 24 * HOUR else "warning")] += 1
                mails += 2
        if data.warn[i] <= NOW_US:
            if data.exception[i]:
                exceptions_late += 1
                continue
            findings["handling " + ("breach" if data.due[i] <= NOW_US else "warning")] += 1
            mails += 1 if muni < 0 else 2
    queues: Counter[str] = Counter()
    for first in oldest.values():
        age = NOW_US - first
        queues["breach" if age >= 24 * HOUR else "warning" if age >= 20 * HOUR else "ok"] += 1
    queues["ok"] += len(data.codes) - len(oldest)
    states = Counter(STATES[s] for s in data.state)
    return Expected(dict(findings), dict(queues), mails, dict(states), exceptions_late)


# --- loading --------------------------------------------------------------------------------------

MESSAGE_COLUMNS = "id, channel, mail_from, rcpt_tos, peer, tls, received_at, size, sha256, message_id, raw"
REFERRAL_COLUMNS = (
    "id, message_id, municipality, state, triage_reason, reasons, explanation, flags, cpr, patient_name, "
    "subject, urgent, unread_reply, outcome, outcome_detail, return_reason, sender_kind, received_at, "
    "queued_at, warn_at, due_at, pulled_at, handled_at, exception, created_at, updated_at"
)


def sqlite_time(us: int) -> str | None:
    """As SQLAlchemy's DateTime stores it on SQLite (UTCDateTime hands it naive UTC)."""
    return None if us < 0 else (NAIVE_EPOCH + dt.timedelta(microseconds=us)).isoformat(" ", "microseconds")


def pg_time(us: int) -> str | None:
    return None if us < 0 else f"{sqlite_time(us)}+00"


def rows(
    data: Data, start: int, stop: int, when: Callable[[int], str | None]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(messages rows, referrals rows) for referrals start..stop-1, times formatted by `when`."""
    messages_rows, referral_rows = [], []
    sender_kinds = ("gp", "hospital_unit", "other")
    for i in range(start, stop):
        rid = i + 1
        received = when(data.received[i])
        state = STATES[data.state[i]]
        muni = data.codes[data.muni[i]] if data.muni[i] >= 0 else None
        triaged = state == "triage" or data.via_triage[i]
        urgent = bool(data.urgent[i])
        updated = max(data.received[i], data.queued[i], data.pulled[i], data.handled[i])
        messages_rows.append(
            (
                rid,
                "smtp",
                "laege@klinik.example",
                '["postkasse@postkasse.example"]',
                "192.0.2.1:25",
                True,
                received,
                len(RAW),
                RAW_SHA256,
                f"<{rid}@klinik.example>",
                RAW,
            )
        )
        referral_rows.append(
            (
                rid,
                rid,
                muni,
                state,
                "ambiguous_postal_code" if triaged else None,
                '["ambiguous_postal_code"]' if state == "triage" else '["decided_by_registry"]',
                '["CPR-registret angiver kommunen."]',
                '["urgent_words"]' if urgent else "[]",
                f"{1 + i % 28:02d}{1 + i % 12:02d}{10 + i % 16:02d}{i % 10000:04d}",
                f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}",
                "Henvisning",
                urgent,
                False,
                "forwarded" if state == "handled" else None,
                "PPR" if state == "handled" else None,
                None,
                sender_kinds[i % 3],
                received,
                when(data.queued[i]),
                when(data.warn[i]),
                when(data.due[i]),
                when(data.pulled[i]),
                when(data.handled[i]),
                EXCEPTIONS[data.exception[i]],
                received,
                when(updated),
            )
        )
    return messages_rows, referral_rows


def load_sqlite(path: Path, data: Data) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA synchronous=OFF")  # the load only; the check runs with the store's FULL
        con.execute("PRAGMA cache_size=-262144")
        marks = ", ".join("?" * (MESSAGE_COLUMNS.count(",") + 1))
        insert_m = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({marks})"
        marks = ", ".join("?" * (REFERRAL_COLUMNS.count(",") + 1))
        insert_r = f"INSERT INTO referrals ({REFERRAL_COLUMNS}) VALUES ({marks})"
        for start in range(0, len(data), BATCH):
            ms, rs = rows(data, start, min(len(data), start + BATCH), sqlite_time)
            con.execute("BEGIN")
            con.executemany(insert_m, [(*m[:5], int(m[5]), *m[6:]) for m in ms])
            con.executemany(insert_r, [(*r[:11], int(r[11]), int(r[12]), *r[13:]) for r in rs])
            con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def copy_text(value: Any) -> str:
    """One field in PostgreSQL's COPY text format (the benchmark's values need no escaping)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\\\x" + value.hex()
    return str(value)


def libpq(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))


def load_postgres(url: str, data: Data) -> None:
    import psycopg

    with psycopg.connect(libpq(url)) as conn:
        with conn.cursor() as cur:
            for table, columns, pick in (
                ("messages", MESSAGE_COLUMNS, 0),
                ("referrals", REFERRAL_COLUMNS, 1),
            ):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for start in range(0, len(data), BATCH):
                        batch = rows(data, start, min(len(data), start + BATCH), pg_time)[pick]
                        copy.write("".join("\t".join(map(copy_text, row)) + "\n" for row in batch))
            for table in ("messages", "referrals"):
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
        conn.commit()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


class BenchStore:
    label = ""
    name = ""

    def create(self) -> str:
        raise NotImplementedError

    def load(self, url: str, data: Data) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def size_mb(self) -> float:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError


class SqliteStore(BenchStore):
    label, name = "sqlite", "SQLite"

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.dir: Path | None = None

    @property
    def path(self) -> Path:
        assert self.dir is not None
        return self.dir / "postkasse.db"

    def create(self) -> str:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-deadlines-"))
        return f"sqlite:///{self.path}"

    def load(self, url: str, data: Data) -> None:
        load_sqlite(self.path, data)

    def describe(self) -> str:
        return (
            f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL, as `Store` opens it), a file in a "
            "temporary directory, no ANALYZE (the daemon runs none)"
        )

    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*")) / 1e6

    def drop(self) -> None:
        if self.dir is not None and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir is not None:
            print(f"kept {self.dir}")
        self.dir = None


class PostgresStore(BenchStore):
    label, name = "postgresql", "PostgreSQL"

    def __init__(self, admin_url: str, keep: bool) -> None:
        import psycopg

        self.psycopg = psycopg
        self.admin_url = admin_url
        self.keep = keep
        self.created = False
        try:
            with psycopg.connect(libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
                found = {}
                for setting in ("server_version", "shared_buffers", "synchronous_commit", "work_mem"):
                    row = conn.execute(f"SHOW {setting}").fetchone()
                    found[setting] = str(row[0]) if row else "?"
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL at {admin_url} cannot be used: {exc}") from exc
        self.settings = found

    def _admin(self, sql: str) -> None:
        with self.psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)

    def create(self) -> str:
        self._admin(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")  # a leftover of our own
        self._admin(f"CREATE DATABASE {PG_DATABASE}")
        self.created = True
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + PG_DATABASE, parts.query, ""))

    def load(self, url: str, data: Data) -> None:
        load_postgres(url, data)

    def describe(self) -> str:
        s = self.settings
        return (
            f"PostgreSQL {s['server_version'].split()[0]} on {urlsplit(self.admin_url).hostname}, "
            f"shared_buffers={s['shared_buffers']}, work_mem={s['work_mem']}, "
            f"synchronous_commit={s['synchronous_commit']}; database `{PG_DATABASE}`, "
            "VACUUM (ANALYZE) and CHECKPOINT after the load"
        )

    def size_mb(self) -> float:
        with self.psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_database_size(%s)", (PG_DATABASE,)).fetchone()
        return int(row[0]) / 1e6 if row else 0.0

    def drop(self) -> None:
        if self.created and self.keep:
            print(f"kept the PostgreSQL database {PG_DATABASE}; drop it when done")
        elif self.created:
            self._admin(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
            self.created = False


def verify_load(url: str, data: Data, seed: int) -> int:
    """Read back a sample through the store's own types; the number of rows compared."""
    rng = random.Random(seed + 1)
    sample = sorted(rng.sample(range(len(data)), min(2000, len(data))))
    store = Store(url)
    rules = Rules()
    try:
        with store.read() as conn:
            total = conn.execute(select(func.count()).select_from(referrals)).scalar_one()
            if total != len(data):
                raise BenchError(f"loaded {len(data):,} referrals but the store holds {total:,}")
            got = {
                r.id: r
                for r in conn.execute(
                    select(referrals).where(referrals.c.id.in_([i + 1 for i in sample]))
                ).all()
            }
    finally:
        store.dispose()
    for i in sample:
        row = got[i + 1]
        want_queued = moment_of(data.queued[i]) if data.queued[i] >= 0 else None
        if (
            row.received_at != moment_of(data.received[i])
            or row.queued_at != want_queued
            or row.state != STATES[data.state[i]]
            or (row.warn_at, row.due_at) != rules.handling(row.received_at)
        ):
            raise BenchError(f"referral {i + 1} reads back differently from what was generated: {row}")
    return len(sample)


# --- the measuring process ------------------------------------------------------------------------


def bench_municipalities() -> Municipalities:
    """The 98 municipalities of config/municipalities.toml, each with a notification address."""
    munis = Municipalities.load(DEFAULT_MUNICIPALITIES)
    items = [
        dataclasses.replace(m, notification_address=f"koordination-{m.code}@kommune.example")
        for m in munis.by_code.values()
    ]
    return Municipalities(items, munis.regions)


@dataclass
class SqlTimer:
    """Counts the statements a block runs and the time spent in the driver's execute."""

    statements: int = 0
    seconds: float = 0.0
    captured: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    capture: bool = False
    _t0: float = 0.0

    def before(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        self._t0 = time.perf_counter()
        if self.capture and statement.lstrip().upper().startswith("SELECT"):
            self.captured.append((statement, parameters))

    def after(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.statements += 1


@contextlib.contextmanager
def sql_timer(store: Store, capture: bool = False) -> Iterator[SqlTimer]:
    timer = SqlTimer(capture=capture)
    event.listen(store.engine, "before_cursor_execute", timer.before)
    event.listen(store.engine, "after_cursor_execute", timer.after)
    try:
        yield timer
    finally:
        event.remove(store.engine, "before_cursor_execute", timer.before)
        event.remove(store.engine, "after_cursor_execute", timer.after)


QUERY_NAMES = ("emptying", "handling", "queues")


def explain(conn: Connection, statements: Sequence[tuple[str, Any]], tag: str) -> dict[str, list[str]]:
    """The plan of each captured `assess` statement, run with its own parameters.

    `tag` goes into a comment: Python's sqlite3 caches prepared statements, and SQLite does not prepare
    a cached EXPLAIN QUERY PLAN again after an index was dropped, so the same text would show the old plan.
    """
    plans = {}
    for name, (statement, parameters) in zip(QUERY_NAMES, statements, strict=True):
        if conn.dialect.name == "sqlite":
            found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN /* {tag} */ " + statement, parameters).all()
            depth: dict[int, int] = {0: -1}
            lines = []
            for node, parent, _, detail in found:
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
        else:
            found = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) " + statement, parameters
            ).all()
            lines = [row[0] for row in found]
        plans[name] = lines
    return plans


def one_line(statement: str) -> str:
    return " ".join(statement.split())


def summary(found: Assessment) -> dict[str, Any]:
    levels = Counter(f"{f.deadline} {f.level}" for f in found.findings)
    queues = Counter(e.level for e in found.municipalities.values())
    return {"findings": dict(levels), "queues": dict(queues), "count": len(found.findings)}


def reset_alerts(store: Store) -> None:
    """Forget every alert, alert mail and outbox row, so the next check is a first check again."""
    with store.write() as conn:
        for table in (outbox, outgoing_mail, deadline_alerts):
            conn.execute(table.delete())
        conn.execute(text("DELETE FROM periodic_runs"))
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("VACUUM (ANALYZE) outbox, outgoing_mail, deadline_alerts, periodic_runs")
            )


def written(store: Store) -> dict[str, int]:
    """Rows in the tables a check and its steps write; outbox rows also by kind and state."""
    with store.read() as conn:
        counts = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (deadline_alerts, outgoing_mail, outbox)
        }
        by_kind = conn.execute(
            select(outbox.c.kind, outbox.c.state, func.count()).group_by(outbox.c.kind, outbox.c.state)
        ).all()
    return counts | {f"outbox {kind} {state}": n for kind, state, n in by_kind}


# Functions whose cumulative time explains a check, and the steps after it, as (path suffix, function name,
# label).
PROFILED_CHECK = (
    ("deadlines/assess.py", "assess", "`assess` (3 queries and the findings)"),
    (
        "deadlines/alerts.py",
        "check",
        "`Alerter.check` (assess, SELECT the active alerts, INSERT the new ones, resolve)",
    ),
    ("deadlines/alerts.py", "_resolve", "`_resolve` (clear what is no longer found)"),
    (
        "postkasse/pipeline.py",
        "add",
        "`Pipeline.add` (`outbox.add_many`, an outbox row per alert: one INSERT on PostgreSQL, one per row "
        "on SQLite)",
    ),
    (
        "sqlalchemy/engine/base.py",
        "_exec_insertmany_context",
        "SQLAlchemy insertmanyvalues (the multi-row INSERTs of alerts and outbox rows)",
    ),
    ("structlog/stdlib.py", "info", "structlog `log.info`"),
    ("sqlalchemy/sql/elements.py", "_compile_w_cache", "SQLAlchemy: compile / cache key of statements"),
    ("sqlalchemy/engine/base.py", "_commit_impl", "COMMIT"),
)
PROFILED_STEPS = (
    ("store/outbox.py", "claim", "`outbox.claim` (the row, in a read and again in the write)"),
    ("deadlines/alerts.py", "mail_raised", "`mail_raised` (SELECT the alert, log, and the mails)"),
    ("receipts/compose.py", "alert", "`compose.alert` (build the EmailMessage)"),
    ("receipts/outgoing.py", "add", "`outgoing.add` (serialise the mail, INSERT outgoing_mail)"),
    ("postkasse/pipeline.py", "add", "`Pipeline.add` (the `send` outbox rows)"),
    ("store/outbox.py", "finish", "`outbox.finish` (UPDATE outbox)"),
    ("structlog/stdlib.py", "info", "structlog `log.info` (a JSON line per alert)"),
    ("store/engine.py", "_on_begin", "BEGIN (IMMEDIATE for the write on SQLite)"),
    ("postgresql/_psycopg_common.py", "do_ping", "pool pre-ping (a round trip per checkout)"),
    ("sqlalchemy/sql/elements.py", "_compile_w_cache", "SQLAlchemy: compile / cache key of statements"),
    ("sqlalchemy/engine/base.py", "_commit_impl", "COMMIT (one per step)"),
)


def profile_check(
    fn: Callable[[], Any], store: Store, profiled: Sequence[tuple[str, str, str]]
) -> dict[str, Any]:
    """Run `fn` once under cProfile and the SQL timer; the shares of the functions in `profiled`."""
    profiler = cProfile.Profile()
    with sql_timer(store) as timer:
        wall0 = time.perf_counter()
        profiler.enable()
        fn()
        profiler.disable()
        wall = time.perf_counter() - wall0
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    parts = []
    for suffix, name, label in profiled:
        cum = sum(v[3] for (path, _, fname), v in raw.items() if fname == name and path.endswith(suffix))
        parts.append((label, cum))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return {
        "wall": wall,
        "statements": timer.statements,
        "sql_seconds": timer.seconds,
        "parts": parts,
        "top": out.getvalue(),
    }


def child(url: str, repeat: int, profile: bool) -> dict[str, Any]:
    """The process doing the checks: load the check as the daemon builds it, measure, report."""
    result: dict[str, Any] = {"rss_start_mb": current_rss_mb()}
    logs.setup("INFO")  # as `serve`; stderr goes to a file (see run_child)
    store = Store(url)
    postgres = store.dialect == "postgresql"
    clock = FixedClock(NOW)
    settings = DeadlineSettings(operations_address=OPERATIONS_ADDRESS)
    rules = rulebook(settings)
    munis = bench_municipalities()
    codes = sorted(munis.by_code)
    alerter = Alerter(rules, munis, FROM_ADDRESS, settings.operations_address)
    # as `flows.build` has them: the check writes the outbox rows, the steps compose the mails later
    pipeline = Pipeline([SendAlert(alerter), SendResolved(alerter)], store, clock, LEASE)
    phases: dict[str, dict[str, Any]] = {}
    hwm_ok = reset_hwm()
    result["rss_ready_mb"] = current_rss_mb()

    def phase(name: str, fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> list[Any]:
        reset_hwm()
        runs, values = [], []
        for _ in range(repeat):
            if before is not None:
                before()
            run, value = timed(fn, postgres)
            runs.append(dataclasses.asdict(run))
            values.append(value)
        phases[name] = {"runs": runs, "peak_rss_mb": peak_hwm_mb()}
        walls = " ".join(f"{r['wall'] * 1000:.0f}" for r in runs)
        others = " ".join(f"{r['other']:.1f}" for r in runs)
        print(f"  {name}: {walls} ms; other CPUs busy {others}", file=sys.stderr)
        return values

    def assess_once() -> Assessment:
        with store.read() as conn:
            return assess(conn, NOW, rules, codes)

    # the first call in the process: statements compiled and cached, connection opened
    run, found = timed(assess_once, postgres)
    result["assess_first_in_process"] = dataclasses.asdict(run)
    result["assessment"] = summary(found)
    found_all = phase("assess", assess_once)
    if len({json.dumps(summary(f), sort_keys=True) for f in found_all}) != 1:
        raise BenchError("assess found different things in its repeats")
    with sql_timer(store, capture=True) as timer, store.read() as conn:
        assess(conn, NOW, rules, codes)
    if len(timer.captured) != 3:
        raise BenchError(f"assess ran {len(timer.captured)} statements, the benchmark expects 3")
    result["statements"] = {
        name: one_line(s) for name, (s, _) in zip(QUERY_NAMES, timer.captured, strict=True)
    }
    with store.read() as conn:
        result["plans"] = explain(conn, timer.captured, "indexed")

    def check() -> list[Next]:
        return run_check(pipeline, alerter)

    firsts = phase("first", check, before=lambda: reset_alerts(store))
    result["first_work"] = [Counter(n.kind for n in work) for work in firsts]
    result["first_written"] = written(store)

    # the alert steps a first check leaves, run one after the other as a worker would take them
    pending: list[Next] = []
    step_seconds: list[list[float]] = []  # per run: each step's wall time

    def first_check() -> None:
        reset_alerts(store)
        pending[:] = check()

    def compose_all() -> int:
        dispatched: list[Next] = []
        step_seconds.append([])
        for work in pending:
            t0 = time.perf_counter()
            pipeline.run(work.outbox_id, dispatched.extend)
            step_seconds[-1].append(time.perf_counter() - t0)
        return len(dispatched)

    result["compose_dispatched"] = phase("compose", compose_all, before=first_check)
    result["compose_steps"] = len(pending)
    steps_all = sorted(t for run_steps in step_seconds for t in run_steps)
    result["compose_step_ms"] = {
        "median": statistics.median(steps_all) * 1000,
        "p99": steps_all[int(len(steps_all) * 0.99)] * 1000,
        "max": steps_all[-1] * 1000,
        "max_first_run": max(step_seconds[0]) * 1000,  # the first in the process: imports, compiling
        "max_later_runs": max((t for r in step_seconds[1:] for t in r), default=0.0) * 1000,
    }
    result["composed_written"] = written(store)
    steady = phase("steady", check)
    if any(steady):
        raise BenchError(f"a check after the first wrote outbox rows again: {[len(w) for w in steady]}")
    if written(store) != result["composed_written"]:
        raise BenchError("a steady check changed the alerts, mails or outbox rows")

    # where the time goes: one steady check, one first check and its steps under cProfile, SQL timed
    result["profile_steady"] = profile_check(check, store, PROFILED_CHECK)
    reset_alerts(store)
    pending[:] = []
    result["profile_first"] = profile_check(lambda: pending.extend(check()), store, PROFILED_CHECK)
    result["profile_compose"] = profile_check(compose_all, store, PROFILED_STEPS)

    # baselines, in a transaction that is rolled back: the two indexes dropped, then no index usable
    baseline: dict[str, Any] = {}
    with store.engine.connect() as conn:
        trans = conn.begin()
        try:
            for index in INDEXES:
                conn.exec_driver_sql(f"DROP INDEX {index}")

            def on_conn() -> Assessment:
                return assess(conn, NOW, rules, codes)

            values = phase("without_indexes", on_conn)
            if summary(values[0]) != result["assessment"]:
                raise BenchError("assess without the indexes found something else")
            with sql_timer(store, capture=True) as timer:
                on_conn()
            baseline["plans_without_indexes"] = explain(conn, timer.captured, "without")
            if postgres:
                for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                    conn.exec_driver_sql(f"SET LOCAL {setting} = off")
                baseline["full_scan_how"] = (
                    "SET LOCAL enable_indexscan, enable_bitmapscan, enable_indexonlyscan = off"
                )
            else:
                others = [
                    name
                    for (name,) in conn.exec_driver_sql(
                        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'referrals' "
                        "AND sql IS NOT NULL"
                    )
                ]
                for index in others:
                    conn.exec_driver_sql(f"DROP INDEX {index}")
                baseline["full_scan_how"] = "also dropped " + ", ".join(others)
            values = phase("full_scan", on_conn)
            if summary(values[0]) != result["assessment"]:
                raise BenchError("assess by full scan found something else")
            with sql_timer(store, capture=True) as timer:
                on_conn()
            baseline["plans_full_scan"] = explain(conn, timer.captured, "full")
        finally:
            trans.rollback()

    def count_all() -> int:
        with store.read() as conn:
            counted: int = conn.execute(text("SELECT count(*) FROM referrals")).scalar_one()
            return counted

    phase("count", count_all)

    def round_trips() -> None:
        with store.read() as conn:
            for _ in range(ROUND_TRIPS):
                conn.exec_driver_sql("SELECT 1").scalar_one()

    phase("round_trips", round_trips)
    with store.read() as conn:
        prefix = "EXPLAIN QUERY PLAN " if not postgres else "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
        found_plan = conn.exec_driver_sql(prefix + "SELECT count(*) FROM referrals").all()
        baseline["count_plan"] = [str(row[-1] if not postgres else row[0]) for row in found_plan]
    result["baseline"] = baseline
    with store.read() as conn:
        result["server_version"] = (
            conn.exec_driver_sql("SHOW server_version").scalar_one()
            if postgres
            else conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()
        )
    store.dispose()
    result |= {"phases": phases, "hwm_per_phase": hwm_ok, "peak_rss_mb": peak_hwm_mb()}
    if profile:
        for name in ("profile_steady", "profile_first", "profile_compose"):
            print(f"\n--- cProfile, {name} ---\n{result[name]['top']}", file=sys.stderr)
    return result


def run_child(url: str, label: str, repeat: int, profile: bool, log_dir: Path) -> dict[str, Any]:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--url", url, "--repeat", str(repeat)]
    args += ["--profile"] if profile else []
    log_path = log_dir / f"check-{label}.log"
    with log_path.open("w") as log:
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    progress = [line for line in log_path.read_text().splitlines() if not line.startswith("{")]
    print("\n".join(progress), flush=True)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise BenchError(f"the {label} measuring process failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["log_lines"] = sum(1 for line in log_path.read_text().splitlines() if line.startswith("{"))
    return result


# --- the benchmark --------------------------------------------------------------------------------


@dataclass
class StoreResult:
    store: BenchStore
    describe: str
    load_s: float
    size_mb: float
    verified: int
    measured: dict[str, Any]


@dataclass
class Results:
    args: argparse.Namespace
    machine: dict[str, str]
    code: str
    data: Data
    expected: Expected
    stores: list[StoreResult]


def bench(args: argparse.Namespace) -> Results:
    codes = sorted(Municipalities.load(DEFAULT_MUNICIPALITIES).by_code)
    if len(codes) != 98:
        raise BenchError(f"{DEFAULT_MUNICIPALITIES} lists {len(codes)} municipalities, not 98")
    print(f"generating {args.referrals:,} referrals", flush=True)
    data = generate(args.referrals, codes, args.seed)
    want = expected(data)
    print(
        f"  {data.seconds:.1f} s; states {want.states}; expected findings {want.findings}, "
        f"queues {want.queues}, mails {want.mails:,}",
        flush=True,
    )
    stores: list[BenchStore] = []
    if args.store in ("sqlite", "both"):
        stores.append(SqliteStore(args.keep))
    if args.store in ("postgresql", "both"):
        stores.append(PostgresStore(args.pg_admin_url, args.keep))
    code = code_version()
    out: list[StoreResult] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-deadlines-logs-"))
    try:
        for store in stores:
            try:
                url = store.create()
                print(f"{store.name}: migrating and loading", flush=True)
                t0 = time.perf_counter()
                upgrade(Store(url))
                store.load(url, data)
                load_s = time.perf_counter() - t0
                verified = verify_load(url, data, args.seed)
                size = store.size_mb()
                print(f"  loaded in {load_s:.0f} s, {size:,.0f} MB; measuring in a fresh process", flush=True)
                measured = run_child(url, store.label, args.repeat, args.profile, log_dir)
                check_findings(measured, want, store.name)
                out.append(StoreResult(store, store.describe(), load_s, size, verified, measured))
            finally:
                store.drop()
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    after = code_version()
    return Results(args, machine(), code if after == code else f"{code}, then {after}", data, want, out)


def check_findings(measured: dict[str, Any], want: Expected, name: str) -> None:
    got = measured["assessment"]
    if got["findings"] != want.findings or got["queues"] != want.queues:
        raise BenchError(
            f"{name}: assess found {got['findings']} / queues {got['queues']}, "
            f"the data says {want.findings} / {want.queues}"
        )
    if any(work != {"alert": want.total} for work in measured["first_work"]):
        raise BenchError(
            f"{name}: the first checks returned {measured['first_work']}, expected {want.total} `alert` rows"
        )
    w = measured["first_written"]
    if w != {
        "deadline_alerts": want.total,
        "outgoing_mail": 0,
        "outbox": want.total,
        "outbox alert pending": want.total,
    }:
        raise BenchError(f"{name}: after a first check the store holds {w}")
    if measured["compose_steps"] != want.total or set(measured["compose_dispatched"]) != {want.mails}:
        raise BenchError(
            f"{name}: {measured['compose_steps']} alert steps sent {measured['compose_dispatched']} mails "
            f"on, expected {want.total} steps and {want.mails} mails"
        )
    w = measured["composed_written"]
    if w != {
        "deadline_alerts": want.total,
        "outgoing_mail": want.mails,
        "outbox": want.total + want.mails,
        "outbox alert done": want.total,
        "outbox send pending": want.mails,
    }:
        raise BenchError(f"{name}: after the alert steps the store holds {w}")


# --- reporting ------------------------------------------------------------------------------------

PHASES = (
    ("assess", "`assess` alone (read transaction)"),
    ("steady", "**check, steady state** (`run_check`, nothing new)"),
    ("first", "**first check** (raises every alert: alert and outbox rows, no mails)"),
    ("compose", "the `alert` steps after a first check (`Pipeline.run` each; the mails)"),
    ("without_indexes", "baseline: `assess` without the two indexes"),
    ("full_scan", "baseline: `assess` by full scan (no index usable)"),
    ("count", "baseline: `SELECT count(*) FROM referrals`"),
    ("round_trips", "baseline: 800 × `SELECT 1` (`exec_driver_sql`), one read transaction"),
)


def weighted(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Other processes' load and steal over a measurement's runs, weighted by their wall time."""
    wall = sum(r["wall"] for r in runs)
    return {k: sum(r[k] * r["wall"] for r in runs) / wall for k in ("other", "steal")}


def stat_ms(runs: Sequence[dict[str, float]], key: str) -> tuple[float, float, float]:
    values = [r[key] * 1000 for r in runs]
    return min(values), statistics.median(values), max(values)


def table(res: Results) -> list[str]:
    lines = [
        "| store | measurement | min ms | median ms | max ms | CPU ms (median) | PostgreSQL CPU ms (mean) "
        "| other CPUs busy | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in res.stores:
        for key, label in PHASES:
            p = s.measured["phases"][key]
            lo, med, hi = stat_ms(p["runs"], "wall")
            cpu = stat_ms(p["runs"], "cpu")[1]
            mean_pg = statistics.mean(r["pg_cpu"] for r in p["runs"]) * 1000
            pg = f"{mean_pg:,.0f}" if s.store.label == "postgresql" else "-"
            bold = "**" if key in ("steady", "first") else ""
            others = [r["other"] for r in p["runs"]]
            busy = f"{min(others):.1f}–{max(others):.1f}" if lo >= 100 else "-"
            lines.append(
                f"| {s.store.name} | {label} | {lo:,.0f} | {bold}{med:,.0f}{bold} | {hi:,.0f} | {cpu:,.0f} | "
                f"{pg} | {busy} | {p['peak_rss_mb']:.0f} MB |"
            )
    return lines


def plan_lines(res: Results) -> list[str]:
    out = []
    for s in res.stores:
        m = s.measured
        b = m["baseline"]
        out.append(f"{s.store.name}, with the indexes (as shipped):")
        out.append("")
        out.append("```")
        for name in QUERY_NAMES:
            out.append(f"-- {name}: {m['statements'][name]}")
            out.extend(m["plans"][name])
        out.append("```")
        out.append("")
        out.append(f"{s.store.name}, without {' and '.join(INDEXES)}:")
        out.append("")
        out.append("```")
        for name in QUERY_NAMES:
            out.append(f"-- {name}")
            out.extend(b["plans_without_indexes"][name])
        out.append("```")
        out.append("")
        out.append(f"{s.store.name}, full scan ({b['full_scan_how']}); and `SELECT count(*) FROM referrals`:")
        out.append("")
        out.append("```")
        for name in QUERY_NAMES:
            out.append(f"-- {name}")
            out.extend(b["plans_full_scan"][name])
        out.append("-- count(*)")
        out.extend(b["count_plan"])
        out.append("```")
        out.append("")
    return out


def where_time_goes(res: Results) -> list[str]:
    out = []
    for s in res.stores:
        for key, label in (
            ("profile_steady", "steady check"),
            ("profile_first", "first check"),
            ("profile_compose", "the alert steps after it"),
        ):
            p = s.measured[key]
            parts = "; ".join(f"{name} {sec * 1000:,.0f} ms" for name, sec in p["parts"] if sec > 0.0005)
            out.append(
                f"- {s.store.name}, {label} under cProfile: {p['wall'] * 1000:,.0f} ms wall (profiled), "
                f"{p['statements']:,} SQL statements taking {p['sql_seconds'] * 1000:,.0f} ms in the driver "
                f"({p['sql_seconds'] / p['wall']:.0%}); cumulative: {parts}"
            )
    return out


def comparable_with_old(res: Results) -> bool:
    """The recorded numbers of the old design came from this data set."""
    a, e, old = res.args, res.expected, OLD_DESIGN
    return (a.referrals, a.seed, e.total, e.mails) == (old.referrals, old.seed, old.alerts, old.mails)


def verdicts(res: Results) -> list[str]:
    out = []
    target = TARGET_S * 1000
    e = res.expected
    for s in res.stores:
        phases = s.measured["phases"]
        assessed = stat_ms(phases["assess"]["runs"], "wall")
        steady = stat_ms(phases["steady"]["runs"], "wall")
        first = stat_ms(phases["first"]["runs"], "wall")
        compose = stat_ms(phases["compose"]["runs"], "wall")
        step = s.measured["compose_step_ms"]

        def met(ms: tuple[float, float, float]) -> str:
            ok = ms[2] < target
            return f"**{'met' if ok else 'NOT MET'}**" + (
                "" if ok else f" ({ms[1] / target:.1f}× the target)"
            )

        out.append(
            f"- {s.store.name}: one steady check {steady[1]:,.0f} ms median (max {steady[2]:,.0f} ms): "
            f"target < {target:.0f} ms {met(steady)}. The first check, raising {e.total:,} alerts (the "
            f"alert rows and {e.total:,} outbox rows, no mails), {first[1]:,.0f} ms median "
            f"(max {first[2]:,.0f} ms): {met(first)}. The alert steps after it write the {e.mails:,} mails "
            f"in {compose[1]:,.0f} ms in all (median of the runs; {compose[1] / e.total:.2f} ms per alert, "
            f"{compose[1] / e.mails:.2f} ms per mail), each step in its own short transactions: a step took "
            f"{step['median']:.2f} ms median, {step['p99']:.1f} ms at the 99th percentile, "
            f"{step['max']:.1f} ms at the most ({step['max_first_run']:.1f} ms in the first run in the "
            f"process, {step['max_later_runs']:.1f} ms in the later ones). Beyond `assess` "
            f"({assessed[1]:,.0f} ms), a steady check "
            f"spends {max(0.0, steady[1] - assessed[1]):,.0f} ms: its write transaction (and the advisory "
            f"lock on PostgreSQL), one SELECT of the {e.total:,} active alerts compared with the findings "
            "in Python, and the run recorded."
        )
    if comparable_with_old(res):
        old = OLD_DESIGN
        for s in res.stores:
            phases = s.measured["phases"]
            now_steady, now_first, now_compose = (
                stat_ms(phases[key]["runs"], "wall")[1] for key in ("steady", "first", "compose")
            )
            first_before = dict(old.first_ms)[s.store.label]
            out.append(
                f"- Before/after, {s.store.name} (medians; before: the old design, measured at commit "
                f"{old.commit} and recorded here {old.recorded}, same data set): steady check "
                f"{dict(old.steady_ms)[s.store.label]:,} → {now_steady:,.0f} ms; first check "
                f"{first_before:,} → {now_first:,.0f} ms. Before, that first check also "
                f"composed and stored the {old.mails:,} mails inside its write transaction; now the alert "
                f"steps do it afterwards in {now_compose:,.0f} ms, one step (a read and a short write "
                f"transaction) per alert: {now_first + now_compose:,.0f} ms of work in all, "
                f"{(now_first + now_compose) / first_before:.1f}× the old first check, but no write "
                "transaction longer than one step."
            )
    return out


def report_lines(res: Results) -> list[str]:
    m, e, d = res.machine, res.expected, res.data
    a = res.args
    noise = [
        weighted(s.measured["phases"][k]["runs"])
        for s in res.stores
        for k, _ in PHASES
        if sum(r["wall"] for r in s.measured["phases"][k]["runs"]) >= 0.5
    ] or [{"other": 0.0, "steal": 0.0}]
    lines = [
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}, "
        f"SQLite {m['sqlite']}; {m['date']}",
        f"- Code: {res.code}",
        *(f"- Store: {s.describe}" for s in res.stores),
        f"- Data (seed {a.seed}): {len(d):,} referrals over {YEARS} years up to {NOW:%Y-%m-%d %H:%M} UTC "
        f"(`now` of every check), each with its `messages` row ({len(RAW)} bytes of raw mail), over the "
        f"{len(d.codes)} municipalities with population-like weights; "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(e.states.items()))
        + ". Open ones near `now`: `new` mostly queued within 20 h (7% 20-24 h, 5% older, those 90–97% in "
        f"six slow municipalities: {', '.join(d.slow)}); `pulled` 97% received within 6 days; 3% of all "
        "went through triage first. warn_at/due_at from `Rules().handling(received_at)`.",
        f"- Generated in {d.seconds:.0f} s; "
        + "; ".join(
            f"{s.store.name} migrated and loaded in {s.load_s:.0f} s ({s.size_mb:,.0f} MB; "
            f"{s.verified:,} rows read back and compared)"
            for s in res.stores
        ),
        f"- Found at `now`, as the data says ({e.total:,} findings, checked against `assess` on both "
        "stores): "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(e.findings.items()))
        + f"; queues ok/warning/breach {e.queues.get('ok', 0)}/{e.queues.get('warning', 0)}/"
        f"{e.queues.get('breach', 0)}; {e.exceptions_late} late referrals have a committee exception "
        f"(not found). A first check writes {e.total:,} alert rows and as many `alert` outbox rows, and no "
        f"mail; the `alert` steps then write the {e.mails:,} mails and as many `send` outbox rows, and mark "
        "the `alert` rows done (all checked, after every run).",
        "- The check as the daemon builds it: `Alerter(rulebook(DeadlineSettings(...)), municipalities, "
        "...)`, "
        "each municipality with a notification address and an operations address set (2 mails per alert, "
        "1 in triage), a `Pipeline([SendAlert(alerter), SendResolved(alerter)], ...)` as `flows.build` has "
        "them, on a `FixedClock(now)`, `logs.setup('INFO')` into a file; `run_check(pipeline, alerter)`, "
        "and for the mails `pipeline.run(outbox_id, dispatch)` for each `Next` it returned, one after the "
        "other in one thread (the `send` rows they dispatch are counted and left pending: no relay).",
        f"- Each measurement runs {a.repeat} times in one fresh process per store, after one unrecorded "
        "`assess` (the first in the process: "
        + ", ".join(
            f"{s.store.name} {s.measured['assess_first_in_process']['wall'] * 1000:,.0f} ms"
            for s in res.stores
        )
        + "). First checks: the alerts, mails and outbox rows of the previous run deleted (not timed) "
        "before each. Alert steps: before each run the same reset and a first check (not timed); the "
        f"step times are over all {a.repeat} runs. The steady checks run after the alert steps, with "
        "every alert raised and mailed. Baselines: in one transaction, rolled back afterwards. CPU: this "
        "process's CPU time; "
        "PostgreSQL CPU: the backends serving the benchmark's database (from /proc; parallel workers, "
        "which the full scans use, are not counted). Peak RSS: the "
        "measuring process's VmHWM, reset before each measurement "
        + "("
        + "; ".join(
            f"{s.store.name}: {s.measured['rss_ready_mb']:.0f} MB with the check built, "
            f"{s.measured['peak_rss_mb']:.0f} MB at the end"
            for s in res.stores
        )
        + ").",
        "",
        *table(res),
        "",
        *verdicts(res),
        "- Other load: the column gives the CPUs other processes kept busy during each run (from /proc/stat, "
        "shown where a run took 100 ms or more: it is counted in 10 ms ticks, like the PostgreSQL CPU "
        f"column); CPU steal was {min(r['steal'] for r in noise):.0%}–{max(r['steal'] for r in noise):.0%}.",
        "",
        "Where the time goes (one steady check, one first check and the alert steps after it under "
        "cProfile, SQL timed in the driver; "
        "cProfile slows Python code, so the parts are shares, not timings):",
        "",
        *where_time_goes(res),
        "",
        "Query plans of the three statements `assess` runs (captured from the run, executed with its "
        "parameters):",
        "",
        *plan_lines(res),
    ]
    return lines


def record(res: Results, argv: Sequence[str]) -> None:
    """Replace this script's section of bench/RESULTS.md (or append it), keeping all other text."""
    heading = f"## Deadline check over {len(res.data):,} referrals (bench/deadlines.py)"
    record_section(SECTION_BEGIN, SECTION_END, heading, [command("deadlines.py", argv), *report_lines(res)])


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--referrals", type=int, default=1_000_000, help="referrals in the store")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each measurement")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help=f"where to create {PG_DATABASE}")
    parser.add_argument("--profile", action="store_true", help="print the cProfile tops (stderr)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the SQLite file and the PostgreSQL database"
    )
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.referrals < 10_000:
        parser.error("--referrals must be at least 10000")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        try:
            print(json.dumps(child(args.url, args.repeat, args.profile)))
        except BenchError as exc:
            print(f"deadline benchmark failed: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        res = bench(args)
    except BenchError as exc:
        print(f"deadline benchmark failed: {exc}", file=sys.stderr)
        return 1
    print()
    print("\n".join(report_lines(res)))
    if args.record:
        record(res, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
