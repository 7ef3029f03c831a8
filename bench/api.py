"""Committee API and web inbox latency: a queue page and one referral, 100,000 referrals, 20 clients.

For each store (a fresh SQLite file in a temporary directory and/or a fresh PostgreSQL database), the
script

1. runs the migrations and fills the store in bulk (SQLAlchemy Core executemany, in batches) with
   `--referrals` referrals, each with its stored message (a ~1.6 KB multipart mail with a small PDF),
   its parsed headers and its `routed` event: 60% in 0710 (Favrskov; 80% of those `new`, 10% `pulled`,
   10% `handled`), 38% spread over the other municipalities, 2% in triage. No outbox rows are written,
   so the daemon's redriver and workers have nothing to do;
2. creates a committee token for 0710 with `tokens.create`, and a web inbox user of 0710 with a session
   (`users.add` and `sessions.start`, straight in the store: no login form, no argon2 per request);
3. starts `python -m postkasse serve` (a real process, free loopback ports, no broker, log level WARNING)
   and waits for /readyz;
4. measures, with `--clients` threads that each keep one HTTP/1.1 connection open (`http.client`),
   `--requests` requests per client after `--warmup` unrecorded ones, one kind of request at a time:
   * `GET /healthz` - the baseline: no store and no token, the HTTP stack's own latency;
   * `GET /api/v1/municipalities/0710/referrals?state=new&cursor=<random new id>&limit=50`;
   * `GET /api/v1/referrals/<random 0710 id>`;
   * the web inbox's queue page, `GET /indbakke` (the first 50 new referrals), with the session's cookie;
   * the web inbox's referral page, `GET /henvendelser/<random 0710 id>`, with the session's cookie;
   and the same five with one client (`--single` requests), which shows each request's own cost.

Every response must be 200 (every 50th API body is also parsed and checked; every page is checked to be
HTML with the reference in it, so a redirect to /login fails the run); any other answer fails the run. The
load is closed-loop (each client sends its next request when the previous one is answered), and the
clients run on the same CPUs as the server, so at saturation latency is about clients / throughput.

    .venv/bin/python bench/api.py                           # SQLite
    .venv/bin/python bench/api.py --store both --record     # and PostgreSQL; write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import (  # bench/ is the script's folder, first on sys.path
    BenchError,
    code_version,
    command,
    create_database,
    drop_database,
    free_port,
    machine_line,
    postgres_settings,
    record_section,
    terminate,
)
from sqlalchemy import func, insert, select, text

from postkasse.committee import sessions, tokens, users
from postkasse.config import DEFAULT_MUNICIPALITIES, DeadlineSettings
from postkasse.deadlines.alerts import Alerter
from postkasse.deadlines.rules import Rules, rulebook
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from postkasse.store.schema import message_headers, messages, referral_events, referrals
from postkasse.store.schema import users as users_table

RULES = Rules()

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
SECTION_BEGIN = "<!-- bench/api.py: begin (replaced by --record) -->"
SECTION_END = "<!-- bench/api.py: end -->"

HOST = "127.0.0.1"
COMMITTEE = "0710"  # Favrskov: the queue the benchmark's token reads
PAGE = 50
TARGET_P99_MS = 50.0
BATCH = 2000
SEED = 2026
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WEB_USER = "bench-favrskov-web"
SESSION_COOKIE = "pk_session"  # postkasse/inbox/guard.py COOKIE: the session's secret itself


# --- the data ------------------------------------------------------------------------------------

FIRST = [
    "Anna",
    "Emil",
    "Freja",
    "Noah",
    "Ida",
    "William",
    "Clara",
    "Oscar",
    "Alma",
    "Karl",
    "Ella",
    "Malthe",
]
LAST = [
    "Hansen",
    "Jensen",
    "Nielsen",
    "Pedersen",
    "Andersen",
    "Christensen",
    "Larsen",
    "Sørensen",
    "Rasmussen",
]
ROADS = ["Skolevej", "Hovedgaden", "Søndergade", "Kirkevej", "Bakkevej", "Engvej", "Møllevej", "Stationsvej"]
REASONS = [
    "Angst og skolevægring gennem fire måneder; har ikke været i skole siden efterårsferien.",
    "Selvskadende adfærd og nedtrykthed; forældrene ønsker hjælp fra kommunen og psykiatrien.",
    "Spiseforstyrrelse under udredning; vægttab over tre måneder, behov for fælles forløb.",
    "Udadreagerende adfærd i hjem og skole; tidligere udredt for ADHD, ny forværring.",
]


def raw_mail(i: int, rng: random.Random, received: dt.datetime, name: str, cpr: str) -> tuple[bytes, str]:
    """A realistic referral mail of about 1.6 KB (text and a small PDF attachment) and its From header."""
    clinic = rng.randrange(1, 400)
    sender = f"laege{rng.randrange(1, 50)}@klinik{clinic}.example"
    from_header = f"Laegerne i klinik {clinic} <{sender}>"
    boundary = f"=_b{i:08x}{rng.getrandbits(32):08x}"
    pdf = b"%PDF-1.4\n" + rng.randbytes(520) + b"\n%%EOF\n"
    attachment = base64.encodebytes(pdf).decode().replace("\n", "\r\n")
    date = received.strftime("%a, %d %b %Y %H:%M:%S +0000")
    body = (
        f"Return-Path: <{sender}>\r\n"
        f"Received: from mail.klinik{clinic}.example (mail.klinik{clinic}.example "
        f"[192.0.2.{clinic % 250}])\r\n"
        f"\tby postkasse.localhost with ESMTPS; {date}\r\n"
        f"From: {from_header}\r\n"
        "To: postkasse@localhost\r\n"
        f"Subject: Henvisning vedr. {name.split()[0]}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{i}.{rng.getrandbits(48):012x}@klinik{clinic}.example>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Henvisning til kommunens koordinationsudvalg.\r\n"
        "\r\n"
        f"Barnets navn: {name}\r\n"
        f"CPR-nummer: {cpr[:6]}-{cpr[6:]}\r\n"
        f"Adresse: {rng.choice(ROADS)} {rng.randrange(1, 120)}, {rng.randrange(1000, 9990)}\r\n"
        "\r\n"
        f"Årsag: {rng.choice(REASONS)}\r\n"
        "Forældremyndighedsindehaverne er orienteret og har givet samtykke.\r\n"
        "\r\n"
        "Med venlig hilsen\r\n"
        f"Lægerne i klinik {clinic}\r\n"
        f"--{boundary}\r\n"
        'Content-Type: application/pdf; name="henvisning.pdf"\r\n'
        'Content-Disposition: attachment; filename="henvisning.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{attachment}"
        f"--{boundary}--\r\n"
    )
    return body.encode(), from_header


@dataclass
class Filled:
    """What was put in the store: the ids the load draws from, and how long filling took."""

    referrals: int
    committee_ids: list[int]  # every 0710 referral (any state)
    committee_new: list[int]  # 0710 referrals in state new, the queue's cursors
    states: dict[str, int]
    mean_raw: float
    seconds: float
    token: str = ""


def fill(store: Store, count: int, codes: Sequence[str], seed: int) -> Filled:
    """Migrate, then write `count` referrals with their messages in batches of executemany."""
    started = time.perf_counter()
    upgrade(store)
    rng = random.Random(seed)
    others = [c for c in codes if c != COMMITTEE]
    committee_ids: list[int] = []
    committee_new: list[int] = []
    states: dict[str, int] = {}
    raw_bytes = 0
    span = dt.timedelta(days=60).total_seconds()
    for start in range(1, count + 1, BATCH):
        rows_m: list[dict[str, Any]] = []
        rows_h: list[dict[str, Any]] = []
        rows_r: list[dict[str, Any]] = []
        rows_e: list[dict[str, Any]] = []
        for i in range(start, min(count, start + BATCH - 1) + 1):
            received = NOW - dt.timedelta(seconds=span * (1 - i / count))
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
            cpr = f"{rng.randrange(1, 29):02d}{rng.randrange(1, 13):02d}{rng.randrange(8, 26):02d}"
            cpr += f"{rng.randrange(0, 10000):04d}"
            raw, from_header = raw_mail(i, rng, received, name, cpr)
            raw_bytes += len(raw)
            draw = rng.random()
            if draw < 0.60:
                municipality: str | None = COMMITTEE
                state = rng.choices(["new", "pulled", "handled"], [80, 10, 10])[0]
                committee_ids.append(i)
                if state == "new":
                    committee_new.append(i)
            elif draw < 0.98:
                municipality = rng.choice(others)
                state = rng.choices(["new", "pulled", "handled"], [50, 20, 30])[0]
            else:
                municipality, state = None, "triage"
            states[state] = states.get(state, 0) + 1
            subject = f"Henvisning vedr. {name.split()[0]}"
            rows_m.append(
                {
                    "id": i,
                    "channel": "smtp",
                    "mail_from": from_header.rsplit("<", 1)[1].rstrip(">"),
                    "rcpt_tos": ["postkasse@localhost"],
                    "peer": f"192.0.2.{i % 250}:{40000 + i % 20000}",
                    "tls": True,
                    "received_at": received,
                    "size": len(raw),
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "message_id": f"<{i}@bench.example>",
                    "raw": raw,
                }
            )
            rows_h.append(
                {
                    "message_id": i,
                    "from_header": from_header,
                    "subject": subject,
                    "date_header": received.strftime("%a, %d %b %Y %H:%M:%S +0000"),
                    "content_type": "multipart/mixed",
                    "defects": 0,
                    "parsed_at": received,
                }
            )
            urgent = rng.random() < 0.1
            warn_at, due_at = RULES.handling(received)
            rows_r.append(
                {
                    "id": i,
                    "message_id": i,
                    "municipality": municipality,
                    "state": state,
                    "triage_reason": None if municipality else "no_cpr",
                    "reasons": ["decided_by_registry"] if municipality else ["no_cpr"],
                    "explanation": [
                        "CPR-nummeret findes i CPR-registret.",
                        "CPR-registret angiver kommunen.",
                    ],
                    "flags": ["urgent_words"] if urgent else [],
                    "cpr": cpr if municipality else None,
                    "patient_name": name,
                    "subject": subject,
                    "urgent": urgent,
                    "unread_reply": False,
                    "outcome": "forwarded" if state == "handled" else None,
                    "outcome_detail": "PPR" if state == "handled" else None,
                    "received_at": received,
                    "queued_at": received if municipality else None,
                    "warn_at": warn_at,
                    "due_at": due_at,
                    "created_at": received,
                    "updated_at": received,
                }
            )
            rows_e.append(
                {
                    "id": i,
                    "referral_id": i,
                    "at": received,
                    "actor": "system",
                    "action": "routed" if municipality else "triaged",
                    "from_state": None,
                    "to_state": "new" if municipality else "triage",
                    "detail": {"municipality": municipality, "reasons": rows_r[-1]["reasons"], "flags": []},
                }
            )
        with store.write() as conn:
            conn.execute(insert(messages), rows_m)
            conn.execute(insert(message_headers), rows_h)
            conn.execute(insert(referrals), rows_r)
            conn.execute(insert(referral_events), rows_e)
    with store.write() as conn:
        if store.dialect == "postgresql":
            # The ids were given explicitly; move the sequences past them, as ordinary inserts would have.
            for table in ("messages", "referrals", "referral_events"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
        written = conn.execute(select(func.count()).select_from(referrals)).scalar_one()
        token = tokens.create(conn, "bench-favrskov", "committee", COMMITTEE, NOW)
    # Sixty days of referrals are nearly all past their deadlines, and the daemon checks the deadlines at
    # its start. Their alerts are raised here, as a running system raised them long ago (the rows only, no
    # mails), so the check during the measurements is the steady one of bench/deadlines.py (tens of ms a
    # minute), not tens of thousands of alert mails composed while the API is measured.
    deadlines = DeadlineSettings()  # the daemon's, as bench's config leaves [deadlines] out
    alerter = Alerter(rulebook(deadlines), Municipalities([], {}), "bench@x", deadlines.operations_address)
    with store.write() as conn:
        alerter.check(conn, dt.datetime.now(dt.UTC))
    if written != count:
        raise BenchError(f"wrote {count} referrals but the store holds {written}")
    if store.dialect == "postgresql":
        # What autovacuum does soon after a bulk load (statistics for the planner, the visibility map),
        # done now so that it does not run, and take CPU, during the measurements.
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM (ANALYZE)"))
    filled = Filled(
        count, committee_ids, committee_new, states, raw_bytes / count, time.perf_counter() - started
    )
    filled.token = token
    return filled


def web_session(store: Store) -> str:
    """A committee user of 0710 and a live session of theirs, written straight into the store (as the
    login form would, without its argon2 check per login); returns the `pk_session` cookie's value.

    The session starts at the real time, since the daemon checks it against its own clock (30 idle
    minutes, 8 hours in all); the daemon writes its last use at most once a minute, as for any user."""
    now = dt.datetime.now(dt.UTC)
    with store.write() as conn:
        users.add(conn, WEB_USER, "committee", COMMITTEE, now)
        user_id = conn.execute(select(users_table.c.id).where(users_table.c.name == WEB_USER)).scalar_one()
        secret, _ = sessions.start(conn, users.User(user_id, WEB_USER, "committee", COMMITTEE), now)
    return secret


# --- the stores ----------------------------------------------------------------------------------


class BenchStore:
    """A fresh database for one store's run: created, described, and removed afterwards."""

    label = ""
    name = ""

    def create(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def size(self) -> str:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def postgres(self) -> bool:
        return False

    def sessions(self) -> int | None:
        """Connections opened to the database so far, where the store can count them."""
        return None


class SqliteStore(BenchStore):
    label, name = "sqlite", "SQLite"

    def __init__(self) -> None:
        self.dir: tempfile.TemporaryDirectory[str] | None = None
        self.path: Path | None = None

    def create(self) -> str:
        self.dir = tempfile.TemporaryDirectory(prefix="bench-api-")
        self.path = Path(self.dir.name) / "postkasse.db"
        return f"sqlite:///{self.path}"

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), a file in a temporary directory"

    def size(self) -> str:
        assert self.path is not None
        total = sum(
            Path(f"{self.path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{self.path}{s}").exists()
        )
        return f"{total / 1e6:.0f} MB"

    def drop(self) -> None:
        if self.dir is not None:
            self.dir.cleanup()
            self.dir = None


class PostgresStore(BenchStore):
    label, name = "postgresql", "PostgreSQL"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        parts = urlsplit(admin_url)
        self.admin_url = admin_url
        self.libpq_admin = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
        self.database: str | None = None
        self.settings = postgres_settings(
            self.libpq_admin, ("server_version", "synchronous_commit", "shared_buffers"), admin_url
        )

    def create(self) -> str:
        self.database = f"bench_api_{random.SystemRandom().getrandbits(40):010x}"
        create_database(self.libpq_admin, self.database)
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + self.database, parts.query, ""))

    def describe(self) -> str:
        s = self.settings
        return (
            f"PostgreSQL {s['server_version'].split()[0]} on {urlsplit(self.admin_url).hostname}, "
            f"synchronous_commit={s['synchronous_commit']}, shared_buffers={s['shared_buffers']}; "
            "a fresh database, VACUUM (ANALYZE) after the load"
        )

    def size(self) -> str:
        with self.psycopg.connect(self.libpq_admin, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_database_size(%s)", (self.database,)).fetchone()
        return f"{int(row[0]) / 1e6:.0f} MB" if row else "?"

    def drop(self) -> None:
        if self.database is None:
            return
        drop_database(self.libpq_admin, self.database)
        self.database = None

    def postgres(self) -> bool:
        return True

    def sessions(self) -> int | None:
        # pg_stat_database.sessions (PostgreSQL 14+); backends report it within a second or at exit.
        with self.psycopg.connect(self.libpq_admin, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.database,)
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None


# --- the server ----------------------------------------------------------------------------------


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    finally:
        conn.close()


@dataclass(frozen=True)
class Server:
    port: int
    pid: int
    log: Path
    proc: subprocess.Popen[bytes]

    def gone(self) -> str:
        """Empty while the daemon runs; otherwise how it ended and the end of its log."""
        if self.proc.poll() is None:
            return ""
        tail = self.log.read_text(errors="replace")[-3000:]
        return f"postkasse serve exited with {self.proc.returncode}; its log ends:\n{tail}"


@contextlib.contextmanager
def serve(database_url: str, workdir: Path, processes: int = 1) -> Iterator[Server]:
    """`python -m postkasse serve` on `database_url`, once /readyz answers 200; stopped with SIGTERM."""
    smtp_port, http_port = free_port(HOST), free_port(HOST)
    config = workdir / "postkasse.toml"
    config.write_text(
        "# written by bench/api.py\n"
        f"[database]\nurl = {json.dumps(database_url)}\n\n"
        '[broker]\nurl = ""\n\n'
        f'[smtp]\nhost = "{HOST}"\nport = {smtp_port}\n\n'
        f'[http]\nhost = "{HOST}"\nport = {http_port}\n\n'
        f"[serve]\nprocesses = {processes}\n\n"
        '[log]\nlevel = "WARNING"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKASSE_")}
    log = workdir / "serve.log"
    command = [sys.executable, "-m", "postkasse", "--config", str(config), "serve"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise BenchError(f"postkasse serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _ready(http_port):
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"postkasse serve was not ready within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Server(http_port, proc.pid, log, proc)
    finally:
        terminate(proc, timeout=30)
        kept = Path(__file__).resolve().parent / "out"
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, kept / "api-serve.log")  # kept for a look after a failed run


# --- the load ------------------------------------------------------------------------------------


class CpuMeter:
    """CPU over one phase: the server's, PostgreSQL's, this process's (the clients), steal, and the rest."""

    def __init__(self, server_pid: int, postgres: bool) -> None:
        self.server_pid = server_pid
        self.postgres = postgres
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._snapshot()

    @staticmethod
    def _stat(pid: int) -> list[str]:
        with contextlib.suppress(OSError, IndexError):
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return []

    def _jiffies(self, pid: int) -> int:
        fields = self._stat(pid)
        return int(fields[11]) + int(fields[12]) if fields else 0  # utime, stime

    def _postgres(self) -> int:
        """CPU jiffies of all PostgreSQL processes so far: the live ones, and (in the postmaster's
        cutime and cstime) every backend that has exited, so connections opened and closed during
        a phase are counted too."""
        if not self.postgres:
            return 0
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text().strip() == "postgres":
                        fields = self._stat(int(entry.name))
                        if fields:
                            stats[int(entry.name)] = fields
        total = 0
        for fields in stats.values():
            total += int(fields[11]) + int(fields[12])
            if int(fields[1]) not in stats:  # the postmaster: its parent is not a postgres process
                total += int(fields[13]) + int(fields[14])  # cutime, cstime of reaped backends
        return total

    def _snapshot(self) -> tuple[list[int], int, int, float]:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except (OSError, ValueError):
            cpu = [0] * 8
        own = resource.getrusage(resource.RUSAGE_SELF)
        server = self._jiffies(self.server_pid) + sum(map(self._jiffies, self._children(self.server_pid)))
        return cpu, server, self._postgres(), own.ru_utime + own.ru_stime

    @staticmethod
    def _children(pid: int) -> list[int]:
        """The server's own processes: further acceptors (`serve.processes`) and the pipeline process."""
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (OSError, ValueError):
            return []

    def stop(self) -> dict[str, float]:
        """CPU seconds of server, postgres and clients; steal and other processes as shares of all CPU."""
        (cpu0, srv0, pg0, own0), (cpu1, srv1, pg1, own1) = self.start, self._snapshot()
        delta = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        total = max(1, sum(delta))
        server = (srv1 - srv0) / self.tick
        postgres = (pg1 - pg0) / self.tick
        clients = own1 - own0
        busy = (delta[0] + delta[1] + delta[2]) / self.tick
        return {
            "server": server,
            "postgres": postgres,
            "clients": clients,
            "steal": delta[7] / total,
            "other": max(0.0, busy - server - postgres - clients) * self.tick / total,
        }


@dataclass
class Phase:
    """One kind of request at one concurrency: every latency, the wall time and the CPU used."""

    store: str
    kind: str
    clients: int
    latencies: list[float] = field(default_factory=list)  # seconds
    seconds: float = 0.0
    failures: int = 0
    first_failure: str = ""
    cpu: dict[str, float] = field(default_factory=dict)
    sessions: int | None = None  # PostgreSQL connections the daemon opened during the phase
    reconnects: int = 0  # requests sent again after the server closed an idle connection

    def pct(self, p: float) -> float:
        """The p-th percentile in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan  # every request failed: the failures are reported beside it
        return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def cpu_ms(self, who: str) -> float:
        return 1000 * self.cpu.get(who, 0.0) / max(1, len(self.latencies))


# Whether a response body is the one asked for: given the path and the body (JSON parsed, or a page's text).
Check = Callable[[str, Any], bool]


@dataclass(frozen=True)
class Plan:
    """One kind of request: how to make its paths, its headers, and how its bodies are checked."""

    kind: str
    make_path: Callable[[random.Random], str]
    check: Check
    headers: dict[str, str]
    page: bool = False  # HTML: every body checked as text; else JSON, every 50th parsed and checked


def _client(
    port: int,
    headers: dict[str, str],
    warmup: Sequence[str],
    paths: Sequence[str],
    check: Check,
    page: bool,
    barrier: threading.Barrier,
    out: list[float],
    failures: list[str],
    pauses: Sequence[float],
    reconnects: list[str],
) -> None:
    """One client: a kept-alive connection, the warm-up unrecorded, then every path timed, each
    after its pause (think time; none by default). The pause before the first request keeps
    clients with think time from starting all at once."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def one(path: str, n: int, idle: bool = False) -> float:
        nonlocal conn
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
                stale = isinstance(
                    exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                )
                if idle and stale and attempt == 1:
                    # The server closed the connection while this client paused (uvicorn's keep-alive
                    # timeout is 5 s): send again on a new one, as HTTP clients do; the time counts.
                    reconnects.append(path)
                    continue
                failures.append(f"GET {path}: {type(exc).__name__}: {exc}")
                return -1.0
        elapsed = time.perf_counter() - started
        if response.status != 200:
            failures.append(f"GET {path}: {response.status} {body[:200]!r}")
            return -1.0
        if page:
            html = response.getheader("content-type", "").startswith("text/html")
            if not html or not check(path, body.decode("utf-8", "replace")):
                failures.append(f"GET {path}: not the page asked for: {body[:200]!r}")
                return -1.0
        elif n % 50 == 0 and not check(path, json.loads(body)):
            failures.append(f"GET {path}: unexpected body {body[:200]!r}")
            return -1.0
        return elapsed

    try:
        for n, path in enumerate(warmup):
            one(path, n)
        barrier.wait()
        barrier.wait()
        for n, path in enumerate(paths):
            if pauses[n]:
                time.sleep(pauses[n])
            elapsed = one(path, n, idle=pauses[n] > 0)
            if elapsed >= 0:
                out.append(elapsed)
        barrier.wait()
    finally:
        conn.close()


def run_phase(
    server: Server,
    store: BenchStore,
    plan: Plan,
    clients: int,
    requests: int,
    warmup: int,
    seed: int,
    think: float = 0.0,
) -> Phase:
    """`clients` threads, each `warmup` unrecorded then `requests` timed requests, started together;
    with `think` seconds, each client pauses a random time (exponential, that mean) before each request."""
    rng = random.Random(seed)
    kind, make_path = plan.kind, plan.make_path
    plans = [
        ([make_path(rng) for _ in range(warmup)], [make_path(rng) for _ in range(requests)])
        for _ in range(clients)
    ]
    pauses = [[rng.expovariate(1 / think) if think else 0.0 for _ in range(requests)] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    outs: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    reconnects: list[str] = []
    threads = [
        threading.Thread(
            target=_client,
            args=(
                server.port,
                plan.headers,
                w,
                p,
                plan.check,
                plan.page,
                barrier,
                outs[n],
                failures,
                pauses[n],
                reconnects,
            ),
            name=f"client-{n}",
            daemon=True,
        )
        for n, (w, p) in enumerate(plans)
    ]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=600)  # every client has warmed up
    time.sleep(1.1)  # let the warm-up's session counts reach pg_stat_database
    sessions_before = store.sessions()
    barrier.wait(timeout=600)  # the timed requests start
    meter = CpuMeter(server.pid, store.postgres())
    started = time.perf_counter()
    barrier.wait(timeout=600)  # every client is done
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    for thread in threads:
        thread.join()
    time.sleep(1.1)
    sessions_after = store.sessions()
    phase = Phase(store.label, kind, clients, [x for o in outs for x in o], seconds, len(failures))
    phase.first_failure = failures[0] if failures else ""
    phase.reconnects = len(reconnects)
    phase.cpu = cpu
    if sessions_before is not None and sessions_after is not None:
        phase.sessions = sessions_after - sessions_before
    return phase


KINDS = {
    "healthz": "`GET /healthz` (baseline: no store, no token)",
    "list": f"`GET /api/v1/municipalities/{COMMITTEE}/referrals?state=new&cursor=…&limit={PAGE}`",
    "get": "`GET /api/v1/referrals/{id}`",
    "queue page": "`GET /indbakke` (web inbox, session cookie)",
    "referral page": "`GET /henvendelser/{id}` (web inbox, session cookie)",
}


def measure_store(store: BenchStore, args: argparse.Namespace) -> tuple[list[Phase], Filled, str]:
    """Fill a fresh store, start the daemon on it, and run every phase."""
    url = store.create()
    try:
        print(f"{store.name}: filling {args.referrals:,} referrals ...", flush=True)
        bench_store = Store(url)
        try:
            codes = sorted(Municipalities.load(DEFAULT_MUNICIPALITIES).by_code)
            filled = fill(bench_store, args.referrals, codes, SEED)
            cookie = web_session(bench_store)
        finally:
            bench_store.dispose()
        size = store.size()
        print(f"{store.name}: filled in {filled.seconds:.1f} s ({size}); {filled.states}", flush=True)
        if len(filled.committee_new) < 2 * PAGE:
            raise BenchError("too few new referrals in 0710 for paging; use more --referrals")
        cursors, every = filled.committee_new[: -PAGE - 1], filled.committee_ids
        bearer = {"Authorization": f"Bearer {filled.token}"}
        session = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        plans = [
            Plan("healthz", lambda r: "/healthz", lambda p, b: b.get("status") == "ok", {}),
            Plan(
                "list",
                lambda r: (
                    f"/api/v1/municipalities/{COMMITTEE}/referrals?state=new"
                    f"&cursor={r.choice(cursors)}&limit={PAGE}"
                ),
                lambda p, b: len(b["items"]) == PAGE and all(i["state"] == "new" for i in b["items"]),
                bearer,
            ),
            Plan(
                "get",
                lambda r: f"/api/v1/referrals/{r.choice(every)}",
                lambda p, b: b["municipality"] == COMMITTEE and len(b["attachments"]) == 1,
                bearer,
            ),
            Plan(
                "queue page",
                lambda r: "/indbakke",
                lambda p, b: b.count('<a href="/henvendelser/') == PAGE and "Dagens tømning" in b,
                session,
                page=True,
            ),
            Plan(
                "referral page",
                lambda r: f"/henvendelser/{r.choice(every)}",
                lambda p, b: f"Henvendelse PK-{int(p.rsplit('/', 1)[1]):06d}</h1>" in b,
                session,
                page=True,
            ),
        ]
        phases: list[Phase] = []
        with (
            tempfile.TemporaryDirectory(prefix="bench-api-serve-") as workdir,
            serve(url, Path(workdir), args.processes) as srv,
        ):
            for clients, requests, warmup in (
                (1, args.single, 20),
                (args.clients, args.requests, args.warmup),
            ):
                for n, plan in enumerate(plans):
                    think = args.think_ms / 1000 if clients > 1 else 0.0
                    phase = run_phase(srv, store, plan, clients, requests, warmup, SEED + n, think)
                    phases.append(phase)
                    print(line(phase), flush=True)
                    if phase.failures:
                        if srv.gone():
                            raise BenchError(f"{store.name} {plan.kind}: {srv.gone()}")
                        raise BenchError(
                            f"{store.name} {plan.kind}: {phase.failures} failed requests; "
                            f"first: {phase.first_failure}"
                        )
        return phases, filled, size
    finally:
        store.drop()


# --- reporting -----------------------------------------------------------------------------------


def line(p: Phase) -> str:
    return (
        f"  {p.store:<10} {p.kind:<13} {p.clients:>2} clients {len(p.latencies):>6} req  "
        f"p50 {p.pct(50):7.1f}  p90 {p.pct(90):7.1f}  p99 {p.pct(99):7.1f}  max {p.pct(100):7.1f} ms  "
        f"{p.rate:7.1f} req/s  server {p.cpu_ms('server'):5.2f} ms CPU/req  "
        f"(steal {p.cpu['steal']:.0%}, other {p.cpu['other']:.0%})"
        + ("" if p.sessions is None else f"  {p.sessions} PostgreSQL connections opened")
        + (f"  {p.reconnects} resent on a new connection" if p.reconnects else "")
    )


def table(phases: Sequence[Phase]) -> str:
    head = [
        "store",
        "request",
        "clients",
        "requests",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "req/s",
        "server CPU ms/req",
        "PostgreSQL CPU ms/req",
        "client CPU ms/req",
        "PostgreSQL connections opened",
    ]
    rows = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for p in phases:
        bold = p.clients > 1 and p.kind != "healthz"
        p99 = f"**{p.pct(99):.1f}**" if bold else f"{p.pct(99):.1f}"
        rows.append(
            "| "
            + " | ".join(
                [
                    "SQLite" if p.store == "sqlite" else "PostgreSQL",
                    p.kind,
                    str(p.clients),
                    f"{len(p.latencies):,}",
                    f"{p.pct(50):.1f}",
                    f"{p.pct(90):.1f}",
                    p99,
                    f"{p.pct(100):.1f}",
                    f"{p.rate:.0f}",
                    f"{p.cpu_ms('server'):.2f}",
                    f"{p.cpu_ms('postgres'):.2f}" if p.store == "postgresql" else "-",
                    f"{p.cpu_ms('clients'):.2f}",
                    "-" if p.sessions is None else f"{p.sessions:,}",
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def verdicts(phases: Sequence[Phase], clients: int) -> list[str]:
    out = []
    for p in phases:
        if p.clients != clients or p.kind == "healthz":
            continue
        met = p.pct(99) < TARGET_P99_MS
        out.append(
            f"{'SQLite' if p.store == 'sqlite' else 'PostgreSQL'}, {p.kind}: p99 {p.pct(99):.1f} ms "
            f"under {clients} clients: target p99 < {TARGET_P99_MS:.0f} ms **{'met' if met else 'NOT MET'}**"
        )
    return out


def record(
    phases: Sequence[Phase],
    code: str,
    fills: dict[str, tuple[Filled, str]],
    stores: Sequence[BenchStore],
    args: argparse.Namespace,
    argv: Sequence[str],
) -> None:
    """Replace this script's section of bench/RESULTS.md (or append it), keeping all other text."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    steal = [p.cpu["steal"] for p in phases]
    other = [p.cpu["other"] for p in phases]
    data = []
    for store in stores:
        filled, size = fills[store.label]
        states = ", ".join(f"{k} {v:,}" for k, v in sorted(filled.states.items()))
        data.append(
            f"- {store.name}: {filled.referrals:,} referrals written in {filled.seconds:.0f} s, {size} "
            f"({states}); {len(filled.committee_ids):,} in {COMMITTEE}, "
            f"{len(filled.committee_new):,} of them new"
        )
    some = next(iter(fills.values()))[0]
    concurrent = [p for p in phases if p.clients == args.clients]
    healthz = {p.store: p for p in concurrent if p.kind == "healthz"}
    baseline = [
        f"{'SQLite' if s == 'sqlite' else 'PostgreSQL'} daemon: p50 {p.pct(50):.1f} ms, "
        f"p99 {p.pct(99):.1f} ms, {p.rate:.0f} req/s"
        for s, p in healthz.items()
    ]
    loop = (
        "closed loop (each client sends its next request as soon as the last is answered)"
        if not args.think_ms
        else f"each concurrent client pauses before every request (exponential, mean {args.think_ms:.0f} ms)"
    )
    record_section(
        SECTION_BEGIN,
        SECTION_END,
        f"## API and web inbox: committee queue page and one referral, {args.referrals:,} referrals "
        "(bench/api.py)",
        [
            command("api.py", argv),
            f"- Date: {when}",
            f"- Machine: {machine_line()}",
            f"- Code: {code}",
            f"- CPU steal during the phases {min(steal):.0%}–{max(steal):.0%}, other processes "
            f"{min(other):.0%}–{max(other):.0%} of all CPU time (from /proc/stat)",
            *(f"- Store: {s.describe()}" for s in stores),
            f"- Data, written with SQLAlchemy Core executemany in batches of {BATCH:,}: 60% in {COMMITTEE} "
            "(80% new, 10% pulled, 10% handled), 38% in the other municipalities, 2% in triage; each with "
            f"its message (multipart mail with a small PDF, {some.mean_raw:,.0f} bytes on average), parsed "
            "headers and `routed` event; no outbox rows",
            *data,
            "- Server: `python -m postkasse serve` as shipped (uvicorn; the pipeline's process idle, "
            f'`[broker] url = ""`, log level WARNING) with `serve.processes = {args.processes}` '
            f"({'one process takes' if args.processes == 1 else f'{args.processes} processes share'} the "
            "HTTP port), against that store; server CPU is that of all its processes",
            f"- Load: {loop}, {args.clients} client threads in the benchmark process, each with one "
            f"kept-alive `http.client` connection, {args.warmup} unrecorded then {args.requests} timed "
            "requests each; one kind of request at a time; first each with 1 client, "
            f"{args.single} requests. "
            "Latency is from sending the request to reading the whole body. "
            f"The list uses a random cursor among the new {COMMITTEE} referrals (always a full page of "
            f"{PAGE}); the read a random {COMMITTEE} referral. Every response was 200 (checked; every 50th "
            "body parsed and checked).",
            f"- Web inbox pages, in the same run against the same server: `GET /indbakke` (the queue "
            f"page: the first {PAGE} new {COMMITTEE} referrals, rendered with Jinja2) and "
            f"`GET /henvendelser/{{id}}` (the referral page, a random {COMMITTEE} referral), as "
            f"committee user `{WEB_USER}` of {COMMITTEE}. Its user and session were written into the "
            "store before the daemon started (`users.add`, `sessions.start`): no login form, no argon2 "
            f"per request. Each request sends the `{SESSION_COOKIE}` cookie, which the daemon looks up "
            "(writing its last use at most once a minute) as for any user. Every page response was "
            "checked: 200, `text/html`, the reference in it (the queue page: 50 links and today's "
            "emptying status; the referral page: its own `PK-` reference in the heading), so a redirect "
            "to /login would fail the run.",
            f"- **The clients share the server's {os.cpu_count()} CPUs**: their CPU time (client column) is "
            "taken from the server"
            + (
                f", and with {args.clients} clients always waiting, latency is about {args.clients} / "
                "throughput (Little's law)."
                if not args.think_ms
                else "."
            ),
            "- CPU columns: CPU time per request of the daemon, of all `postgres` processes, and of the "
            "client threads, over the phase. PostgreSQL connections opened: new sessions on the "
            "benchmark's database during the phase (`pg_stat_database.sessions`).",
            "",
            table(phases),
            "",
            f"- Baseline `GET /healthz` under {args.clients} clients: " + "; ".join(baseline),
            *(f"- {v}" for v in verdicts(phases, args.clients)),
            *(
                [
                    f"- {sum(p.reconnects for p in phases)} requests were sent again on a new connection "
                    "because the server had closed the idle one (uvicorn's 5 s keep-alive timeout); "
                    "their latency includes the failed attempt."
                ]
                if any(p.reconnects for p in phases)
                else []
            ),
        ],
    )


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--referrals", type=int, default=100_000, help="referrals in the store (%(default)s)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (%(default)s)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per client (%(default)s)")
    parser.add_argument("--warmup", type=int, default=20, help="unrecorded requests per client (%(default)s)")
    parser.add_argument(
        "--single", type=int, default=200, help="timed requests with one client (%(default)s)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean pause of each concurrent client after each request, exponential (default 0: closed loop)",
    )
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="where to create bench_api_* databases")
    parser.add_argument(
        "--processes", type=int, default=1, help="`serve.processes`: processes sharing the HTTP port (1)"
    )
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    args = parser.parse_args(argv)
    for name in ("referrals", "clients", "requests", "single"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first request pays argon2)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    print(f"{machine_line()}", flush=True)
    code = code_version()
    phases: list[Phase] = []
    fills: dict[str, tuple[Filled, str]] = {}
    stores: list[BenchStore] = []
    try:
        if args.store in ("sqlite", "both"):
            stores.append(SqliteStore())
        if args.store in ("postgresql", "both"):
            stores.append(PostgresStore(args.pg_admin_url))
        for store in stores:
            found, filled, size = measure_store(store, args)
            phases.extend(found)
            fills[store.label] = (filled, size)
    except BenchError as exc:
        print(f"bench/api.py: FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    for p in phases:
        print(line(p))
    for v in verdicts(phases, args.clients):
        print(v.replace("**", ""))
    if args.record:
        after = code_version()
        record(
            phases,
            code if after == code else f"{code}, then {after} (changed during the run)",
            fills,
            stores,
            args,
            argv,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
