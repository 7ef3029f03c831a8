"""Keeping a flood of connections from exhausting the process: descriptors, and logs counted, not repeated.

A thousand clients that connect at once must not take the descriptors that the store, the relay and the HTTP
API need, and must not write a log line each: the daemon raises its descriptor limit, keeps the SMTP session
limit well below it, and reports refusals and failed accepts once per interval with a count.
"""

from __future__ import annotations

import asyncio
import errno
import resource
from collections import Counter
from collections.abc import Callable
from typing import Any

from postkasse import logs

log = logs.get(__name__)

# Descriptors kept for everything but SMTP sessions: the store's pool, HTTP requests, the relay, IMAP, logs.
FD_RESERVE = 256
REPORT_INTERVAL_SECONDS = 60.0

Schedule = Callable[[float, Callable[[], None]], Any]


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a default of 1,024 is gone in a moment's flood);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("file descriptor limit could not be raised", soft=soft, hard=hard, error=str(exc))
            return soft
        log.info("file descriptor limit raised", soft=target, was=soft)
        return target
    return soft


def fitting_session_limit(wanted: int, fd_limit: int) -> int:
    """The SMTP session limit that leaves room under the descriptor limit: at most half of what the reserve
    leaves, so sessions can never starve the store, the relay or the HTTP API of descriptors."""
    room = max(1, (fd_limit - FD_RESERVE) // 2)
    if wanted <= room:
        return wanted
    log.warning(
        "smtp.max_sessions lowered to fit the file descriptor limit",
        configured=wanted,
        used=room,
        fd_limit=fd_limit,
    )
    return room


class Tally:
    """Counts an event by reason and logs it at most once per interval, with the count.

    The first occurrence is logged at once; later ones are added up and logged when the interval ends, so a
    flood costs a few log lines a minute, not one per connection."""

    def __init__(self, event: str, schedule: Schedule, interval: float = REPORT_INTERVAL_SECONDS) -> None:
        self.event = event
        self.schedule = schedule
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.waiting = False

    def add(self, reason: str) -> None:
        self.counts[reason] += 1
        if not self.waiting:
            self.report()

    def report(self) -> None:
        """Log what was counted since the last report; keep reporting each interval while events come."""
        if not self.counts:
            self.waiting = False
            return
        for reason, count in sorted(self.counts.items()):
            log.warning(self.event, reason=reason, count=count, interval_seconds=self.interval)
        self.counts.clear()
        self.waiting = True
        self.schedule(self.interval, self.report)


ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message, in selector_events


def count_accept_errors(loop: asyncio.AbstractEventLoop, tally: Tally) -> None:
    """Route asyncio's "accept failed" reports (EMFILE and kin, one per attempt) into `tally`; every other
    loop error goes to the default handler as before."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if context.get("message") == ACCEPT_FAILED and isinstance(error, OSError):
            tally.add(errno.errorcode.get(error.errno or 0, "unknown"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
