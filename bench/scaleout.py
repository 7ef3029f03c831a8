"""Scale-out benchmark: one and two `serve` with two `worker` processes on one PostgreSQL and one Redis.

Issue 18, target 4. Every phase gets a fresh PostgreSQL database, a Redis namespace of its own and a relay
sink (aiosmtpd on loopback, tests/sink.py) that the daemons' outbound relay points at. Each `serve` listens on
ports of its own; the load client (tests/burst.py: SMTP sessions in threads, one Message-ID and one envelope
sender per message) spreads its sessions over them, as a load balancer in front would, and sends a message
again on the next `serve` when its session breaks before the 250, as a sending MTA would.

Phases, each over the same number of messages:

* `1 serve`: one `serve` and two `worker` processes; the baseline of the run.
* `2 serve`: two `serve` and two `worker` processes.
* `2 serve, kills`: as `2 serve`, and when a share of the burst has had its 250, one `serve` and one `worker`
  are SIGKILLed and started again. Afterwards every acknowledged message must be stored once in `messages`,
  have one referral and one receipt at the sink (tests/burst.py's audit); the pipeline is given a deadline to
  drain (a killed worker's claimed sends are taken up when their claim runs out).

Rates: messages per second from the first connect to the last 250 (ingest) and to the last receipt at the sink
(end to end). Rounds of the first two phases alternate; medians are reported.

    .venv/bin/python bench/scaleout.py                    # 1,000 messages, 2 rounds, print
    .venv/bin/python bench/scaleout.py --record           # and write bench/RESULTS.md
    .venv/bin/python bench/scaleout.py --messages 300 --rounds 1   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common import (  # bench/ is the script's folder, first on sys.path
    BenchError,
    code_version,
    command,
    cpu_ticks,
    create_database,
    drop_database,
    forget_redis_namespace,
    machine_line,
    noise,
    postgres_settings,
    record_section,
)

from postkasse.store import Store
from tests.burst import Audit, Burst, TimedSink, audit, drained, run_in_thread
from tests.servers import Daemon, Process, Worker, wait_until

SECTION_BEGIN = "<!-- bench/scaleout.py: begin (replaced by --record) -->"
SECTION_END = "<!-- bench/scaleout.py: end -->"

ONE, TWO, KILLS = "1 serve", "2 serve", "2 serve, kills"
WORKERS = 2
RELAY_TIMEOUT = 2.0
CLAIM_LEASE = 30.0  # the least the settings allow for a 2 s relay timeout: a killed send is taken up soon


# --- CPU -----------------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process; 0 once it is gone."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def named_cpu(names: Sequence[str]) -> float:
    """CPU seconds of every process whose command is one of `names` (PostgreSQL's backends, redis-server)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    total += process_cpu(int(entry.name))
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU of the phase's own processes (serve, worker, PostgreSQL, Redis, the load client and the sink)
    and of everything else, from the start of the burst to the pipeline's drain."""

    def __init__(self) -> None:
        self.serve_cpu = 0.0
        self.worker_cpu = 0.0
        self.ticks = cpu_ticks()
        self.started = time.monotonic()
        self.services = named_cpu(("postgres", "redis-server"))
        self.client = own_cpu()
        self.base: dict[int, float] = {}

    def track(self, proc: Process) -> None:
        assert proc.proc is not None
        self.base[proc.proc.pid] = process_cpu(proc.proc.pid)

    def settle(self, proc: Process) -> None:
        """Count a process's CPU before it is killed or stopped."""
        assert proc.proc is not None
        used = process_cpu(proc.proc.pid) - self.base.pop(proc.proc.pid, 0.0)
        if isinstance(proc, Worker):
            self.worker_cpu += used
        else:
            self.serve_cpu += used

    def stop(self) -> tuple[float, float]:
        """(steal share, CPUs kept busy by other processes)."""
        wall = time.monotonic() - self.started
        services = named_cpu(("postgres", "redis-server")) - self.services
        mine = self.serve_cpu + self.worker_cpu + services + own_cpu() - self.client
        return noise(self.ticks, cpu_ticks(), wall, mine)


# --- one phase -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    name: str
    messages: int
    ingest_rate: float  # msg/s, first connect to the last 250
    e2e_rate: float  # msg/s, first connect to the last receipt at the sink
    serve_ms: float  # serve CPU per message
    worker_ms: float  # worker CPU per message
    steal: float
    other: float
    audit: Audit
    acked_at_kill: int = 0


def _url(admin_url: str, scheme: str, database: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((scheme, parts.netloc, "/" + database, parts.query, ""))


@contextlib.contextmanager
def fleet(
    workdir: Path, database_url: str, redis_url: str, namespace: str, relay_port: int, serves: int
) -> Iterator[tuple[list[Daemon], list[Worker]]]:
    """`serves` serve processes (started in turn: the first migrates the new database) and two workers."""
    sections: dict[str, dict[str, Any]] = {
        "broker": {"url": redis_url, "namespace": namespace},
        "outbound": {
            "host": "127.0.0.1",
            "port": relay_port,
            "tls": "none",
            "timeout_seconds": RELAY_TIMEOUT,
            "claim_lease_seconds": CLAIM_LEASE,
        },
    }
    daemons = [Daemon(workdir, database_url, **sections) for _ in range(serves)]
    workers: list[Worker] = []
    try:
        for daemon in daemons:
            daemon.start()
        workers = [Worker(workdir, daemons[0].config) for _ in range(WORKERS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        yield daemons, workers
    finally:
        for proc in [*workers, *daemons]:
            if proc.running:
                try:
                    proc.terminate(timeout=30)
                except Exception:
                    proc.kill()


def run_phase(args: argparse.Namespace, name: str, workdir: Path) -> Phase:
    database = f"bench_{secrets.token_hex(6)}"
    namespace = f"bench-scaleout-{secrets.token_hex(4)}"
    create_database(args.pg_admin_url, database)
    database_url = _url(args.pg_admin_url, "postgresql+psycopg", database)
    sink = TimedSink()
    sink.start()
    store = Store(database_url)
    try:
        serves = 1 if name == ONE else 2
        with fleet(workdir, database_url, args.redis_url, namespace, sink.port, serves) as (daemons, workers):
            return _measure(args, name, daemons, workers, store, sink, workdir)
    finally:
        store.dispose()
        sink.stop()
        drop_database(args.pg_admin_url, database)
        forget_redis_namespace(args.redis_url, namespace)


def _measure(
    args: argparse.Namespace,
    name: str,
    daemons: list[Daemon],
    workers: list[Worker],
    store: Store,
    sink: TimedSink,
    workdir: Path,
) -> Phase:
    burst = Burst(
        lambda: [d.smtp_port for d in daemons], args.sessions, args.messages, deadline_seconds=args.timeout
    )
    meter = Meter()
    for proc in [*daemons, *workers]:
        meter.track(proc)
    sending = run_in_thread(burst)
    acked_at_kill = 0
    if name == KILLS:
        kill_at = int(args.messages * args.kill_at)
        wait_until(lambda: burst.acked_count() >= kill_at, args.timeout, f"{kill_at} acknowledged messages")
        for proc in (daemons[0], workers[0]):
            meter.settle(proc)
            proc.kill()
        acked_at_kill = burst.acked_count()
        if acked_at_kill >= args.messages:
            raise BenchError("the kill came after the last 250: nothing was tested; use a lower --kill-at")
        daemons[0].start()  # the same ports; its redriver sends again all the outbox holds pending
        workers[0] = Worker(workdir, daemons[0].config)
        workers[0].start()
        workers[0].wait_ready()
        meter.track(daemons[0])
        meter.track(workers[0])
    sending.join()
    if len(burst.acked) < args.messages:
        raise BenchError(f"{name}: {len(burst.acked)} of {args.messages} messages got their 250 in time")
    try:
        wait_until(lambda: drained(store, sink), args.drain_timeout, "the pipeline to drain")
    except AssertionError as exc:
        raise BenchError(f"{name}: {exc}") from exc
    for proc in [*daemons, *workers]:
        meter.settle(proc)
    steal, other = meter.stop()
    result = audit(store, burst, sink)
    acked = burst.acked
    last_ack = max(o.acked_at or 0.0 for o in acked)
    with sink.lock:
        last_receipt = max(sink.arrivals)
    return Phase(
        name=name,
        messages=len(acked),
        ingest_rate=len(acked) / (last_ack - burst.started_at),
        e2e_rate=len(acked) / (last_receipt - burst.started_at),
        serve_ms=1000 * meter.serve_cpu / len(acked),
        worker_ms=1000 * meter.worker_cpu / len(acked),
        steal=steal,
        other=other,
        audit=result,
        acked_at_kill=acked_at_kill,
    )


# --- reporting -----------------------------------------------------------------------------------


def describe(phase: Phase) -> str:
    return (
        f"{phase.name:<16} ingest {phase.ingest_rate:6.1f} msg/s, end to end {phase.e2e_rate:6.1f} msg/s; "
        f"CPU ms/msg serve {phase.serve_ms:.1f}, worker {phase.worker_ms:.1f}; "
        f"steal {phase.steal:.0%}, others {phase.other:.2f} CPUs"
    )


def median(phases: Sequence[Phase], name: str, field: str) -> float:
    return float(statistics.median(getattr(p, field) for p in phases if p.name == name))


def table(phases: Sequence[Phase]) -> list[str]:
    names = [n for n in (ONE, TWO, KILLS) if any(p.name == n for p in phases)]
    lines = [
        "| processes | runs | ingest msg/s (each run) | ingest median | of 1 serve | end to end msg/s "
        "(each run) | end to end median | serve CPU ms/msg | worker CPU ms/msg |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for name in names:
        mine = [p for p in phases if p.name == name]
        ingest = median(phases, name, "ingest_rate")
        lines.append(
            f"| {name} + {WORKERS} worker | {len(mine)} | "
            + ", ".join(f"{p.ingest_rate:.0f}" for p in mine)
            + f" | **{ingest:.0f}** | {ingest / median(phases, ONE, 'ingest_rate'):.2f} | "
            + ", ".join(f"{p.e2e_rate:.0f}" for p in mine)
            + f" | **{median(phases, name, 'e2e_rate'):.0f}** | {median(phases, name, 'serve_ms'):.1f} | "
            f"{median(phases, name, 'worker_ms'):.1f} |"
        )
    return lines


def verdict(phases: Sequence[Phase]) -> list[str]:
    ratio = median(phases, TWO, "ingest_rate") / median(phases, ONE, "ingest_rate")
    e2e = median(phases, TWO, "e2e_rate") / median(phases, ONE, "e2e_rate")
    cpus = os.cpu_count() or 1

    def spread(name: str) -> float:
        rates = [p.ingest_rate for p in phases if p.name == name]
        return max(rates) / min(rates)

    lines = [
        f"Two `serve` processes take in {ratio:.2f} times the messages per second of one (the rounds of one "
        f"phase differ by up to {max(spread(ONE), spread(TWO)):.2f} times: read the ratio with that spread), "
        f"and carry {e2e:.2f} times the end-to-end rate. End to end is bounded by the workers "
        f"(about {median(phases, ONE, 'worker_ms'):.0f} ms of worker CPU per message), which a second "
        "`serve` does not change.",
        f"On {cpus} CPUs shared by the load client, the sink, the workers, PostgreSQL and other users, the "
        "figures show that the fleet works and survives kills, not how it would scale on more cores."
        if cpus <= 2
        else f"{cpus} CPUs.",
        "The one duplicate SMTP itself leaves is counted apart: a message the killed `serve` committed but "
        "whose 250 was lost is sent again by the client and kept as a resend (stored twice, one referral, a "
        "second receipt naming the same reference); the audit reports it as not exactly once.",
    ]
    for p in phases:
        if p.name == KILLS:
            once = p.audit.once_but_for_lost_250s
            verdict = (
                "exactly once" if p.audit.exactly_once else ("once, but for lost 250s" if once else "FAILED")
            )
            lines.append(
                f"Kills ({p.acked_at_kill} of {p.messages} acknowledged when one `serve` and one `worker` "
                f"were SIGKILLed and restarted): {verdict}. {p.audit.describe()}."
            )
    return lines


def record(args: argparse.Namespace, argv: Sequence[str], phases: Sequence[Phase], pg: str) -> None:
    steal = [p.steal for p in phases]
    other = [p.other for p in phases]
    record_section(
        SECTION_BEGIN,
        SECTION_END,
        "## Scale-out: one and two `serve`, two `worker`, one PostgreSQL and one Redis (issue 18, target 4)",
        [
            command("scaleout.py", argv),
            f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; code: {code_version()}",
            f"- Machine: {machine_line(sqlite=False)}",
            f"- Store: {pg}; a fresh database and a Redis namespace of its own for every phase",
            f"- Load: {args.sessions} SMTP sessions (smtplib in threads, connections kept) sending "
            f"{args.messages} messages per phase, each with its own Message-ID and envelope sender, spread "
            "over the `serve` processes' ports; a message whose session breaks before its 250 is sent again "
            "on the next `serve`. The relay is an aiosmtpd sink on loopback in the bench process.",
            "- Settings: shipped defaults, but for the relay (`tls = none`, "
            f"`timeout_seconds = {RELAY_TIMEOUT:g}`, `claim_lease_seconds = {CLAIM_LEASE:g}`); {WORKERS} "
            "`worker` processes of 4 threads each.",
            "- Rates: from the first connect to the last 250 (ingest) and to the last receipt at the sink "
            "(end to end). The 1-serve phase is the baseline of the same run; rounds alternate 1 and 2 "
            "serve.",
            "- CPU ms/msg: CPU of the `serve` (or `worker`) processes from the first connect to the drain, "
            "per message.",
            "",
            *table(phases),
            "",
            *(f"- {line}" for line in verdict(phases)),
            f"- Noise over the phases: CPU steal {min(steal):.0%}–{max(steal):.0%}, other processes "
            f"{min(other):.2f}–{max(other):.2f} CPUs busy (anything but the serve and worker processes, "
            "PostgreSQL, Redis and the bench process).",
        ],
    )


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1000, help="messages per phase (default: 1000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (default: 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 1 and 2 serve (default: 2)")
    parser.add_argument(
        "--kill-at", type=float, default=0.4, help="share of the burst acked at the kill (default: 0.4)"
    )
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to create and drop the bench_* databases (default: %(default)s)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a burst may take")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to drain")
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.messages < 10 or args.sessions < 1 or args.rounds < 1 or not 0 < args.kill_at < 1:
        parser.error("--messages at least 10, --sessions and --rounds at least 1, --kill-at between 0 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    phases: list[Phase] = []
    try:
        settings = postgres_settings(args.pg_admin_url, ("server_version", "synchronous_commit", "fsync"))
        pg = (
            f"PostgreSQL {settings['server_version'].split()[0]} on {urlsplit(args.pg_admin_url).hostname}, "
            f"synchronous_commit={settings['synchronous_commit']}, fsync={settings['fsync']}"
        )
        print(f"{machine_line(sqlite=False)}; {pg}", flush=True)
        order = [name for n in range(args.rounds) for name in ((ONE, TWO) if n % 2 == 0 else (TWO, ONE))]
        with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
            for name in [*order, KILLS]:
                phase = run_phase(args, name, Path(tmp))
                phases.append(phase)
                print(describe(phase), flush=True)
                if name == KILLS:
                    print(f"  {phase.audit.describe()}", flush=True)
    except BenchError as exc:
        print(f"bench/scaleout.py: FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    print("\n".join(table(phases)))
    for line in verdict(phases):
        print(line)
    if args.record:
        record(args, argv, phases, pg)
    kills = [p for p in phases if p.name == KILLS]
    return 0 if all(p.audit.once_but_for_lost_250s for p in kills) else 1


if __name__ == "__main__":
    sys.exit(main())
