"""`postkasse serve`: SMTP and HTTP on one event loop and the store writer, in one process or in several
sharing the ports; with no broker, the pipeline in a process of its own (`embedded`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta

import anyio.to_thread
import uvicorn

from postkasse import embedded, flows, logs, metrics_dir, workers
from postkasse.clock import Clock, SystemClock
from postkasse.committee.api import Api
from postkasse.committee.audit import AuditLog
from postkasse.committee.tokens import Authenticator
from postkasse.config import Settings
from postkasse.gauges import StoreGauges
from postkasse.inbox import Inbox
from postkasse.mailbox.committer import GroupCommitter
from postkasse.mailbox.imap import ImapChannel
from postkasse.mailbox.limits import Tally, count_accept_errors, fitting_session_limit, raise_fd_limit
from postkasse.mailbox.smtp import MailboxHandler, SmtpServer
from postkasse.pipeline import Dispatch, Next
from postkasse.retention.purge import Policy
from postkasse.store import Store, Stored
from postkasse.store.migrate import upgrade
from postkasse.tasks import Actors
from postkasse.web import create_app
from postkasse.workers import make_broker

log = logs.get(__name__)

SWITCH_INTERVAL = 0.0005  # seconds; CPython's default is 0.005
HTTP_THREADS = 16  # API requests handled at once; the rest wait in line rather than for a connection


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    """The first `serve` process (`serve_pid` None) migrates the store, reads IMAP and starts the others: the
    pipeline process (with no broker) and `serve.processes - 1` further acceptors, which take SMTP and HTTP
    on the same ports. With a broker, it also redrives the outbox and asks for the periodic jobs."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        config_path: str | None = None,
        serve_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.first = serve_pid is None
        self.serve_pid = serve_pid or os.getpid()
        # One connection for each thread that may use the store at once, so none is opened per request.
        self.store = Store(settings.database.url, pool_size=HTTP_THREADS + 4)
        self.lease = timedelta(seconds=settings.outbox.lease_seconds)
        self.parts = flows.parts(settings)
        self.pipeline = flows.build(settings, self.store, self.clock, self.parts)
        # Work goes to the broker when there is one, or else to the pipeline process `serve` starts.
        self.actors: Actors | None = None
        self.handoff: embedded.Handoff | None = None
        if settings.broker.url:
            periodic = flows.periodic(self.pipeline, Policy.of(settings.retention))
            self.actors = Actors(make_broker(settings), self.pipeline, periodic)
            self.dispatch: Dispatch = self.actors.dispatch
        else:
            self.handoff = embedded.Handoff(self.serve_pid)
            self.dispatch = self.handoff.dispatch
        commands: dict[str, list[str]] = {}
        if self.first and self.handoff is not None:
            commands["pipeline"] = embedded.pipeline_command(config_path)
        if self.first:
            for n in range(2, settings.serve.processes + 1):
                commands[f"acceptor-{n}"] = embedded.acceptor_command(config_path)
        self.children = [
            embedded.Child(role, command, metrics_dir.process_ended) for role, command in commands.items()
        ]
        self.shared_ports = settings.serve.processes > 1
        self.stop_requested = asyncio.Event()

    def _dispatch_stored(self, stored: Sequence[Stored]) -> None:
        self.dispatch([Next(s.outbox_id, s.kind) for s in stored])

    def _duties(self) -> list[workers.Periodic]:
        """With a broker and no pipeline process to do them: the redriver and the periodic tickers."""
        if not self.first or self.actors is None:
            return []
        return workers.duties(self.settings, self.store, self.clock, self.actors)

    def _http_sockets(self) -> list[socket.socket] | None:
        """Shared ports need SO_REUSEPORT on every process's socket, so they are made here, not by uvicorn."""
        if not self.shared_ports:
            return None
        host, port = self.settings.http.host, self.settings.http.port
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        return [sock]

    async def run(self) -> None:
        # The event loop gives up the GIL at every socket call and must win it back from the store
        # writer and HTTP threads; a short switch interval keeps SMTP answers from queueing behind them.
        sys.setswitchinterval(SWITCH_INTERVAL)
        anyio.to_thread.current_default_thread_limiter().total_tokens = HTTP_THREADS
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        # A flood of connections must meet the session limits, not the descriptor limit; when it does meet it,
        # each failed accept is counted, not logged.
        max_sessions = fitting_session_limit(self.settings.smtp.max_sessions, raise_fd_limit())
        count_accept_errors(
            loop, Tally("accept failed: out of descriptors or memory; retrying", loop.call_later)
        )
        if self.first:
            await loop.run_in_executor(None, upgrade, self.store)
        for child in self.children:
            child.start()
        duties = self._duties()
        for duty in duties:
            duty.start()

        committer = GroupCommitter(self.store, flows.FIRST_STEP, self.lease, self._dispatch_stored)
        committer.start()
        smtp = SmtpServer(
            self.settings.smtp,
            MailboxHandler(self.settings.smtp.accept_addresses, committer, self.clock),
            max_sessions,
            reuse_port=self.shared_ports,
        )
        await smtp.start()
        imap = ImapChannel(self.settings.imap if self.first else [], committer, self.store, self.clock)
        imap.start()
        municipalities, rules = self.parts.municipalities, self.parts.rules
        api = Api(
            store=self.store,
            authenticator=Authenticator(self.store),
            clock=self.clock,
            municipalities=municipalities,
            pipeline=self.pipeline,
            dispatch=self.dispatch,
            from_address=self.settings.outbound.from_address,
            audit_log=AuditLog(self.store),
            rules=rules,
            max_submission_bytes=self.settings.smtp.max_message_bytes,
            medcom=self.parts.medcom,
        )
        gauges = StoreGauges(self.store, self.clock, rules, municipalities)
        http = _Uvicorn(
            uvicorn.Config(
                create_app(self.store, api, gauges, imap.status, Inbox(api.actions, self.settings.web)),
                host=self.settings.http.host,
                port=self.settings.http.port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        http_task = loop.create_task(http.serve(sockets=self._http_sockets()), name="http")
        log.info(
            "postkasse serving",
            pipeline_process=self.handoff is not None,
            processes=self.settings.serve.processes,
            first=self.first,
        )

        await self.stop_requested.wait()
        log.info("shutting down")
        await asyncio.gather(smtp.stop(), imap.stop(self.settings.smtp.shutdown_grace_seconds))
        await committer.close()
        http.should_exit = True
        await http_task
        api.audit_log.close()
        for duty in duties:
            duty.stop()
        await asyncio.gather(*(child.stop() for child in self.children))
        if self.handoff is not None:
            self.handoff.close()
        if self.actors is not None:
            self.actors.broker.close()
        self.store.dispose()
        log.info("stopped")
