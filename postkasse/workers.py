"""Running the pipeline's work: the broker, the worker threads, and the outbox redriver."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from postkasse import errors, kinds, logs
from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.pipeline import Next
from postkasse.store import Store, outbox
from postkasse.tasks import Actors

log = logs.get(__name__)

# A killed worker's unacknowledged messages go back to the queue once its heartbeat is this old
# and a maintenance run happens; dramatiq's defaults (60 s, 0.1% of commands) can leave them 15+ minutes.
HEARTBEAT_TIMEOUT_MS = 20_000
MAINTENANCE_CHANCE = 50_000  # of 1,000,000 commands: 5%


def make_broker(settings: Settings) -> Broker:
    if not settings.broker.url:
        return StubBroker()
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.broker.url,
        namespace=settings.broker.namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


# An idle Redis consumer polls with a growing back-off capped at the worker timeout, and a message goes
# through four steps, each a new wait: 40 ms keeps the polling cheap (about 50 Redis calls a second per idle
# worker) and the hops short. The in-process broker blocks on its queue and is woken at once whatever this is.
POLL_CAP_MS = 40


def start_worker(broker: Broker, threads: int) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=POLL_CAP_MS)
    worker.start()
    return worker


def redrive(
    store: Store, clock: Clock, lease: timedelta, actors: Actors, *, everything: bool = False, page: int = 500
) -> int:
    """Send again the pending outbox rows whose lease ran out, or with `everything` all pending rows
    (at start, when the broker may have lost them all). Returns how many were sent."""
    now = clock.now()
    sent, after = 0, 0
    while True:
        with store.write() as conn:
            due = outbox.due(conn, None if everything else now, page, after_id=after)
            outbox.extend_lease(conn, [w.id for w in due], now + lease)
        if not due:
            break
        actors.dispatch([Next(w.id, w.kind) for w in due], why="redrive")
        sent += len(due)
        after = due[-1].id
    if sent:
        log.info("resent outbox work to the broker", count=sent, everything=everything)
    return sent


class Periodic(threading.Thread):
    """Runs `job` now and then every `interval` seconds until stopped; a failure is logged and retried."""

    def __init__(self, name: str, interval: float, job: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.job = job
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.job()
            except Exception as exc:
                log.warning("periodic job failed; will try again", job=self.name, error=errors.describe(exc))
            if self.stopping.wait(self.interval):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def redriver(store: Store, clock: Clock, lease: timedelta, actors: Actors, interval: float) -> Periodic:
    """Resends everything pending at start (the broker may have lost it all), then expired leases."""
    first = [True]

    def job() -> None:
        redrive(store, clock, lease, actors, everything=first[0])
        first[0] = False

    return Periodic("outbox-redriver", interval, job)


def duties(settings: Settings, store: Store, clock: Clock, actors: Actors) -> list[Periodic]:
    """The work beside the workers, in one process of a set-up (not started): the outbox redriver, and the
    tickers that ask for the deadline check and the purge. When several processes ask, the jobs themselves
    keep their alerts and deletions to one each."""
    lease = timedelta(seconds=settings.outbox.lease_seconds)
    return [
        redriver(store, clock, lease, actors, settings.outbox.redrive_interval_seconds),
        Periodic(
            "deadline-ticker",
            settings.deadlines.check_interval_seconds,
            lambda: actors.schedule(kinds.DEADLINE_CHECK),
        ),
        Periodic(
            "purge-ticker", settings.retention.interval_hours * 3600, lambda: actors.schedule(kinds.PURGE)
        ),
    ]
