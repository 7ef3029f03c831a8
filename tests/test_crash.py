"""Crash safety with real processes: SIGKILL the daemon, the worker or the broker and lose nothing.

A message that got 250 is stored exactly once and byte-exact; a message that did not may be missing
but is never half-stored; every stored message's work completes exactly once after a restart.
"""

from __future__ import annotations

import contextlib
import email
import hashlib
import os
import random
import smtplib
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from postkasse.store import Store, outbox
from postkasse.store.schema import message_headers, messages, outgoing_mail, referrals
from tests.conftest import REDIS_URL
from tests.helpers import make_message, send
from tests.servers import Daemon, RedisServer, Worker, wait_until
from tests.sink import Sink

CLIENTS = 20
PER_CLIENT = 15
KILL_AFTER = 150


def unique_message(client: int, n: int) -> bytes:
    payload = os.urandom(random.randint(1, 16) * 1024).hex().encode()
    lines = b"\r\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    marker = f"X-Test-Marker: {client}-{n}\r\n".encode()
    return make_message(lines + b"\r\n\xe6\xf8\xe5 8-bit line\r\n", extra=marker)


def backlog(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return outbox.backlog(conn)


STEPS = ("parse", "route", "receipt")  # `send` waits for a relay these tests do not run


def all_done(store: Store, total: int) -> bool:
    """Every message has been parsed, routed and given its receipt, each exactly once."""
    with store.read() as conn:
        rows = conn.execute(
            select(outbox.outbox.c.kind, outbox.outbox.c.state, func.count())
            .where(outbox.outbox.c.kind.in_(STEPS))
            .group_by(outbox.outbox.c.kind, outbox.outbox.c.state)
        ).all()
    return {(kind, state): n for kind, state, n in rows} == {(kind, "done"): total for kind in STEPS}


def count(store: Store, table: object) -> int:
    with store.read() as conn:
        total: int = conn.execute(select(func.count()).select_from(table)).scalar_one()  # type: ignore[arg-type]
        return total


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_message(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str
) -> None:
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    acked: dict[bytes, bytes] = {}
    sent: set[bytes] = set()
    lock = threading.Lock()

    def client(k: int) -> None:
        for n in range(PER_CLIENT):
            raw = unique_message(k, n)
            with lock:
                sent.add(raw)
            try:
                code, _ = send(daemon.smtp_port, raw)
            except (smtplib.SMTPException, OSError):
                return  # the server died under us: this message may or may not be stored
            if code == 250:
                with lock:
                    acked[hashlib.sha256(raw).digest()] = raw

    with ThreadPoolExecutor(CLIENTS) as pool:
        for k in range(CLIENTS):
            pool.submit(client, k)
        wait_until(lambda: len(acked) >= KILL_AFTER, 120, f"{KILL_AFTER} acknowledged messages")
        daemon.kill()
    assert len(acked) < CLIENTS * PER_CLIENT, "the kill came after the last message: nothing was tested"

    daemon.start()  # restart on the same store; work left pending is sent again at start
    store = Store(database_url)
    with store.read() as conn:
        rows = conn.execute(select(messages.c.id, messages.c.raw, messages.c.sha256, messages.c.size)).all()
    by_digest = Counter(hashlib.sha256(r.raw).digest() for r in rows)
    for digest in acked:
        assert by_digest[digest] == 1, "an acknowledged message is missing or stored twice"
    for row in rows:
        assert row.raw in sent, "a stored message is not one that was sent: half-stored or corrupted"
        assert row.sha256 == hashlib.sha256(row.raw).hexdigest() and row.size == len(row.raw)
    wait_until(lambda: all_done(store, len(rows)), 60, "all stored messages to be processed")
    assert count(store, message_headers) == count(store, referrals) == len(rows)
    assert daemon.terminate() == 0
    store.dispose()


def send_many(daemon: Daemon, total: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda n: send(daemon.smtp_port, unique_message(0, n))[0], range(total)))
    assert codes == [250] * total


@pytest.mark.slow
def test_killed_worker_leaves_no_work_undone_or_done_twice(
    daemon_factory: type[Daemon], tmp_path: Path, redis_namespace: str
) -> None:
    total = 600
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    daemon = daemon_factory(
        tmp_path,
        database_url,
        broker={"url": REDIS_URL, "namespace": redis_namespace, "worker_threads": 4},
        outbox={"lease_seconds": 2, "redrive_interval_seconds": 0.5},
    )
    daemon.start()
    send_many(daemon, total)
    store = Store(database_url)
    assert backlog(store) == {"pending": total}  # no worker yet: the work waits in Redis and the outbox

    worker = Worker(tmp_path, daemon.config)
    worker.start()
    wait_until(lambda: backlog(store).get("done", 0) >= 100, 60, "the worker to get going")
    worker.kill()
    assert backlog(store).get("pending", 0) > 0, "the worker finished before the kill: nothing was tested"

    worker = Worker(tmp_path, daemon.config)
    worker.start()
    wait_until(lambda: all_done(store, total), 120, "all work to complete after the restart")
    assert count(store, message_headers) == count(store, referrals) == total
    worker.terminate()
    store.dispose()


@pytest.mark.slow
def test_killed_broker_loses_its_queue_but_the_outbox_resends_it(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    total = 100
    redis = RedisServer(tmp_path)
    redis.start()
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    daemon = daemon_factory(
        tmp_path,
        database_url,
        broker={"url": redis.url},
        outbox={"lease_seconds": 2, "redrive_interval_seconds": 0.5},
    )
    try:
        daemon.start()
        send_many(daemon, total)
        redis.kill()  # keeps nothing on disk: every queued message is gone
        redis.start()

        worker = Worker(tmp_path, daemon.config)
        worker.start()
        store = Store(database_url)
        wait_until(lambda: all_done(store, total), 120, "the outbox to resend the lost work")
        assert count(store, message_headers) == count(store, referrals) == total
        worker.terminate()
        store.dispose()
    finally:
        redis.kill()


@pytest.mark.slow
def test_receipts_cut_off_by_a_killed_daemon_reach_the_relay_exactly_once(
    daemon_factory: type[Daemon], tmp_path: Path, figures: Callable[[str], None]
) -> None:
    total, threads = 6, 2
    relay = Sink(delay=1.0).start()  # each receipt takes a second at the relay: the kill comes mid-send
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    daemon = daemon_factory(
        tmp_path,
        database_url,
        broker={"worker_threads": threads},
        outbox={"redrive_interval_seconds": 0.5},
        outbound={
            "host": "127.0.0.1",
            "port": relay.port,
            "tls": "none",
            "timeout_seconds": 2,
            "claim_lease_seconds": 30,  # the least for a 2 s relay timeout
        },
    )
    store = Store(database_url)
    try:
        daemon.start()
        originals = [make_message() for _ in range(total)]
        for raw in originals:
            assert send(daemon.smtp_port, raw)[0] == 250
        # Every worker thread is in the middle of a send, none between the relay's 250 and marking it sent.
        wait_until(lambda: relay.holding == threads, 60, "both workers to be sending a receipt")
        daemon.kill()
        with store.read() as conn:
            states = Counter(conn.execute(select(outgoing_mail.c.state)).scalars())
        assert states["sending"] == threads, states  # claimed by the dead daemon; the relay kept nothing
        assert len(relay.mails()) < total

        daemon.start()  # its redriver resends the jobs; the dead claims are taken up once they run out
        wait_until(lambda: len(relay.mails()) >= total, 120, f"{total} receipts at the relay")
        wait_until(lambda: backlog(store) == {"done": 4 * total}, 30, "every job to be done")
        with store.read() as conn:
            assert set(conn.execute(select(outgoing_mail.c.state)).scalars()) == {"sent"}
        answered = Counter(d.mail["In-Reply-To"] for d in relay.mails())
        expected = {email.message_from_bytes(raw)["Message-ID"] for raw in originals}
        assert answered == dict.fromkeys(expected, 1)  # every message's receipt, each exactly once
        figures(
            f"{total} receipts, {threads} cut off mid-send by SIGKILL; at the relay after the restart: "
            f"{len(relay.mails())}, each message's receipt {set(answered.values())} time(s)"
        )
        assert daemon.terminate() == 0
    finally:
        store.dispose()
        relay.stop()


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as listing:
        return [int(child) for child in listing.read().split()]


def niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_embedded_pipeline_process_is_restarted_and_dies_with_serve(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str
) -> None:
    """With no broker the pipeline runs in a child of `serve`, below its priority. Killed, it is started
    again and does the work that arrived meanwhile; when `serve` is killed, the child goes with it."""
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    assert daemon.proc is not None
    wait_until(lambda: len(children_of(daemon.proc.pid)) == 1, 30, "the pipeline process")
    (pipeline,) = children_of(daemon.proc.pid)
    wait_until(lambda: niceness(pipeline) > niceness(daemon.proc.pid), 30, "the pipeline to lower itself")
    store = Store(database_url)
    send_many(daemon, 5)
    wait_until(lambda: all_done(store, 5), 60, "the first messages to be processed")

    os.kill(pipeline, 9)
    send_many(daemon, 5)  # acknowledged while no pipeline process runs
    wait_until(
        lambda: [c for c in children_of(daemon.proc.pid) if c != pipeline and alive(c)], 30, "a new pipeline"
    )
    wait_until(lambda: all_done(store, 10), 60, "the messages that came while it was down to be processed")
    assert "child process exited; starting it again" in daemon.log()
    assert metric_sum(daemon, "postkasse_child_restarts_total") == 1

    (restarted,) = [c for c in children_of(daemon.proc.pid) if alive(c)]
    daemon.kill()
    wait_until(lambda: not alive(restarted), 10, "the pipeline process to die with serve")
    store.dispose()


def metric_sum(daemon: Daemon, name: str) -> float:
    """A metric summed over its labels, as /metrics gives it (whichever process answered)."""
    _, body = daemon.get("/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    )


def listening_pids(port: int) -> set[int]:
    """The processes holding a listening TCP socket on `port` (Linux's /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    pids.add(int(entry.name))
    return pids


@pytest.mark.slow
def test_several_acceptor_processes_share_the_ports_and_count_as_one(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str
) -> None:
    """`serve.processes = 2`: both processes listen on the SMTP and HTTP ports; /metrics, whichever answers,
    counts the mail all of them took; a killed acceptor is started again and no mail is refused meanwhile."""
    daemon = daemon_factory(tmp_path, database_url, serve={"processes": 2})
    daemon.start()
    assert daemon.proc is not None
    serve = daemon.proc.pid
    wait_until(lambda: len(listening_pids(daemon.smtp_port)) == 2, 30, "two processes on the SMTP port")
    (acceptor,) = listening_pids(daemon.smtp_port) - {serve}
    assert acceptor in children_of(serve)
    wait_until(lambda: listening_pids(daemon.http_port) == {serve, acceptor}, 30, "both on the HTTP port")

    send_many(daemon, 20)
    os.kill(acceptor, 9)
    wait_until(
        lambda: listening_pids(daemon.smtp_port) == {serve}, 10, "the killed acceptor's socket to close"
    )
    send_many(daemon, 20)  # the one left takes every connection
    wait_until(lambda: len(listening_pids(daemon.smtp_port)) == 2, 30, "the acceptor started again")
    store = Store(database_url)
    wait_until(lambda: all_done(store, 40), 60, "all messages to be processed")
    # The killed process's counts are kept in the shared directory: the sum never goes back.
    assert {metric_sum(daemon, "postkasse_messages_accepted_total") for _ in range(10)} == {40}
    assert metric_sum(daemon, "postkasse_child_restarts_total") == 1
    assert daemon.terminate() == 0
    assert not listening_pids(daemon.smtp_port)
    store.dispose()
