"""SMTP ingest benchmark: postkasse's durable 250 against a bare aiosmtpd server, on loopback.

Postfix's `smtp-source` is the load client (by default 20 parallel sessions, 2,000 messages of 4 KiB,
one message per connection as smtp-source does unless told `-d`). Each round measures, in turn:

* the baseline: a bare aiosmtpd server in its own process whose handler answers 250 and stores nothing,
  built with the same SMTP options the daemon uses;
* `python -m postkasse serve` on a fresh SQLite file and/or a fresh PostgreSQL database, with the
  in-process workers, as shipped. After each run the `messages` table must hold exactly the number of
  messages sent, so a fast run that lost mail cannot pass.

smtp-source exits non-zero on the first refused or failed command (it reports `fatal: ...`), so a run
in which the server refused anything is reported as a failure, never as a rate. It reads no Postfix
configuration, so it needs no main.cf; it is taken from Debian's `postfix` package with
`apt-get download` and `dpkg-deb -x` into bench/.tools/, so no MTA is installed or started.

    .venv/bin/python bench/ingest.py                      # SQLite, 3 rounds
    .venv/bin/python bench/ingest.py --store both --record  # and PostgreSQL; write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from common import (  # bench/ is the script's folder, first on sys.path
    BenchError,
    command,
    create_database,
    drop_database,
    forget_redis_namespace,
    free_port,
    http_ok,
    machine_line,
    postgres_settings,
    process,
    record_section,
    smtp_greets,
    wait_ready,
)

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the project, for tests.debtools
from tests.debtools import DebianToolError, debian_package

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
TOOLS = BENCH / ".tools"
OUT = BENCH / "out"

HOST = "127.0.0.1"
RECIPIENT = "postkasse@localhost"  # the only mailbox the daemon takes mail for; others get 550
SENDER = "bench@localhost"
TARGET_RATIO = 0.8

# The SMTP options of postkasse's own server (postkasse/mailbox/smtp.py), used by the baseline too,
# and written into the daemon's configuration so both sides run with the same values.
SMTP_HOSTNAME = "postkasse.localhost"
MAX_MESSAGE_BYTES = 25 * 1024 * 1024
IDLE_TIMEOUT_SECONDS = 300.0

WORKER_LAYOUTS = {
    "embedded": "the pipeline's workers in the process `serve` starts for them (the embedded default)",
    "process": "the pipeline's workers in a `postkasse worker` process, over Redis (the production layout)",
    "none": "no workers during the run: the work waits in Redis and the outbox (ingest alone)",
}


def section_markers(workers: str, processes: int = 1) -> tuple[str, str]:
    name = f"--workers {workers}" + (f" --processes {processes}" if processes > 1 else "")
    return (
        f"<!-- bench/ingest.py {name}: begin (replaced by --record) -->",
        f"<!-- bench/ingest.py {name}: end -->",
    )


# --- the load client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSource:
    """The extracted smtp-source binary and what it needs to run."""

    binary: Path
    libdir: Path
    version: str

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.libdir), env.get("LD_LIBRARY_PATH")]))
        return env


def ensure_smtp_source(tools: Path) -> SmtpSource:
    """smtp-source from Debian's postfix package, fetched and unpacked into `tools` when missing."""
    try:
        postfix = debian_package("postfix", tools)
        tool = SmtpSource(postfix.binary("smtp-source"), postfix.root / "usr/lib/postfix", postfix.version)
    except DebianToolError as exc:
        raise BenchError(str(exc)) from exc
    # With no arguments it prints its usage and exits 1; anything else means it cannot start.
    probe = subprocess.run([str(tool.binary)], env=tool.env(), capture_output=True, text=True, check=False)
    if "usage:" not in probe.stderr:
        raise BenchError(
            f"smtp-source does not start: {probe.stderr.strip()}\n"
            f"install the libraries Debian's postfix depends on: dpkg-deb -f {tools}/postfix_*.deb Depends"
        )
    return tool


@dataclass(frozen=True)
class Load:
    """What smtp-source sends."""

    sessions: int
    messages: int
    size: int
    keep_connections: bool

    def args(self, port: int) -> list[str]:
        args = ["-s", str(self.sessions), "-m", str(self.messages), "-l", str(self.size)]
        if self.keep_connections:
            args.append("-d")
        return [*args, "-f", SENDER, "-t", RECIPIENT, f"{HOST}:{port}"]


@dataclass(frozen=True)
class Sample:
    """One smtp-source run: how long it took, and what else the CPUs did meanwhile."""

    seconds: float
    steal: float  # share of all CPU time the hypervisor gave to other guests
    other: float  # share of all CPU time used by processes outside the benchmark
    server_cpu: float  # CPU seconds the server (and PostgreSQL) used during the run


class CpuMeter:
    """Counts, over one run, CPU steal and the CPU time of processes that are not part of the run.

    The run's own processes are the server (`pids`) with its children, PostgreSQL's processes when `postgres`
    is set, and smtp-source (a reaped child, so it is in RUSAGE_CHILDREN); whatever else kept the CPUs busy
    was someone else's work, and makes the rates noisy.
    """

    def __init__(self, pids: Sequence[int], postgres: bool) -> None:
        self.pids = list(pids)
        self.postgres = postgres
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._snapshot()

    def _own(self) -> dict[int, int]:
        pids = list(self.pids)
        for pid in self.pids:  # the server's own children: the embedded pipeline process
            with contextlib.suppress(OSError, ValueError):
                pids.extend(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        if self.postgres:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        if (entry / "comm").read_text().strip() == "postgres":
                            pids.append(int(entry.name))
        jiffies = {}
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                jiffies[pid] = int(fields[11]) + int(fields[12])  # utime, stime
        return jiffies

    def _snapshot(self) -> tuple[list[int], dict[int, int], float]:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except (OSError, ValueError):
            cpu = [0] * 8
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cpu, self._own(), children.ru_utime + children.ru_stime

    def stop(self) -> tuple[float, float, float]:
        """(steal, other) as shares of all CPU time since the meter was made, and the server's CPU seconds."""
        (cpu0, own0, child0), (cpu1, own1, child1) = self.start, self._snapshot()
        delta = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        total = max(1, sum(delta))
        busy = delta[0] + delta[1] + delta[2]  # user, nice, system
        server = sum(own1[pid] - own0[pid] for pid in own1.keys() & own0.keys())
        own = server + round((child1 - child0) * self.tick)
        return delta[7] / total, max(0, busy - own) / total, server / self.tick


def send(tool: SmtpSource, load: Load, server: Server, timeout: float, postgres: bool = False) -> Sample:
    """Run smtp-source once against `server`. Raises on any refusal, failure or timeout."""
    command = [str(tool.binary), *load.args(server.port)]
    meter = CpuMeter([server.pid], postgres)
    started = time.perf_counter()
    try:
        result = subprocess.run(
            command, env=tool.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"smtp-source did not finish within {timeout:.0f} s") from exc
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"smtp-source failed ({result.returncode}): {result.stderr.strip()}")
    return Sample(elapsed, *meter.stop())


# --- the servers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A running server under test."""

    port: int
    pid: int


@contextlib.contextmanager
def bare_server(log: Path) -> Iterator[Server]:
    """The baseline in its own process (this file with --bare-server), once it answers 220."""
    port = free_port(HOST)
    with process([sys.executable, str(Path(__file__).resolve()), "--bare-server", str(port)], log) as proc:
        wait_ready(lambda: smtp_greets(HOST, port), proc, "the bare aiosmtpd server", log)
        yield Server(port, proc.pid)


REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def postkasse(
    database_url: str, log_level: str, name: str, workers: str = "embedded", processes: int = 1
) -> Iterator[Server]:
    """`python -m postkasse serve` on `database_url`, once /readyz answers 200.

    workers: `embedded` runs the pipeline inside serve (the default set-up); `process` hands it over Redis
    to a `postkasse worker` process, as in production; `none` leaves it queued in Redis and the outbox,
    which measures ingest alone."""
    smtp_port, http_port = free_port(HOST), free_port(HOST)
    config = OUT / f"{name}.toml"
    namespace = f"bench-{secrets.token_hex(4)}"
    broker_url = "" if workers == "embedded" else REDIS_URL
    config.write_text(
        f"""# written by bench/ingest.py
[database]
url = "{database_url}"

[broker]
url = "{broker_url}"
namespace = "{namespace}"

[smtp]
host = "{HOST}"
port = {smtp_port}
hostname = "{SMTP_HOSTNAME}"
accept_addresses = ["{RECIPIENT}"]
max_message_bytes = {MAX_MESSAGE_BYTES}
idle_timeout_seconds = {IDLE_TIMEOUT_SECONDS}

[http]
host = "{HOST}"
port = {http_port}

[serve]
processes = {processes}

[log]
level = "{log_level}"
"""
    )
    log = OUT / f"{name}.log"
    command = [sys.executable, "-m", "postkasse", "--config", str(config), "serve"]
    worker = [sys.executable, "-m", "postkasse", "--config", str(config), "worker"]
    try:
        with process(command, log) as proc:
            wait_ready(lambda: http_ok(HOST, http_port), proc, "postkasse serve", log)
            if workers == "process":
                with process(worker, OUT / f"{name}-worker.log"):
                    yield Server(smtp_port, proc.pid)
            else:
                yield Server(smtp_port, proc.pid)
    finally:
        if broker_url:
            forget_redis_namespace(REDIS_URL, namespace)


def serve_bare(port: int) -> None:
    """The baseline server: aiosmtpd with postkasse's options, a handler that stores nothing."""
    from aiosmtpd.smtp import SMTP

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    handler = Discard()

    def protocol() -> Any:
        return SMTP(
            handler,
            data_size_limit=MAX_MESSAGE_BYTES,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=SMTP_HOSTNAME,
            ident="postkasse",
            timeout=IDLE_TIMEOUT_SECONDS,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
        )

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(protocol, HOST, port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- the stores ----------------------------------------------------------------------------------


class Store(Protocol):
    """A fresh database for one durable run."""

    label: str

    def describe(self) -> str: ...

    def create(self, name: str) -> str:
        """Make an empty database; return its SQLAlchemy URL for the daemon."""
        ...

    def count(self) -> int:
        """Rows in `messages`."""
        ...

    def drop(self) -> None: ...


class SqliteStore:
    label = "sqlite"

    def __init__(self) -> None:
        self.path: Path | None = None

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), file under bench/out/"

    def create(self, name: str) -> str:
        self.path = OUT / f"{name}.db"
        self.drop()
        return f"sqlite:///{self.path}"

    def count(self) -> int:
        assert self.path is not None
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as conn:
            count: int = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            return count

    def drop(self) -> None:
        if self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class PostgresStore:
    label = "postgresql"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.admin_url = admin_url
        self.database: str | None = None
        self.settings = postgres_settings(admin_url, ("server_version", "synchronous_commit", "fsync"))

    def describe(self) -> str:
        s = self.settings
        return (
            f"PostgreSQL {s['server_version'].split()[0]} on {urlsplit(self.admin_url).hostname}, "
            f"synchronous_commit={s['synchronous_commit']}, fsync={s['fsync']}"
        )

    def _url(self, scheme: str) -> str:
        assert self.database is not None
        parts = urlsplit(self.admin_url)
        return urlunsplit((scheme, parts.netloc, "/" + self.database, parts.query, ""))

    def create(self, name: str) -> str:
        self.database = f"bench_{secrets.token_hex(6)}"
        create_database(self.admin_url, self.database)
        return self._url("postgresql+psycopg")

    def count(self) -> int:
        with self.psycopg.connect(self._url("postgresql"), connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM messages").fetchone()
            return int(row[0]) if row else 0

    def drop(self) -> None:
        if self.database is None:
            return
        drop_database(self.admin_url, self.database)
        self.database = None


# --- measuring -----------------------------------------------------------------------------------

BARE = "bare"


@dataclass
class Results:
    load: Load
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)  # server CPU per message
    samples: list[Sample] = field(default_factory=list)

    def add(self, kind: str, sample: Sample) -> float:
        rate = self.load.messages / sample.seconds
        self.rates.setdefault(kind, []).append(rate)
        self.cpu_ms.setdefault(kind, []).append(1000 * sample.server_cpu / self.load.messages)
        self.samples.append(sample)
        return rate

    def median(self, kind: str) -> float:
        return statistics.median(self.rates[kind])

    def cpu_per_message(self, kind: str) -> float:
        """Median server CPU milliseconds per message: less sensitive to other load than the rate."""
        return statistics.median(self.cpu_ms[kind])

    def ratio(self, kind: str) -> float:
        return self.median(kind) / self.median(BARE)

    def noise(self) -> str:
        """CPU steal and other processes' CPU over the runs; high or uneven figures mean noisy rates."""
        steal = [s.steal for s in self.samples]
        other = [s.other for s in self.samples]
        return (
            f"CPU steal {min(steal):.0%}–{max(steal):.0%}, "
            f"other processes {min(other):.0%}–{max(other):.0%} of all CPU time"
        )


def measure(
    tool: SmtpSource,
    load: Load,
    stores: Sequence[Store],
    runs: int,
    log_level: str,
    timeout: float,
    workers: str = "embedded",
    processes: int = 1,
) -> Results:
    """`runs` rounds; each measures the baseline and every store once, the order rotating by round."""
    results = Results(load)
    kinds: list[Store | None] = [None, *stores]
    for round_no in range(1, runs + 1):
        shift = (round_no - 1) % len(kinds)
        for store in kinds[shift:] + kinds[:shift]:
            if store is None:
                with bare_server(OUT / "bare.log") as server:
                    sample = send(tool, load, server, timeout)
                rate = results.add(BARE, sample)
                print(
                    f"round {round_no}: {'bare aiosmtpd':<22} {rate:8.1f} msg/s  "
                    f"(steal {sample.steal:.0%}, others {sample.other:.0%})",
                    flush=True,
                )
                continue
            name = f"postkasse-{store.label}"
            url = store.create(name)
            try:
                with postkasse(url, log_level, name, workers, processes) as server:
                    sample = send(tool, load, server, timeout, postgres=isinstance(store, PostgresStore))
                    stored = store.count()
            finally:
                store.drop()
            if stored != load.messages:
                raise BenchError(
                    f"{name}: sent {load.messages} messages, all answered 250, "
                    f"but the database holds {stored}"
                )
            rate = results.add(store.label, sample)
            print(
                f"round {round_no}: {name:<22} {rate:8.1f} msg/s  "
                f"(steal {sample.steal:.0%}, others {sample.other:.0%}; {stored} stored)",
                flush=True,
            )
    return results


# --- reporting -----------------------------------------------------------------------------------

NAMES = {
    BARE: "bare aiosmtpd (stores nothing)",
    "sqlite": "postkasse, SQLite",
    "postgresql": "postkasse, PostgreSQL",
}


def table(results: Results, markdown: bool) -> str:
    kinds = list(results.rates)
    runs = max(len(v) for v in results.rates.values())
    if markdown:
        head = ["server", *(f"run {i}" for i in range(1, runs + 1)), "median msg/s", "of bare", "CPU ms/msg"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for kind in kinds:
            cells = [
                NAMES[kind],
                *(f"{r:.0f}" for r in results.rates[kind]),
                f"**{results.median(kind):.0f}**",
                f"{results.ratio(kind):.2f}",
                f"{results.cpu_per_message(kind):.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    width = 8 * runs + 2
    lines = [f"{'server':<32}{'runs (msg/s)':<{width}}{'median':>8}{'of bare':>9}{'CPU ms/msg':>12}"]
    for kind in kinds:
        each = "".join(f"{r:8.1f}" for r in results.rates[kind])
        lines.append(
            f"{NAMES[kind]:<32}{each:<{width}}{results.median(kind):8.1f}{results.ratio(kind):9.2f}"
            f"{results.cpu_per_message(kind):12.1f}"
        )
    return "\n".join(lines)


def verdicts(results: Results) -> list[str]:
    out = []
    for kind in results.rates:
        if kind == BARE:
            continue
        ratio = results.ratio(kind)
        verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
        out.append(f"{NAMES[kind]}: {ratio:.2f} of the bare baseline; {verdict} the target of {TARGET_RATIO}")
    return out


def record(
    results: Results,
    tool: SmtpSource,
    stores: Sequence[Store],
    argv: Sequence[str],
    workers: str,
    processes: int = 1,
) -> None:
    """Replace this script's section for `workers` in bench/RESULTS.md (or append it), keeping all else."""
    SECTION_BEGIN, SECTION_END = section_markers(workers, processes)
    load = results.load
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    per_connection = "kept open (-d)" if load.keep_connections else "one message per connection"
    record_section(
        SECTION_BEGIN,
        SECTION_END,
        f"## SMTP ingest: durable 250 against a bare aiosmtpd server (workers: {workers}"
        + (f", {processes} acceptor processes)" if processes > 1 else ")"),
        [
            f"- Layout: {WORKER_LAYOUTS[workers]}; `serve.processes = {processes}`",
            command("ingest.py", argv),
            f"- Date: {today}",
            f"- Machine: {machine_line(sqlite=False)}",
            f"- Load: Postfix {tool.version} `smtp-source {' '.join(load.args(0)[:-1])} 127.0.0.1:PORT` — "
            f"{load.sessions} sessions, {load.messages} messages of {load.size} bytes of body, "
            f"{per_connection}, loopback",
            *(f"- Store: {s.describe()}; a fresh database for every run" for s in stores),
            "- Each server runs in its own process; a round measures each once, the order rotating by round.",
            "- CPU ms/msg: median CPU time of the server process (for PostgreSQL, plus every `postgres` "
            "process) during a run, per message; it varies less with other load than msg/s does.",
            "",
            table(results, markdown=True),
            "",
            *(f"- {line}" for line in verdicts(results)),
            f"- After every durable run its `messages` table held exactly {load.messages} rows "
            "(checked; any other count fails the benchmark).",
            f"- Noise during the runs: {results.noise()} (steal: time the hypervisor gave to other "
            "guests; other processes: CPU used by anything but the server, smtp-source and PostgreSQL). "
            "Where these are high or uneven the rates vary from run to run.",
        ],
    )


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgresql", "both"],
        default="sqlite",
        help="which durable configuration to measure (default: sqlite)",
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (default: 2000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (default: 20)")
    parser.add_argument("--size", type=int, default=4096, help="message body bytes (default: 4096)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; medians are reported (default: 3)")
    parser.add_argument(
        "--keep-connections",
        action="store_true",
        help="send many messages per connection (smtp-source -d) instead of one each",
    )
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to create and drop the bench_* database (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the daemon's log level (default: INFO, as shipped)",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one smtp-source run may take")
    parser.add_argument(
        "--workers",
        choices=["embedded", "process", "none"],
        default="embedded",
        help="where the pipeline runs: inside serve (default), a `postkasse worker` process over Redis, "
        "or nowhere during the run (ingest alone)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="`serve.processes`: acceptor processes sharing the SMTP port (default: 1, as shipped)",
    )
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("messages", "sessions", "size", "runs", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.bare_server is not None:
        serve_bare(args.bare_server)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    load = Load(args.sessions, args.messages, args.size, args.keep_connections)
    try:
        tool = ensure_smtp_source(TOOLS)
        stores: list[Store] = []
        if args.store in ("sqlite", "both"):
            stores.append(SqliteStore())
        if args.store in ("postgresql", "both"):
            stores.append(PostgresStore(args.pg_admin_url))
        machine = machine_line(sqlite=False)
        print(f"smtp-source (Postfix {tool.version}) {' '.join(load.args(0)[:-1])}; {machine}", flush=True)
        results = measure(
            tool, load, stores, args.runs, args.log_level, args.timeout, args.workers, args.processes
        )
    except BenchError as exc:
        print(f"bench/ingest.py: FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(results, markdown=False))
    for line in verdicts(results):
        print(line)
    print(f"noise during the runs: {results.noise()}")
    if args.record:
        record(results, tool, stores, argv, args.workers, args.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
