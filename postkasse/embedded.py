"""The processes `serve` starts: the pipeline's own process (with no broker) and further acceptors.

With no broker configured, the pipeline (parse, route, receipt, send, the periodic jobs) still runs in a
process of its own, so its CPU never stands between an SMTP client and its 250. Every acceptor (the `serve`
process and the further ones `[serve] processes` asks for) only commits and sends one datagram per commit,
lines `kind id`, to the pipeline process's socket; it never waits for it. The pipeline process runs the
workers on an in-process broker at a lower priority and redrives the outbox at its start and whenever a lease
runs out. The outbox is the truth, so a datagram that cannot be sent (the process is restarting, or far
behind) is only a delay.

Every child is started again when it dies unasked, and dies with `serve` (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from postkasse import logs, metrics, workers
from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.pipeline import Next
from postkasse.store import Store
from postkasse.tasks import Actors

log = logs.get(__name__)

PIPELINE_NICENESS = 10  # the pipeline yields the CPU to the acceptors and the web inbox when both want it
DATAGRAM_BYTES = 8192
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_GRACE_SECONDS = 30.0
PR_SET_PDEATHSIG = 1


def address(serve_pid: int) -> str:
    """The pipeline process's socket, in Linux's abstract namespace: nothing on disk to clean up or guard."""
    return f"\0postkasse-pipeline-{serve_pid}"


def encode(work: Sequence[Next]) -> list[bytes]:
    """Lines `kind id`, packed into datagrams of at most DATAGRAM_BYTES."""
    chunks: list[bytes] = []
    current = bytearray()
    for item in work:
        line = f"{item.kind} {item.outbox_id}\n".encode("ascii")
        if len(current) + len(line) > DATAGRAM_BYTES:
            chunks.append(bytes(current))
            current.clear()
        current += line
    if current:
        chunks.append(bytes(current))
    return chunks


def decode(datagram: bytes) -> list[Next]:
    work = []
    for line in datagram.decode("ascii", "replace").splitlines():
        kind, _, number = line.partition(" ")
        if kind and number.isdigit():
            work.append(Next(int(number), kind))
    return work


class Handoff:
    """An acceptor's side: sends committed outbox rows to the pipeline process, never waiting for it."""

    def __init__(self, serve_pid: int) -> None:
        self.address = address(serve_pid)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setblocking(False)

    def dispatch(self, work: Sequence[Next], why: str = "new") -> None:
        sent = 0
        for chunk in encode(work):
            try:
                self.socket.sendto(chunk, self.address)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT):
                    raise
                break
            sent += chunk.count(b"\n")
        for item in work[:sent]:
            metrics.OUTBOX_DISPATCHED.labels(item.kind, why).inc()
        if sent < len(work):
            log.warning(
                "the pipeline process is not taking work; the outbox will resend it", count=len(work) - sent
            )

    def close(self) -> None:
        self.socket.close()


class Child:
    """A child process of `serve`: started, started again (with a growing delay) when it dies unasked,
    stopped with SIGTERM and, after the grace time, SIGKILL."""

    def __init__(
        self, role: str, command: Sequence[str], on_exit: Callable[[int], None] | None = None
    ) -> None:
        self.role = role
        self.command = list(command)
        self.on_exit = on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._spawn()
        self.task = asyncio.get_running_loop().create_task(self._supervise(), name=self.role)

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        log.info("child process started", role=self.role, pid=self.proc.pid)

    async def _supervise(self) -> None:
        failures = 0
        while True:
            proc = self.proc
            assert proc is not None
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            if self.on_exit is not None:
                self.on_exit(proc.pid)
            if self.stopping:
                return
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.error(
                "child process exited; starting it again", role=self.role, exit_code=code, after_seconds=delay
            )
            metrics.CHILD_RESTARTS.labels(self.role).inc()
            failures += 1
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self._spawn()

    async def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, proc.wait), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.error("child process did not stop in time; killing it", role=self.role, pid=proc.pid)
            proc.kill()
            await loop.run_in_executor(None, proc.wait)
        if self.task is not None:
            await self.task


def command(config_path: str | None, *role: str) -> list[str]:
    config = ["--config", config_path] if config_path else []
    return [sys.executable, "-m", "postkasse", *config, *role]


def pipeline_command(config_path: str | None) -> list[str]:
    return command(config_path, "worker", "--embedded", str(os.getpid()))


def acceptor_command(config_path: str | None) -> list[str]:
    return command(config_path, "serve", "--acceptor", str(os.getpid()))


def become_child(serve_pid: int, niceness: int = 0) -> None:
    """Die with `serve`, as the in-process threads of one daemon would; optionally yield the CPU to it."""
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != serve_pid:  # `serve` died before prctl took effect
        os._exit(1)


def receive_work(serve_pid: int, dispatch: Callable[[Sequence[Next]], None]) -> threading.Thread:
    """The pipeline process's side: bind the socket and dispatch every line that arrives, in a thread."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    receiver.bind(address(serve_pid))

    def receive() -> None:
        while True:
            work = decode(receiver.recv(DATAGRAM_BYTES))
            if work:
                dispatch(work)

    thread = threading.Thread(target=receive, name="handoff", daemon=True)
    thread.start()
    return thread


def duties(
    settings: Settings, store: Store, clock: Clock, actors: Actors, serve_pid: int
) -> list[workers.Periodic]:
    """What `serve` does beside the acceptor when it has a broker, done here instead: take the work the
    acceptors hand over, redrive the outbox, ask for the periodic jobs."""
    receive_work(serve_pid, actors.dispatch)
    started = workers.duties(settings, store, clock, actors)
    for duty in started:
        duty.start()
    return started
