"""Scale-out with real processes: two `serve` and two `worker` on one PostgreSQL and one Redis.

A burst from several SMTP sessions is spread over both `serve` processes; one `serve` and one `worker` are
SIGKILLed mid-burst and started again. Every message that got its 250 is stored once, routed once (one
referral) and receipted once at the relay. The one exception is SMTP's own: a message the killed `serve`
committed but whose 250 never reached the client is sent again by it, and kept as a resend (tests/burst.py).
The rates are bench/scaleout.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from postkasse.store import Store
from tests.burst import Burst, TimedSink, audit, drained, run_in_thread
from tests.conftest import REDIS_URL
from tests.servers import Daemon, Worker, wait_until

SESSIONS = 10
TOTAL = 150
KILL_AFTER = 50


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_serves_two_workers_survive_a_kill_of_one_each_with_every_message_once(
    daemon_factory: type[Daemon],
    tmp_path: Path,
    database_url: str,
    redis_namespace: str,
    figures: Callable[[str], None],
) -> None:
    sink = TimedSink()
    sink.start()
    sections: dict[str, dict[str, Any]] = {
        "broker": {"url": REDIS_URL, "namespace": redis_namespace, "worker_threads": 4},
        "outbox": {"lease_seconds": 2, "redrive_interval_seconds": 0.5},
        "outbound": {
            "host": "127.0.0.1",
            "port": sink.port,
            "tls": "none",
            "timeout_seconds": 1,
            "claim_lease_seconds": 15,  # the least for a 1 s relay timeout: a killed send is taken up soon
        },
    }
    serves = [daemon_factory(tmp_path, database_url, **sections) for _ in range(2)]
    workers: list[Worker] = []
    store = Store(database_url)
    try:
        for serve in serves:  # one after the other: the first one migrates the new database
            serve.start()
        workers = [Worker(tmp_path, serves[0].config) for _ in range(2)]
        for worker in workers:
            worker.start()

        burst = Burst(lambda: [s.smtp_port for s in serves], SESSIONS, TOTAL, deadline_seconds=120)
        sending = run_in_thread(burst)
        wait_until(lambda: burst.acked_count() >= KILL_AFTER, 60, f"{KILL_AFTER} acknowledged messages")
        serves[0].kill()
        workers[0].kill()
        assert burst.acked_count() < TOTAL, "the kill came after the last message: nothing was tested"
        serves[0].start()  # on the same ports; its redriver sends again what the outbox holds pending
        workers[0] = Worker(tmp_path, serves[0].config)
        workers[0].start()
        sending.join()

        assert len(burst.acked) == TOTAL, "every message gets its 250 in the end, on one serve or the other"
        wait_until(lambda: drained(store, sink), 90, "the pipeline to drain")
        result = audit(store, burst, sink)
        # A copy the client sent again after a 250 lost with the killed serve is SMTP's own duplicate
        # (RFC 1047): kept as a resend, with no referral of its own. Nothing else may be twice or missing.
        assert result.once_but_for_lost_250s, result.describe()
        figures(result.describe())
        for worker in workers:
            worker.terminate()
        for serve in serves:
            assert serve.terminate() == 0
    finally:
        for worker in workers:
            worker.kill()
        store.dispose()
        sink.stop()
