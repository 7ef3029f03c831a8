"""The named steps a stored message goes through, and the one way any of them is run.

A step runs inside one write transaction together with marking its outbox row done, so a broker that
delivers twice changes nothing the second time. A step may name the steps that follow; their outbox
rows are written in the same transaction and sent to the broker after the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection

from postkasse import logs, metrics
from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.mailbox.headers import ParseHeaders
from postkasse.routing.step import RouteMessage
from postkasse.store import Store, outbox

log = logs.get(__name__)


class Step(Protocol):
    """One job on one stored message."""

    name: str
    max_attempts: int
    min_backoff: timedelta
    max_backoff: timedelta

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[str]:
        """Do the job; return the names of the steps to run next."""
        ...

    def give_up(self, conn: Connection, message_id: int, now: datetime) -> Sequence[str]:
        """The last attempt failed: leave the message where a person sees it; return the steps to run next."""
        ...


@dataclass(frozen=True)
class Next:
    """An outbox row written by a step, to be sent to the broker once committed."""

    outbox_id: int
    kind: str


Dispatch = Callable[[Sequence[Next]], None]


class Pipeline:
    def __init__(self, steps: Sequence[Step], store: Store, clock: Clock, lease: timedelta) -> None:
        self.steps = {step.name: step for step in steps}
        self.store = store
        self.clock = clock
        self.lease = lease

    def run(self, outbox_id: int, dispatch: Dispatch) -> None:
        """Run the outbox row's step once, if it is still pending. Raises to ask for a retry."""
        now = self.clock.now()
        try:
            with self.store.write() as conn:
                work = outbox.claim(conn, outbox_id)
                if work is None:
                    return
                step = self.steps[work.kind]
                follow = [
                    Next(outbox.add(conn, kind, work.message_id, now, now + self.lease), kind)
                    for kind in step.run(conn, work.message_id, now)
                ]
                outbox.finish(conn, outbox_id, now)
        except Exception as exc:
            if not self._failed(outbox_id, exc, dispatch):
                raise
            return
        metrics.OUTBOX_DONE.labels(work.kind).inc()
        if follow:
            dispatch(follow)

    def _failed(self, outbox_id: int, exc: Exception, dispatch: Dispatch) -> bool:
        """Count the failed attempt; True when it was the last and the row is now `failed`."""
        now = self.clock.now()
        error = f"{type(exc).__name__}: {exc}"
        follow: list[Next] = []
        with self.store.write() as conn:
            work = outbox.claim(conn, outbox_id)
            if work is None:
                return True
            step = self.steps[work.kind]
            gave_up = outbox.record_failure(conn, outbox_id, now, error, now + self.lease, step.max_attempts)
            if gave_up:
                follow = [
                    Next(outbox.add(conn, kind, work.message_id, now, now + self.lease), kind)
                    for kind in step.give_up(conn, work.message_id, now)
                ]
        metrics.OUTBOX_ERRORS.labels(work.kind).inc()
        if gave_up:
            metrics.OUTBOX_FAILED.labels(work.kind).inc()
            log.error("outbox step failed for good", outbox_id=outbox_id, kind=work.kind, error=error)
            if follow:
                dispatch(follow)
        else:
            log.warning(
                "outbox step failed; will retry",
                outbox_id=outbox_id,
                kind=work.kind,
                error=error,
                attempt=work.attempts + 1,
            )
        return gave_up


def build(settings: Settings, store: Store, clock: Clock) -> Pipeline:
    """The pipeline every stored message goes through, in order of its first step."""
    steps: list[Step] = [ParseHeaders(), RouteMessage.from_settings(settings)]
    return Pipeline(steps, store, clock, timedelta(seconds=settings.outbox.lease_seconds))


FIRST_STEP = ParseHeaders.name
