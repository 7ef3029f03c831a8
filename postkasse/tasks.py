"""The dramatiq actors: one per pipeline step, each only hands the outbox id to the pipeline.

Actors are bound to a broker at start-up (`bind`) rather than at import, so the same definitions
serve Redis in `postkasse worker`, the in-process broker in `serve`, and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import dramatiq
from dramatiq.broker import Broker

from postkasse import logs, metrics
from postkasse.pipeline import Next, Pipeline

QUEUE = "postkasse"

log = logs.get(__name__)


class Actors:
    def __init__(self, broker: Broker, pipeline: Pipeline) -> None:
        self.broker = broker
        self.by_kind: dict[str, dramatiq.Actor[[int], None]] = {}
        for step in pipeline.steps.values():

            def perform(outbox_id: int) -> None:
                pipeline.run(outbox_id, self.dispatch)

            self.by_kind[step.name] = dramatiq.actor(
                broker=broker,
                actor_name=step.name,
                queue_name=QUEUE,
                max_retries=step.max_attempts - 1,
                min_backoff=int(step.min_backoff.total_seconds() * 1000),
                max_backoff=int(step.max_backoff.total_seconds() * 1000),
            )(perform)

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
