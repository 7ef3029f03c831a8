"""End-to-end latency: from the end of an SMTP DATA to the referral in its queue and the receipt at a relay.

Issue 18, target 3: the p99 under 200 ms at a steady 200 messages per second for 60 s, in the embedded
default and in the production layout, and the highest steady rate that keeps the p99 under 200 ms.

Only the public interface is used, so the script measures whatever the code is:
`python -m postkasse migrate | refdata import | serve | worker`, a configuration file, SMTP in and out,
and plain SQL on the database for the final check.

* Layouts. `embedded`: `serve` as `make run` ships it (SQLite, `[broker] url = ""`). `production`:
  PostgreSQL and Redis, one `serve` and one `worker` process. Every run gets a fresh database, copied from
  a template that was migrated and given the reference data once (PostNord's postal codes and DAWA's road
  samples from ../shared/refdata, the demo registry config/demo-registry.csv) with `postkasse refdata import`.
* The relay: a loopback aiosmtpd sink in its own process (this file with --sink), so the load client's
  CPU does not delay it. It writes the arrival time (time.time(), the clock the client and the daemon use
  too) and the recipient of every mail it takes. Every message has its own envelope sender, and the
  receipt goes to the envelope sender: the recipient says which message a receipt answers.
* The load: an open loop. Message i is due at t0 + i/R; a pool of persistent SMTP connections (an asyncio
  client in this process) takes the due messages in order. Each message is a referral by mail with a CPR
  number from the demo registry and its address, so it is routed to a municipality's queue. The clock
  starts when the client hands over the whole message (the body and the final ".") and stops at the
  receipt's arrival at the sink. A message whose connection was still busy when it fell due starts late;
  that shows as an achieved rate below the offered one, and as client lag.
* Before each measured run, 20 messages at 10 msg/s warm the daemon up (first-use imports, connections);
  their receipts must arrive before the run starts.
* A run that cannot end well is stopped early: when the median latency, counting every message still
  without a receipt by its age so far, exceeds --give-up seconds (default 10), the run ends and says so.
* After the run: up to --drain seconds for the last receipts, then the database must hold, for every
  message sent, a referral in a municipality's queue (state `new`, `queued_at` set) and a sent receipt.
  From the database's timestamps the latency is split into stages (where the time goes).

    .venv/bin/python bench/e2e.py                              # embedded, 200 msg/s for 60 s
    .venv/bin/python bench/e2e.py --layout both --search       # the highest rate, then 60 s at 200 and at it
    .venv/bin/python bench/e2e.py --layout both --search --record
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import email
import math
import os
import random
import resource
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import (  # bench/ is the script's folder, first on sys.path
    BenchError,
    code_version,
    command,
    cpu_ticks,
    forget_redis_namespace,
    free_port,
    http_ok,
    machine_line,
    noise,
    postgres_settings,
    process,
    record_section,
    smtp_greets,
    wait_ready,
)

from tests.refdata_files import POSTNORD, roads_file
from tests.servers import write_config

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
OUT = BENCH / "out" / "e2e"
REGISTRY = PROJECT / "config" / "demo-registry.csv"

HOST = "127.0.0.1"
MAILBOX = "postkasse@localhost"
REDIS_URL = "redis://127.0.0.1:6379/0"
TARGET_RATE = 200.0
TARGET_P99 = 0.200
BASELINE_RATE = 10.0
WARM_UP = 20  # messages at BASELINE_RATE before each run
IDLE_SECONDS = 3.0  # after the warm-up, the processes' CPU with no mail
CONNECTIONS = 40  # below the daemon's max_sessions_per_client (50)
SECTION = ("<!-- bench/e2e.py: begin (replaced by --record) -->", "<!-- bench/e2e.py: end -->")

LAYOUTS = {
    "embedded": '`serve` as `make run` ships it: SQLite, `[broker] url = ""` (the workers are serve\'s)',
    "production": "PostgreSQL and Redis, one `serve` and one `worker` process",
}


# --- the messages --------------------------------------------------------------------------------

TOWNS = {"8382": "Hinnerup", "8000": "Aarhus C", "8450": "Hammel", "1060": "København K", "4100": "Ringsted"}
SENTENCES = (
    "Vi henviser hermed barnet til vurdering hos PPR.",
    "Forældrene er informeret og ønsker henvisningen.",
    "Barnet har gennem længere tid haft svært ved at koncentrere sig i skolen.",
    "Der er talevanskeligheder, og sproget er forsinket i forhold til alderen.",
    "Skolen har beskrevet uro i klassen og konflikter i frikvartererne.",
    "Kontakt gerne undertegnede, hvis der er spørgsmål.",
)


def persons() -> list[tuple[str, str, str, str]]:
    """(cpr, road, house number, postal code) of the demo registry: each routes to a municipality."""
    rows = REGISTRY.read_text(encoding="utf-8").splitlines()[1:]
    return [(cpr, road, number, postal) for cpr, _, road, number, postal in (r.split(";") for r in rows if r)]


def sender_of(run: str, n: int) -> str:
    return f"e2e-{run}-{n}@klinik{n % 400}.example"


def referral_mail(
    rng: random.Random, sender: str, n: int, people: Sequence[tuple[str, str, str, str]]
) -> bytes:
    """A referral a clinic might send, as DATA's payload: CRLF lines, dot-stuffed, ending in the "."."""
    cpr, road, number, postal = rng.choice(people)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Lægehuset {n % 400} <{sender}>"
    msg["To"] = MAILBOX
    msg["Subject"] = "Henvisning til PPR"
    msg["Message-ID"] = f"<{sender.replace('@', '.')}.{n}@bench.example>"
    msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0100"
    letter = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 12)))
    msg.set_content(
        f"CPR: {cpr[:6]}-{cpr[6:]}\nAdresse: {road} {number}, {postal} {TOWNS.get(postal, '')}\n\n"
        f"{letter}\n\nMed venlig hilsen\nLægehuset {n % 400}\n"
    )
    lines = msg.as_bytes().split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


@dataclass(frozen=True)
class Batch:
    """The messages of one run, built before it starts so building them costs the run nothing."""

    run: str
    senders: list[str]
    payloads: list[bytes]

    @classmethod
    def make(cls, run: str, count: int, seed: int) -> Batch:
        rng, people = random.Random(seed), persons()
        senders = [sender_of(run, n) for n in range(count)]
        return cls(run, senders, [referral_mail(rng, s, n, people) for n, s in enumerate(senders)])


def bare_parse_ms(batch: Batch, passes: int = 3) -> float:
    """CPU ms per message of the stdlib's `email.message_from_bytes` and a walk over the parts of the batch,
    the fastest of `passes`: postkasse's code plays no part, so it tells how fast the machine was (the same
    reference as bench/pipeline.py's; a shared machine's contention shows in it)."""
    best = math.inf
    for _ in range(passes):
        c0 = time.process_time()
        for payload in batch.payloads:
            for part in email.message_from_bytes(payload).walk():
                part.get_content_type()
        best = min(best, time.process_time() - c0)
    return 1000 * best / len(batch.payloads)


# --- the relay sink (its own process) ------------------------------------------------------------


def serve_sink(port: int, path: Path) -> None:
    """aiosmtpd on loopback that writes `<time.time()> <recipient>` for every mail it takes."""
    from aiosmtpd.smtp import SMTP as SmtpServer

    out = path.open("a", encoding="utf-8")

    class Arrivals:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            at = time.time()
            out.write("".join(f"{at:.6f} {rcpt}\n" for rcpt in envelope.rcpt_tos))
            out.flush()
            return "250 OK"

    handler = Arrivals()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: SmtpServer(handler, hostname="relay.localhost"), HOST, port
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Arrivals:
    """Reads the sink's file as it grows: recipient -> arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.at: dict[str, float] = {}
        self._offset = 0
        self._rest = b""

    def poll(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = self._rest + f.read()
            self._offset = f.tell()
        *lines, self._rest = data.split(b"\n")
        for line in lines:
            at, rcpt = line.decode().split(" ", 1)
            self.at.setdefault(rcpt, float(at))


# --- the load client -----------------------------------------------------------------------------


class Refused(Exception):
    """The daemon answered a command with something other than what the client waits for."""


class Client:
    """One persistent SMTP connection: EHLO once, then MAIL, RCPT, DATA per message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection(HOST, port)
        client = cls(reader, writer)
        await client.reply(220)
        await client.command(b"EHLO bench.localhost\r\n", 250)
        return client

    async def reply(self, expected: int) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                raise Refused("the connection was closed")
            if line[3:4] != b"-":
                break
        if line[:3] != str(expected).encode():
            raise Refused(line.decode(errors="replace").strip())

    async def command(self, line: bytes, expected: int) -> None:
        self.writer.write(line)
        await self.reply(expected)

    async def send(self, sender: str, payload: bytes) -> tuple[float, float]:
        """(end of DATA, its 250) as time.time()."""
        await self.command(f"MAIL FROM:<{sender}>\r\n".encode(), 250)
        await self.command(f"RCPT TO:<{MAILBOX}>\r\n".encode(), 250)
        await self.command(b"DATA\r\n", 354)
        end = time.time()
        self.writer.write(payload)
        await self.reply(250)
        return end, time.time()

    async def close(self) -> None:
        with contextlib.suppress(OSError, Refused, asyncio.TimeoutError):
            await asyncio.wait_for(self.command(b"QUIT\r\n", 221), 2)
        self.writer.close()


@dataclass
class Sent:
    """What the client saw of one run."""

    due: list[float]
    started: list[float]  # when a connection took the message (its lag is started - due)
    end: list[float]  # end of DATA
    ack: list[float]  # the 250
    t0: float = 0.0
    stopped: str = ""  # why the run was stopped early, if it was
    failures: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(1 for a in self.ack if a > 0)


async def offer(
    port: int, batch: Batch, rate: float, arrivals: Arrivals, give_up: float, connections: int = CONNECTIONS
) -> Sent:
    """Send the batch at `rate` (open loop), watching the receipts; stop early when the run is hopeless."""
    n = len(batch.senders)
    sent = Sent([0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n)
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    clients = await asyncio.gather(*(Client.open(port) for _ in range(min(connections, n))))
    stop = asyncio.Event()

    async def work(client: Client) -> None:
        while (i := await queue.get()) is not None:
            if stop.is_set():
                continue
            sent.started[i] = time.time()
            try:
                sent.end[i], sent.ack[i] = await client.send(batch.senders[i], batch.payloads[i])
            except (Refused, OSError) as exc:
                sent.failures.append(f"message {i}: {exc}")
                stop.set()
                sent.stopped = sent.stopped or f"the daemon refused or failed: {exc}"
                return

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            arrivals.poll()
            now = time.time()
            ages = [
                arrivals.at.get(batch.senders[i], now) - sent.end[i]
                for i in range(n)
                if sent.end[i] > 0 and sent.ack[i] > 0
            ]
            lags = [sent.started[i] - sent.due[i] for i in range(n) if 0 < sent.due[i] <= now]
            waiting = [now - sent.due[i] for i in range(n) if 0 < sent.due[i] <= now and not sent.started[i]]
            late = statistics.median(ages) if ages else 0.0
            behind = statistics.median(lags + waiting) if lags or waiting else 0.0
            if late > give_up or behind > give_up:
                what = "receipt" if late > give_up else "client (the daemon's 250s)"
                sent.stopped = (
                    f"stopped after {now - sent.t0:.0f} s: the {what} latency's median, counting the "
                    f"messages still waiting by their age, passed {give_up:.0f} s"
                )
                stop.set()

    workers = [asyncio.create_task(work(c)) for c in clients]
    watcher = asyncio.create_task(watch())
    sent.t0 = time.time() + 0.05
    for i in range(n):
        sent.due[i] = sent.t0 + i / rate
        delay = sent.due[i] - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if stop.is_set():
            break
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    stop.set()
    await watcher
    await asyncio.gather(*(c.close() for c in clients))
    return sent


def drain(arrivals: Arrivals, senders: Sequence[str], seconds: float) -> None:
    """Wait up to `seconds` for the receipts of `senders`."""
    deadline = time.monotonic() + seconds
    while True:
        arrivals.poll()
        if all(s in arrivals.at for s in senders) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


# --- CPU of the run's processes ------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (command name, parent pid, CPU jiffies of it and its reaped children)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            table[int(entry.name)] = (name, int(fields[1]), sum(int(v) for v in fields[11:15]))
    return table


def _tree(table: dict[int, tuple[str, int, int]], root: int) -> set[int]:
    found, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for pid, (_, ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found & table.keys()


class CpuMeter:
    """CPU seconds of each named process (with its descendants) and of every `postgres` and `redis-server`
    process (shared with anyone else who uses them), plus this process (the load client), over a run."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[dict[str, dict[int, int]], float, tuple[int, int, int], float]:
        table = _proc_table()
        groups: dict[str, dict[int, int]] = {}
        mine = {os.getpid()}
        for name, root in self.roots.items():
            groups[name] = {pid: table[pid][2] for pid in _tree(table, root)}
            mine |= groups[name].keys()
        for comm in ("postgres", "redis-server"):
            groups[comm] = {pid: j for pid, (c, _, j) in table.items() if c == comm and pid not in mine}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return groups, usage.ru_utime + usage.ru_stime, cpu_ticks(), time.monotonic()

    def stop(self) -> tuple[dict[str, float], float, float]:
        """({group: CPU seconds}, steal share, CPUs other processes kept busy)."""
        (g0, self0, ticks0, wall0), (g1, self1, ticks1, wall1) = self.start, self._snapshot()
        # A process that started during the run counts from zero; one that ended is missed (or is in its
        # parent's reaped children's time).
        cpu = {
            name: sum(j - g0.get(name, {}).get(pid, 0) for pid, j in pids.items()) / self.tick
            for name, pids in g1.items()
        }
        cpu["load client"] = self1 - self0
        steal, other = noise(ticks0, ticks1, wall1 - wall0, sum(cpu.values()))
        return cpu, steal, other


# --- the stores and the layouts ------------------------------------------------------------------


def postkasse(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKASSE_")}
    done = subprocess.run(
        [sys.executable, "-m", "postkasse", "--config", str(config), *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"postkasse {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done


class Store:
    """A template database with the schema and the reference data, and a fresh copy of it per run."""

    label = ""

    def template_url(self) -> str:
        raise NotImplementedError

    def copy(self) -> str:
        """A fresh database from the template; its SQLAlchemy URL."""
        raise NotImplementedError

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Plain SQL on the current copy (`?` placeholders)."""
        raise NotImplementedError

    def drop_copy(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def prepare(self, folder: Path) -> None:
        """Migrate the template and import the reference data, through the command line."""
        config = write_config(
            folder / f"template-{self.label}.toml", {"database": {"url": self.template_url()}}
        )
        postkasse(config, "migrate")
        postkasse(config, "refdata", "import", "postnord", str(POSTNORD))
        postkasse(config, "refdata", "import", "roads", str(roads_file(folder)))
        postkasse(config, "refdata", "import", "registry", str(REGISTRY))


class SqliteStore(Store):
    label = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.template = folder / "template.db"
        self.path = folder / "run.db"
        for p in (self.template, self.path):
            _unlink_sqlite(p)

    def template_url(self) -> str:
        return f"sqlite:///{self.template}"

    def copy(self) -> str:
        self.drop_copy()
        for suffix in ("", "-wal"):
            if Path(f"{self.template}{suffix}").exists():
                shutil.copyfile(f"{self.template}{suffix}", f"{self.path}{suffix}")
        return f"sqlite:///{self.path}"

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)) as conn:
            return list(conn.execute(sql, tuple(args)).fetchall())

    def drop_copy(self) -> None:
        _unlink_sqlite(self.path)

    def drop(self) -> None:
        self.drop_copy()
        _unlink_sqlite(self.template)

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}, a file under bench/out/"


def _unlink_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class PostgresStore(Store):
    label = "postgresql"

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.settings = postgres_settings(admin_url, ("server_version", "synchronous_commit", "fsync"))
        token = secrets.token_hex(4)
        self.template = f"bench_e2e_template_{token}"
        self.database = f"bench_e2e_{token}"
        self._admin(f'CREATE DATABASE "{self.template}"')

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.encode())

    def _url(self, scheme: str, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((scheme, parts.netloc, "/" + database, parts.query, ""))

    def template_url(self) -> str:
        return self._url("postgresql+psycopg", self.template)

    def copy(self) -> str:
        self.drop_copy()
        self._admin(f'CREATE DATABASE "{self.database}" TEMPLATE "{self.template}"')
        return self._url("postgresql+psycopg", self.database)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self._url("postgresql", self.database), connect_timeout=5) as conn:
            return [tuple(r) for r in conn.execute(sql.replace("?", "%s").encode(), tuple(args)).fetchall()]

    def drop_copy(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def drop(self) -> None:
        self.drop_copy()
        self._admin(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')

    def describe(self) -> str:
        s = self.settings
        return (
            f"PostgreSQL {s['server_version'].split()[0]} on {urlsplit(self.admin_url).hostname}, "
            f"synchronous_commit={s['synchronous_commit']}, fsync={s['fsync']}"
        )


@dataclass(frozen=True)
class Running:
    """A layout up for one run: its SMTP port, its processes, the sink's arrivals."""

    smtp_port: int
    roots: dict[str, int]
    arrivals: Arrivals


@contextlib.contextmanager
def layout_up(layout: str, database_url: str, name: str) -> Iterator[Running]:
    """The sink, `serve` (and for production a `worker`) on `database_url`, ready for mail."""
    sink_port, smtp_port, http_port = free_port(HOST), free_port(HOST), free_port(HOST)
    arrivals_file = OUT / f"{name}-arrivals.txt"
    arrivals_file.write_text("")
    namespace = f"bench-e2e-{secrets.token_hex(4)}"
    config = write_config(
        OUT / f"{name}.toml",
        {
            "database": {"url": database_url},
            "broker": {"url": REDIS_URL if layout == "production" else "", "namespace": namespace},
            "smtp": {"host": HOST, "port": smtp_port, "accept_addresses": [MAILBOX]},
            "http": {"host": HOST, "port": http_port},
            "outbound": {"host": HOST, "port": sink_port, "tls": "none"},
            "log": {"level": "INFO", "format": "json"},
        },
    )
    pk = [sys.executable, "-m", "postkasse", "--config", str(config)]
    sink_log, serve_log, worker_log = (OUT / f"{name}-{p}.log" for p in ("sink", "serve", "worker"))
    sink_cmd = [sys.executable, str(Path(__file__).resolve()), "--sink", str(sink_port), str(arrivals_file)]
    try:
        with process(sink_cmd, sink_log) as sink:
            wait_ready(lambda: smtp_greets(HOST, sink_port), sink, "the relay sink", sink_log)
            with process([*pk, "serve"], serve_log) as serve:
                wait_ready(lambda: http_ok(HOST, http_port), serve, "postkasse serve", serve_log)
                roots = {"serve": serve.pid, "sink": sink.pid}
                if layout == "production":
                    with process([*pk, "worker"], worker_log) as worker:
                        yield Running(smtp_port, {**roots, "worker": worker.pid}, Arrivals(arrivals_file))
                else:
                    yield Running(smtp_port, roots, Arrivals(arrivals_file))
    finally:
        if layout == "production":
            forget_redis_namespace(REDIS_URL, namespace)


# --- one run -------------------------------------------------------------------------------------


def _epoch(value: Any) -> float:
    """A timestamp from the database (an aware datetime, or SQLite's naive UTC text) as time.time()."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


STAGES = (
    "end of DATA -> 250",
    "250 -> referral queued",
    "queued -> receipt composed",
    "composed -> relay took it",
)


@dataclass
class Result:
    """One measured run."""

    layout: str
    purpose: str
    rate: float
    duration: float
    planned: int
    sent: int = 0
    achieved: float = 0.0
    latency: list[float] = field(default_factory=list)  # per message sent; inf when no receipt came
    lag: list[float] = field(default_factory=list)
    stopped: str = ""
    failures: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)  # share of a CPU each process used with no mail
    steal: float = 0.0
    other: float = 0.0
    queued: int = 0
    receipts_sent: int = 0
    queued_latency: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(1 for v in self.latency if math.isinf(v))

    @property
    def late(self) -> int:
        return sum(1 for v in self.latency if TARGET_P99 <= v < math.inf)

    def q(self, fraction: float, values: Sequence[float] | None = None) -> float:
        """Nearest-rank quantile; a message without a receipt counts as infinitely late."""
        data = sorted(self.latency if values is None else values)
        if not data:
            return math.nan
        return data[max(0, math.ceil(fraction * len(data)) - 1)]

    @property
    def passed(self) -> bool:
        return (
            not self.stopped
            and not self.failures
            and self.sent == self.planned
            and self.lost == 0
            and self.queued == self.sent
            and self.achieved >= 0.95 * self.rate
            and self.q(0.99) < TARGET_P99
        )

    def cpu_ms(self, name: str) -> float:
        return 1000 * self.cpu.get(name, 0.0) / max(1, self.sent)


def check_store(store: Store, run: str, sent: Sent, result: Result) -> None:
    """Every message sent must be a referral in its municipality's queue with its receipt sent; and
    where the time went, from the database's timestamps."""
    rows = store.query(
        "SELECT m.mail_from, r.state, r.municipality, r.queued_at, o.created_at, o.sent_at, o.state"
        " FROM messages m"
        " LEFT JOIN referrals r ON r.message_id = m.id"
        " LEFT JOIN outgoing_mail o ON o.answers_message = m.id AND o.kind = 'receipt'"
        " WHERE m.mail_from LIKE ?",
        (f"e2e-{run}-%",),
    )
    index = {s: i for i, s in enumerate(sender_of(run, n) for n in range(len(sent.ack)))}
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    for mail_from, state, municipality, queued_at, composed, relayed, mail_state in rows:
        i = index.get(mail_from)
        if i is None or not sent.ack[i]:
            continue
        if state == "new" and municipality and queued_at is not None:
            result.queued += 1
            result.queued_latency.append(_epoch(queued_at) - sent.end[i])
        if mail_state == "sent":
            result.receipts_sent += 1
        stages[STAGES[0]].append(sent.ack[i] - sent.end[i])
        if queued_at is not None and composed is not None and relayed is not None:
            stages[STAGES[1]].append(_epoch(queued_at) - sent.ack[i])
            stages[STAGES[2]].append(_epoch(composed) - _epoch(queued_at))
            stages[STAGES[3]].append(_epoch(relayed) - _epoch(composed))
    result.stages = stages


def measure(
    store: Store, layout: str, purpose: str, rate: float, duration: float, give_up: float, drain_s: float
) -> Result:
    """One run on a fresh database and fresh processes: warm-up, the open loop, the drain, the check."""
    run = secrets.token_hex(3)
    planned = max(1, round(rate * duration))
    warm, batch = Batch.make(f"{run}w", WARM_UP, 1), Batch.make(run, planned, 2026)
    result = Result(layout, purpose, rate, duration, planned)
    url = store.copy()
    try:
        with layout_up(layout, url, f"{layout}-{purpose}") as up:
            warmed = asyncio.run(offer(up.smtp_port, warm, BASELINE_RATE, up.arrivals, give_up))
            drain(up.arrivals, warm.senders, 60)
            if warmed.failures or not all(s in up.arrivals.at for s in warm.senders):
                raise BenchError(
                    f"{layout}: the warm-up's receipts did not all arrive ({warmed.failures[:1]})"
                )
            idle = CpuMeter(up.roots)
            time.sleep(IDLE_SECONDS)
            result.idle = {name: cpu / IDLE_SECONDS for name, cpu in idle.stop()[0].items()}
            meter = CpuMeter(up.roots)
            sent = asyncio.run(offer(up.smtp_port, batch, rate, up.arrivals, give_up))
            drain(up.arrivals, batch.senders, 5.0 if sent.stopped else drain_s)
            result.cpu, result.steal, result.other = meter.stop()
            check_store(store, run, sent, result)
    finally:
        store.drop_copy()
    result.stopped, result.failures = sent.stopped, sent.failures
    done = [i for i in range(planned) if sent.ack[i] > 0]
    result.sent = len(done)
    if done:
        last = max(sent.end[i] for i in done)
        result.achieved = len(done) / max(1e-9, last - sent.t0 + 1 / rate)
    result.latency = [up.arrivals.at.get(batch.senders[i], math.inf) - sent.end[i] for i in done]
    result.lag = [sent.started[i] - sent.due[i] for i in done]
    return result


# --- reporting -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "lost"
    if math.isnan(seconds):
        return "–"
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.1f} s"


def verdict(r: Result) -> str:
    if r.passed:
        return "p99 under 200 ms"
    why = []
    if r.stopped:
        why.append("stopped early")
    if r.sent < r.planned and not r.stopped:
        why.append(f"sent {r.sent} of {r.planned}")
    if r.lost:
        why.append(f"{r.lost} receipts missing")
    if r.queued != r.sent:
        why.append(f"{r.queued} of {r.sent} referrals in a queue")
    if r.achieved < 0.95 * r.rate:
        why.append("the client could not keep the rate")
    if r.q(0.99) >= TARGET_P99:
        why.append("p99 over 200 ms")
    return "FAILS: " + ", ".join(why)


def server_cpu(r: Result) -> str:
    """CPU ms per message sent; none for a run stopped early, whose processes were stopped with work left."""
    if r.stopped:
        return "– (stopped early)"
    names = [n for n in ("serve", "worker", "postgres", "redis-server", "sink", "load client") if n in r.cpu]
    return ", ".join(f"{n} {r.cpu_ms(n):.1f}" for n in names)


def idle_cpu(r: Result) -> str:
    return ", ".join(f"{n} {share:.0%}" for n, share in r.idle.items() if n in ("serve", "worker"))


def line(r: Result) -> str:
    return (
        f"{r.layout:<10} {r.purpose:<8} {r.rate:6.0f} msg/s offered, {r.achieved:6.1f} achieved, "
        f"{r.sent}/{r.planned} sent; latency p50 {ms(r.q(0.5))} p90 {ms(r.q(0.9))} p99 {ms(r.q(0.99))} "
        f"max {ms(r.q(1.0))}; {r.late} late, {r.lost} lost; {r.queued} queued; "
        f"CPU ms/msg: {server_cpu(r)}; idle: {idle_cpu(r)}; "
        f"steal {r.steal:.0%}, others {r.other:.1f} CPUs — {verdict(r)}"
        + (f"\n    {r.stopped}" if r.stopped else "")
        + (f"\n    {r.failures[0]}" if r.failures else "")
    )


def table(results: Sequence[Result]) -> list[str]:
    head = (
        "| layout | run | offered msg/s | achieved | sent | p50 | p90 | p99 | max | late (≥200 ms) | lost "
        "| in a queue | CPU ms/msg | idle CPU | steal | others' load | verdict |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r.layout} | {r.purpose}, {r.duration:.0f} s | {r.rate:.0f} | {r.achieved:.1f} "
            f"| {r.sent:,} | {ms(r.q(0.5))} | {ms(r.q(0.9))} | **{ms(r.q(0.99))}** | {ms(r.q(1.0))} "
            f"| {r.late:,} | {r.lost:,} | "
            f"{r.queued:,} | {server_cpu(r)} | {idle_cpu(r)} | {r.steal:.0%} | {r.other:.1f} CPUs "
            f"| {verdict(r)} |"
        )
    return lines


def where_the_time_goes(results: Sequence[Result]) -> list[str]:
    lines = [
        "| layout | run | " + " | ".join(f"{s} p50 / p99" for s in STAGES) + " | referral queued p99 |",
        "|---|---|" + "---:|" * (len(STAGES) + 1),
    ]
    for r in results:
        cells = []
        for s in STAGES:
            v = r.stages.get(s, [])
            cells.append(f"{ms(r.q(0.5, v))} / {ms(r.q(0.99, v))}" if v else "–")
        lines.append(
            f"| {r.layout} | {r.purpose} {r.rate:.0f}/s | "
            + " | ".join(cells)
            + f" | {ms(r.q(0.99, r.queued_latency))} |"
        )
    return lines


# --- the search ----------------------------------------------------------------------------------


def search(
    store: Store,
    layout: str,
    rates: Sequence[float],
    duration: float,
    give_up: float,
    drain_s: float,
    steps: int,
) -> tuple[list[Result], float]:
    """Rates upward until one fails, then `steps` bisections between the last pass and the first failure.
    Returns the runs and the highest rate that passed (0 if none)."""
    runs: list[Result] = []
    best, worst = 0.0, math.inf
    for rate in rates:
        r = measure(store, layout, "search", rate, duration, give_up, drain_s)
        print(line(r), flush=True)
        runs.append(r)
        if not r.passed:
            worst = rate
            break
        best = rate
    for _ in range(steps if math.isfinite(worst) else 0):
        rate = round((best + worst) / 2 / 5) * 5
        if rate <= best or rate >= worst:
            break
        r = measure(store, layout, "search", rate, duration, give_up, drain_s)
        print(line(r), flush=True)
        runs.append(r)
        best, worst = (rate, worst) if r.passed else (best, rate)
    return runs, best


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--layout", choices=["embedded", "production", "both"], default="embedded")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="msg/s of the main run (default 200)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the main runs (default 60)")
    parser.add_argument(
        "--search", action="store_true", help="find the highest rate with the p99 under 200 ms"
    )
    parser.add_argument(
        "--search-rates",
        default="10,25,50,100,150,200,300,400",
        help="rates tried upward until one fails (default %(default)s); then bisection",
    )
    parser.add_argument("--search-duration", type=float, default=20.0, help="seconds of each search run")
    parser.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failure")
    parser.add_argument(
        "--baseline-duration", type=float, default=20.0, help=f"seconds at {BASELINE_RATE:.0f} msg/s"
    )
    parser.add_argument("--give-up", type=float, default=10.0, help="stop a run whose median passes this (s)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the last receipts")
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to create and drop the bench_e2e_* databases (default: %(default)s)",
    )
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    parser.add_argument("--sink", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_layout(layout: str, args: argparse.Namespace) -> tuple[list[Result], float | None, str]:
    store: Store = PostgresStore(args.pg_admin_url) if layout == "production" else SqliteStore(OUT)
    results: list[Result] = []
    best: float | None = None
    try:
        store.prepare(OUT)
        base = measure(
            store, layout, "baseline", BASELINE_RATE, args.baseline_duration, args.give_up, args.drain
        )
        print(line(base), flush=True)
        results.append(base)
        if args.search:
            rates = [float(r) for r in args.search_rates.split(",")]
            found, best = search(
                store, layout, rates, args.search_duration, args.give_up, args.drain, args.bisect
            )
            results += found
        for rate, purpose in ((args.rate, "target"), (best or 0.0, "best")):
            if rate <= 0 or (purpose == "best" and rate == args.rate):
                continue
            r = measure(store, layout, purpose, rate, args.duration, args.give_up, args.drain)
            print(line(r), flush=True)
            results.append(r)
    finally:
        store.drop()
    return results, best, store.describe()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.sink:
        serve_sink(int(args.sink[0]), Path(args.sink[1]))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    layouts = ["embedded", "production"] if args.layout == "both" else [args.layout]
    reference = bare_parse_ms(Batch.make("ref", 2000, 7))
    print(f"{machine_line()}; {code_version()}; bare parse {reference:.2f} ms/msg", flush=True)
    results: list[Result] = []
    bests: dict[str, float | None] = {}
    stores: dict[str, str] = {}
    try:
        for layout in layouts:
            found, bests[layout], stores[layout] = run_layout(layout, args)
            results += found
    except BenchError as exc:
        print(f"bench/e2e.py: FAILED: {exc}", file=sys.stderr)
        return 1
    summary = []
    for layout in layouts:
        target = [r for r in results if r.layout == layout and r.purpose == "target"]
        if target:
            t = target[0]
            met = "MET" if t.passed else "NOT MET"
            outcome = (
                f"the run was {t.stopped}"
                if t.stopped
                else f"the p99 was {ms(t.q(0.99))} ({t.late:,} late, {t.lost:,} lost of {t.sent:,})"
            )
            summary.append(f"{layout}: target {met}: at {t.rate:.0f} msg/s for {t.duration:.0f} s {outcome}")
        if bests.get(layout) is not None:
            summary.append(
                f"{layout}: highest steady rate found with the p99 under 200 ms: {bests[layout]:.0f} msg/s"
            )
    print()
    print("\n".join(summary))
    print("\nwhere the time goes (from the database's timestamps):")
    print("\n".join(where_the_time_goes(results)))
    if args.record:
        record(results, summary, stores, argv, reference)
    return 0


def record(
    results: Sequence[Result],
    summary: Sequence[str],
    stores: dict[str, str],
    argv: Sequence[str],
    reference: float,
) -> None:
    record_section(
        *SECTION,
        "## End to end: end of DATA to the referral in its queue and the receipt at a relay (bench/e2e.py)",
        [
            command("e2e.py", argv),
            f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; code: {code_version()}",
            f"- Machine: {machine_line()}; the stdlib's `email.message_from_bytes` and a walk over "
            f"2,000 of these messages took {reference:.3f} ms each before the runs (fastest of 3 passes; "
            "postkasse plays no part in it: compare it first when comparing runs of this script)",
            *(f"- Layout `{name}`: {LAYOUTS[name]}; store: {desc}" for name, desc in stores.items()),
            f"- Load: open loop (message i due at t0 + i/R) over {CONNECTIONS} persistent SMTP connections "
            "from an asyncio client in the benchmark's process; every message a referral by mail (a CPR of "
            "the demo registry and its address, 0.6–1.4 KB) with its own envelope sender. The clock starts "
            'when the client has handed over the whole message (the final ".") and stops when the receipt '
            "reaches the relay sink, a loopback aiosmtpd in its own process. Every run: a fresh database "
            f"copied from a template (schema and reference data), fresh processes, {WARM_UP} warm-up "
            "messages first.",
            f"- The baseline: {BASELINE_RATE:.0f} msg/s in the same run, so the floor is seen beside the "
            "rest. Late: a receipt 200 ms or more after the end of DATA; lost: none within the drain after "
            "the run. In a queue: referrals found in the database in their municipality's queue (state "
            "`new`, `queued_at` set) for the messages sent, checked after every run.",
            "- CPU ms/msg: CPU time per message sent during the run, of `serve` with its child processes, "
            "the `worker`, every `postgres` and `redis-server` process (shared with anyone else using "
            "them), the sink and the load client. Others' load: CPUs kept busy by processes outside the "
            "run; steal: CPU time the hypervisor gave to other guests.",
            "",
            *table(results),
            "",
            *(f"- **{s}**" for s in summary),
            "",
            "Where the time goes, from the database's timestamps (the daemon's clock, the same system "
            "clock as the client's and the sink's):",
            "",
            *where_the_time_goes(results),
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
