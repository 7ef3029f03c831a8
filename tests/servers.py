"""Real processes for tests: `postkasse serve`, `postkasse worker` and private redis-server instances."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

STARTUP_SECONDS = 60
_counter = itertools.count()


_ports_given: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now and never handed out before in this process.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is closed, so two
    servers of one test (Dovecot's two listeners, serve's SMTP and HTTP) could otherwise get the same port.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Process:
    """A postkasse command run as its own process, its output kept in a log file."""

    command = "serve"

    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.n = next(_counter)
        self.log_path = workdir / f"{self.command}-{self.n}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTKASSE_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "postkasse", "--config", str(self.config), self.command],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class Worker(Process):
    command = "worker"

    def wait_ready(self) -> None:
        """Until it has its broker and threads (it says so in its log, at level INFO)."""

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"postkasse worker exited:\n{self.log()}")
            return "worker running" in self.log()

        wait_until(ready, STARTUP_SECONDS, f"postkasse worker to be ready; log:\n{self.log()}")


class Daemon(Process):
    """`postkasse serve` on free loopback ports, with a config written from the arguments."""

    def __init__(self, workdir: Path, database_url: str, **sections: dict[str, Any]) -> None:
        self.smtp_port = free_port()
        self.http_port = free_port()
        merged: dict[str, dict[str, Any]] = {
            "database": {"url": database_url},
            "broker": {"url": ""},
            "smtp": {
                "host": "127.0.0.1",
                "port": self.smtp_port,
                "accept_addresses": ["postkasse@localhost"],
            },
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "log": {"level": "INFO"},
        }
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        self.smtp_port = merged["smtp"]["port"]
        self.http_port = merged["http"]["port"]
        n = next(_counter)
        super().__init__(workdir, write_config(workdir / f"postkasse-{n}.toml", merged))

    def start(self) -> None:
        super().start()
        wait_until(self._ready, STARTUP_SECONDS, f"postkasse serve to be ready; log:\n{self.log()}")

    def _ready(self) -> bool:
        if not self.running:
            raise AssertionError(
                f"postkasse serve exited with {self.proc and self.proc.returncode}:\n{self.log()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as response:
                if response.status != 200:
                    return False
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                return True
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


class RedisServer:
    """A private redis-server on a free loopback port, keeping nothing on disk: killing it loses the queue."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; `make test` installs it"
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ready, 10, "redis-server")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
