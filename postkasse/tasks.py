"""The dramatiq actors: one per pipeline step, each only hands the outbox id to the pipeline, and one per
periodic job, which runs it.

Actors are bound to a broker at start-up (`bind`) rather than at import, so the same definitions
serve Redis in `postkasse worker`, the in-process broker in `serve`, and the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import dramatiq
from dramatiq.broker import Broker

from postkasse import errors, logs, metrics
from postkasse.pipeline import Job, Next, Pipeline

QUEUE = "postkasse"
PERIODIC_MAX_AGE_MS = 5 * 60 * 1000

log = logs.get(__name__)


class Actors:
    """`periodic` jobs (the deadline check) get an actor each too; a job returns the work it wrote."""

    def __init__(self, broker: Broker, pipeline: Pipeline, periodic: Mapping[str, Job] | None = None) -> None:
        self.broker = broker
        self.by_kind: dict[str, dramatiq.Actor[[int], None]] = {}
        self.periodic: dict[str, dramatiq.Actor[[], None]] = {}
        for name, job in (periodic or {}).items():
            self.periodic[name] = self._periodic(name, job)
        for step in pipeline.steps.values():
            self.by_kind[step.name] = dramatiq.actor(
                broker=broker,
                actor_name=step.name,
                queue_name=QUEUE,
                max_retries=step.max_attempts - 1,
                min_backoff=int(step.min_backoff.total_seconds() * 1000),
                max_backoff=int(step.max_backoff.total_seconds() * 1000),
            )(self._perform(pipeline, step.name))

    def _perform(self, pipeline: Pipeline, kind: str) -> Callable[[int], None]:
        """The actor's body for one step: the outbox id, with the step's name as the pipeline's hint."""

        def perform(outbox_id: int) -> None:
            pipeline.run(outbox_id, self.dispatch, kind)

        return perform

    def _periodic(self, name: str, job: Job) -> dramatiq.Actor[[], None]:
        def perform() -> None:
            try:
                work = job()
            except Exception as exc:  # logged here without its text, which may quote stored values
                log.error(
                    "periodic job failed", job=name, error=errors.describe(exc), stack=errors.trace(exc)
                )
                return
            self.dispatch(work)

        # No retries, and a request left waiting (no worker ran) expires: the next tick asks again anyway.
        return dramatiq.actor(
            broker=self.broker, actor_name=name, queue_name=QUEUE, max_retries=0, max_age=PERIODIC_MAX_AGE_MS
        )(perform)

    def schedule(self, name: str) -> None:
        """Ask the workers to run the periodic job `name` once."""
        self.periodic[name].send()

    def dispatch(self, work: Sequence[Next], why: str = "new") -> None:
        """Send committed outbox rows to the broker. A failure here only delays: the redriver resends."""
        for item in work:
            try:
                self.by_kind[item.kind].send(item.outbox_id)
            except Exception as exc:
                log.warning(
                    "could not send work to the broker; the outbox will resend it",
                    outbox_id=item.outbox_id,
                    kind=item.kind,
                    error=str(exc),
                )
                return
            metrics.OUTBOX_DISPATCHED.labels(item.kind, why).inc()
