"""One directory that `serve` and the processes it starts count their metrics into.

Set before `prometheus_client` is first imported (it decides then how it keeps its values), so /metrics,
whichever process answers it, sums the counts of all of them: the acceptors' and the pipeline process's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "postkasse-metrics-"


@contextlib.contextmanager
def shared(wanted: bool) -> Iterator[None]:
    """A fresh directory for this `serve` and its children, removed when it stops; children inherit it."""
    if not wanted or os.environ.get(ENV):
        yield
        return
    _remove_left_behind()
    directory = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = directory
    try:
        yield
    finally:
        del os.environ[ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _remove_left_behind() -> None:
    """The directories of a `serve` that was killed (its pid is in the name and no longer runs)."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_ended(pid: int) -> None:
    """Drop a dead process's live gauges (its open SMTP sessions, say) from the sums."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
