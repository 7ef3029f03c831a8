"""What the benchmarks share: the machine, this process's memory, the CPU other processes used,
the code under test, a free port, throwaway PostgreSQL databases, and their section of bench/RESULTS.md."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import os
import platform
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from results_file import replace_section  # bench/ is the script's folder, first on sys.path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.append(str(PROJECT))  # the project, for the helpers the tests and benchmarks share
from tests.servers import free_port as free_port  # noqa: E402  (re-exported for the scripts)


class BenchError(Exception):
    """The benchmark could not produce a valid number; the message says why."""


# --- the machine and the code -------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": f"Linux {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(sqlite: bool = True) -> str:
    """`2 CPUs (model), Linux 6.1, Python 3.11.7[, SQLite 3.40.1]`."""
    m = machine()
    line = f"{m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}"
    return line + (f", SQLite {m['sqlite']}" if sqlite else "")


def code_version() -> str:
    """The commit of the code under test, and whether postkasse/ differs from it (read-only git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "postkasse"], cwd=PROJECT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {commit}" + (" with uncommitted changes under postkasse/" if changed else "")


# --- memory --------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def current_rss_mb() -> float:
    """Resident set size now (VmRSS)."""
    return _status_mb("VmRSS")


def peak_hwm_mb() -> float:
    """Peak RSS of this process image since it started or since `reset_hwm` (VmHWM).

    Used in the measuring child processes instead of ru_maxrss: Linux carries the ru_maxrss of the
    forked parent over the exec, so a child started from the big benchmark process would report its peak.
    """
    return _status_mb("VmHWM")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+: write 5 to clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- the CPU others used -------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all CPUs together, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return user + nice + system + irq + softirq, steal, sum(fields)


def noise(
    start: tuple[int, int, int], end: tuple[int, int, int], wall: float, own_cpu: float
) -> tuple[float, float]:
    """(steal share, CPUs kept busy by other processes) between two `cpu_ticks()`.

    Steal is CPU time the hypervisor gave to other guests; the other processes' load is the machine's
    busy time minus `own_cpu` (the CPU seconds of the run's own processes) over `wall` seconds, in CPUs
    (2.0 would be both cores of a two-CPU machine).
    """
    (busy0, steal0, total0), (busy1, steal1, total1) = start, end
    other = max(0.0, ((busy1 - busy0) / CLK_TCK - own_cpu) / max(wall, 1e-9))
    return (steal1 - steal0) / max(1, total1 - total0), other


# --- servers and stores --------------------------------------------------------------------------


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a child that still runs, and SIGKILL it if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def process(command: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with its output in `log`, configured by its files alone (no POSTKASSE_* from the
    caller's environment), stopped with SIGTERM (then SIGKILL) on leaving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKASSE_")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT)
        try:
            yield proc
        finally:
            terminate(proc, timeout=60)


def wait_ready(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 60.0
) -> None:
    """Poll `ready()` until it is true; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before it was ready; see {log}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if ready():
                return
        time.sleep(0.1)
    raise BenchError(f"{what} was not ready within {timeout:.0f} s; see {log}")


def smtp_greets(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=2) as sock:
        ok = sock.recv(512).startswith(b"220")
        sock.sendall(b"QUIT\r\n")
        return ok


def http_ok(host: str, port: int, path: str = "/readyz") -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def forget_redis_namespace(redis_url: str, namespace: str) -> None:
    """Delete a run's dramatiq keys from the shared Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def postgres_settings(libpq_admin_url: str, names: Sequence[str], shown_url: str = "") -> dict[str, str]:
    """`SHOW` each of `names` on the server; BenchError (naming `shown_url`) where it cannot be used."""
    import psycopg

    try:
        with psycopg.connect(libpq_admin_url, autocommit=True, connect_timeout=5) as conn:
            found = {}
            for name in names:
                row = conn.execute(f"SHOW {name}").fetchone()
                found[name] = str(row[0]) if row else "?"
    except psycopg.Error as exc:
        raise BenchError(f"PostgreSQL at {shown_url or libpq_admin_url} cannot be used: {exc}") from exc
    return found


def create_database(libpq_admin_url: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def drop_database(libpq_admin_url: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


# --- bench/RESULTS.md ----------------------------------------------------------------------------


def command(script: str, argv: Sequence[str]) -> str:
    """The Markdown line that says how the benchmark `script` (e.g. `route.py`) was run."""
    return f"- Command: `{shlex.join(['.venv/bin/python', f'bench/{script}', *argv])}`"


def record_section(begin: str, end: str, heading: str, lines: Sequence[str]) -> None:
    """Replace the script's section of bench/RESULTS.md (or append it), keeping all other text."""
    replace_section("\n".join([begin, heading, "", *lines, end, ""]), begin, end)
