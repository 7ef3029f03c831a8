"""The embedded default's pipeline process: `serve` hands its work to a child process over a pipe.

With no broker configured, the pipeline (parse, route, receipt, send, the periodic jobs) still runs in a
process of its own, so its CPU never stands between an SMTP client and its 250: the acceptor only commits and
writes one short line per outbox row into the child's stdin. The child (`postkasse worker --embedded`) runs
the workers on an in-process broker at a lower priority, redrives the outbox at its start and whenever a
lease runs out, and stops when its stdin closes. The outbox is the truth, so a line that cannot be written
(the child is restarting, or far behind) is only a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import IO

from postkasse import logs, metrics, workers
from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.pipeline import Next
from postkasse.store import Store
from postkasse.tasks import Actors

log = logs.get(__name__)

NICENESS = 10  # the pipeline yields the CPU to the acceptor and the web inbox when both want it
PIPE_BYTES = 1024 * 1024  # about 50,000 lines of work in flight before a write would wait
LINE_LIMIT = 4096  # PIPE_BUF: a write of at most this many bytes is never interleaved with another's
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_GRACE_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


def encode(work: Sequence[Next]) -> list[bytes]:
    """Lines `kind id`, packed into writes of at most LINE_LIMIT bytes."""
    chunks: list[bytes] = []
    current = bytearray()
    for item in work:
        line = f"{item.kind} {item.outbox_id}\n".encode("ascii")
        if len(current) + len(line) > LINE_LIMIT:
            chunks.append(bytes(current))
            current.clear()
        current += line
    if current:
        chunks.append(bytes(current))
    return chunks


def decode(line: bytes) -> Next | None:
    kind, _, number = line.strip().decode("ascii", "replace").partition(" ")
    return Next(int(number), kind) if kind and number.isdigit() else None


class PipelineProcess:
    """The parent's side: starts the child, restarts it if it dies, and writes work into its stdin."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._spawn()
        self.task = asyncio.get_running_loop().create_task(self._supervise(), name="pipeline-process")

    def _spawn(self) -> None:
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, env=self.env)
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(proc.stdin.fileno(), False)
        with self.lock:
            self.proc = proc
        log.info("pipeline process started", pid=proc.pid)

    async def _supervise(self) -> None:
        failures = 0
        while True:
            proc = self.proc
            assert proc is not None
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            if self.stopping:
                return
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.error("pipeline process exited; starting it again", exit_code=code, after_seconds=delay)
            metrics.PIPELINE_PROCESS_RESTARTS.inc()
            failures += 1
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self._spawn()

    def dispatch(self, work: Sequence[Next], why: str = "new") -> None:
        """Hand committed outbox rows to the child; never waits. What is not written the outbox resends."""
        with self.lock:
            stdin = self.proc.stdin if self.proc is not None else None
            written = 0
            if stdin is not None:
                for chunk in encode(work):
                    try:
                        os.write(stdin.fileno(), chunk)
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EPIPE, errno.EBADF):
                            raise
                        break
                    written += chunk.count(b"\n")
        for item in work[:written]:
            metrics.OUTBOX_DISPATCHED.labels(item.kind, why).inc()
        if written < len(work):
            log.warning(
                "the pipeline process is not taking work; the outbox will resend it",
                count=len(work) - written,
            )

    async def stop(self) -> None:
        """Close the child's stdin so it finishes its work and exits; kill it after the grace time."""
        self.stopping = True
        with self.lock:
            proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, proc.wait), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.error("pipeline process did not stop in time; killing it", pid=proc.pid)
            proc.kill()
            await loop.run_in_executor(None, proc.wait)
        if self.task is not None:
            await self.task


def child_command(config_path: str | None) -> list[str]:
    config = ["--config", config_path] if config_path else []
    return [sys.executable, "-m", "postkasse", *config, "worker", "--embedded", str(os.getpid())]


def become_child(parent_pid: int) -> None:
    """Run below the acceptor's priority, and die with the parent as the in-process workers did."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def read_work(
    stream: IO[bytes], dispatch: Callable[[Sequence[Next]], None], on_end: Callable[[], None]
) -> None:
    """The child's side: dispatch every line read from `stream`; when the parent closes it, `on_end`."""
    fd = stream.fileno()
    rest = b""
    while True:
        data = os.read(fd, PIPE_BYTES)
        if not data:
            on_end()
            return
        *lines, rest = (rest + data).split(b"\n")
        work = [item for item in map(decode, lines) if item is not None]
        if work:
            dispatch(work)


def duties(
    settings: Settings, store: Store, clock: Clock, actors: Actors, on_end: Callable[[], None]
) -> list[workers.Periodic]:
    """What `serve` does beside the acceptor when it has a broker, done here instead: read the work `serve`
    hands over (calling `on_end` when it closes the pipe), redrive the outbox, ask for the periodic jobs."""
    reader = threading.Thread(
        target=read_work, args=(sys.stdin.buffer, actors.dispatch, on_end), name="handoff", daemon=True
    )
    reader.start()
    lease = timedelta(seconds=settings.outbox.lease_seconds)
    started = [
        workers.redriver(store, clock, lease, actors, settings.outbox.redrive_interval_seconds),
        *workers.tickers(settings, actors),
    ]
    for duty in started:
        duty.start()
    return started
