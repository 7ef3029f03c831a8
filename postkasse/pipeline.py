"""The named steps stored work goes through, and the one way any of them is run.

A step runs inside one write transaction together with marking its outbox row done, so a broker that
delivers twice changes nothing the second time. A step names the work that follows, as (kind, target)
pairs; those outbox rows are written in the same transaction and sent to the broker after the commit.

A `Delivery` step talks to the world outside the database (an SMTP relay). It must not hold a write
transaction while it waits on the network, so it gets the store and manages its own short transactions.
When someone else holds its job, it raises `Postponed`: the row stays pending and the redriver sends it
again once the holder's claim has run out, without counting an attempt.

An exception's text may quote content (SQLAlchemy quotes the parameters), so a failed attempt is recorded,
logged and raised to the broker as `StepFailed`, which carries only `errors.describe` of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar, cast, runtime_checkable

from sqlalchemy import Connection

from postkasse import errors, logs, metrics
from postkasse.clock import Clock
from postkasse.store import Store, outbox

log = logs.get(__name__)

Follow = tuple[str, int]  # (step kind, target id)


class Step(Protocol):
    """One job on one target, inside the pipeline's transaction."""

    name: str
    max_attempts: int
    min_backoff: timedelta
    max_backoff: timedelta

    def run(self, conn: Connection, target_id: int, now: datetime) -> Sequence[Follow]:
        """Do the job; return the work that follows."""
        ...

    def give_up(self, conn: Connection, target_id: int, now: datetime) -> Sequence[Follow]:
        """The last attempt failed: leave the target where a person sees it; return the work that follows."""
        ...


@runtime_checkable
class Delivery(Step, Protocol):
    """A step whose job is outside the database; `run` and `give_up` are still transactional."""

    def deliver(self, store: Store, target_id: int, now: datetime) -> None:
        """Do the outside job, claiming and recording it in the store in short transactions of its own."""
        ...


@runtime_checkable
class Prepares(Step, Protocol):
    """A step with heavy reading to do (a large document to parse) before its write transaction."""

    def prepare(self, store: Store, target_id: int) -> None:
        """Read and compute outside the write, in a read transaction of its own; `run` uses the result."""
        ...


class Postponed(Exception):
    """The job is held by someone else until `until`: look at it again then, not before."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"held until {until.isoformat()}")
        self.until = until


class StepFailed(errors.Safe):
    """An attempt failed and a retry is asked for; the message is the safe description of the cause."""


@dataclass(frozen=True)
class Next:
    """An outbox row written by a step, to be sent to the broker once committed."""

    outbox_id: int
    kind: str


Dispatch = Callable[[Sequence[Next]], None]
Job = Callable[[], Sequence[Next]]  # a periodic job; it returns the work it wrote
S = TypeVar("S")


class Pipeline:
    def __init__(self, steps: Sequence[Step], store: Store, clock: Clock, lease: timedelta) -> None:
        self.steps = {step.name: step for step in steps}
        self.store = store
        self.clock = clock
        self.lease = lease
        # Asked once here, not per run: a check against a runtime Protocol walks the class every time.
        self._prepares = {step.name for step in steps if isinstance(step, Prepares)}
        self._delivers = {step.name for step in steps if isinstance(step, Delivery)}

    def step(self, kind: type[S]) -> S:
        """The pipeline's step of this class: the periodic jobs share the alert steps' alerter."""
        found = [step for step in self.steps.values() if type(step) is kind]
        if len(found) != 1:
            raise LookupError(f"the pipeline has {len(found)} steps of type {kind.__name__}")
        return found[0]

    def add(self, conn: Connection, follow: Sequence[Follow], now: datetime) -> list[Next]:
        """Write outbox rows for `follow` inside the caller's transaction; dispatch them after the commit."""
        ids = outbox.add_many(conn, [(kind, target, now) for kind, target in follow], now + self.lease)
        return [Next(outbox_id, kind) for outbox_id, (kind, _) in zip(ids, follow, strict=True)]

    def run(self, outbox_id: int, dispatch: Dispatch, kind: str | None = None) -> None:
        """Run the outbox row's step once, if it is still pending. Raises to ask for a retry.

        `kind` is the row's step as the broker's message names it (each step has its own actor): a step
        that does all its work in the write transaction then needs no read beforehand to find out which
        step it is. The write transaction reads the row's kind anyway; a wrong hint costs a read again."""
        now = self.clock.now()
        try:
            follow = self._run(outbox_id, now, kind)
        except Postponed as held:
            self._postpone(outbox_id, held.until)
            return
        except Exception as exc:
            gave_up, error = self._failed(outbox_id, exc, dispatch)
            if not gave_up:
                raise StepFailed(error) from None
            return
        if follow is None:
            return
        if follow:
            dispatch(follow)

    def _outside(self, kind: str) -> bool:
        """Whether the step has work to do before its write transaction (a parse, a delivery)."""
        return kind in self._prepares or kind in self._delivers

    def _run(self, outbox_id: int, now: datetime, kind: str | None) -> list[Next] | None:
        if kind is None or kind not in self.steps or self._outside(kind):
            with self.store.read() as conn:
                work = outbox.claim(conn, outbox_id)
            if work is None:
                return None
            kind = work.kind
            step = self.steps[kind]
            if kind in self._prepares:
                cast(Prepares, step).prepare(self.store, work.target_id)
            if kind in self._delivers:
                cast(Delivery, step).deliver(self.store, work.target_id, now)
        with self.store.write() as conn:
            work = outbox.claim(conn, outbox_id)
            if work is None:
                return None
            # A wrong hint for a step with work outside the write: that work was not done; leave, read first.
            hinted_wrong = work.kind != kind and self._outside(work.kind)
            if not hinted_wrong:
                step = self.steps[work.kind]
                follow = self.add(conn, step.run(conn, work.target_id, now), now)
                outbox.finish(conn, outbox_id, now)
        if hinted_wrong:
            return self._run(outbox_id, now, None)
        metrics.OUTBOX_DONE.labels(work.kind).inc()
        return follow

    def _postpone(self, outbox_id: int, until: datetime) -> None:
        """Leave the row pending, due again at `until`, for the redriver to send then."""
        with self.store.write() as conn:
            outbox.extend_lease(conn, [outbox_id], until)
        log.info("outbox work held by someone else; looking again", outbox_id=outbox_id, at=until.isoformat())

    def _failed(self, outbox_id: int, exc: Exception, dispatch: Dispatch) -> tuple[bool, str]:
        """Count the failed attempt; True when it was the last and the row is now `failed`, and the
        error as stored and logged."""
        now = self.clock.now()
        error = errors.describe(exc)
        follow: list[Next] = []
        with self.store.write() as conn:
            work = outbox.claim(conn, outbox_id)
            if work is None:
                return True, error
            step = self.steps[work.kind]
            gave_up = outbox.record_failure(conn, outbox_id, now, error, now + self.lease, step.max_attempts)
            if gave_up:
                follow = self.add(conn, step.give_up(conn, work.target_id, now), now)
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
        return gave_up, error
