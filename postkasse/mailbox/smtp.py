"""SMTP ingest on the daemon's own event loop: say 250 only after the message is committed.

RFC 5321 6.1: once the server says 250 to DATA it owns the message, so the handler waits for the
group committer and answers 451 (try again) whenever the store could not take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session

from postkasse import logs, metrics
from postkasse.clock import Clock
from postkasse.config import SmtpSettings
from postkasse.mailbox.committer import GroupCommitter
from postkasse.store import Received, StoreUnavailable

log = logs.get(__name__)

CHANNEL = "smtp"


# A CR not followed by LF, or an LF not preceded by CR: what lets a header be smuggled past a parser.
def has_bare_cr_or_lf(raw: bytes) -> bool:
    """A CR not followed by LF, or an LF not preceded by CR: what is left once every CRLF is taken out
    (a tenth of the time of a regular expression over a large message, which runs on the event loop)."""
    rest = raw.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest


# Answers aiosmtpd gives by itself, counted by the reason they carry.
_BUILTIN_REJECTIONS = {
    b"552": "too_large",
    b"500 Line too long": "line_too_long",
    b"530": "starttls_required",
    b"421": "closing",
}


class MailboxHandler:
    """The aiosmtpd handler: which recipients we take, and storing what arrives."""

    def __init__(self, accept_addresses: Iterable[str], committer: GroupCommitter, clock: Clock) -> None:
        self.accept = {a.lower() for a in accept_addresses}
        self.committer = committer
        self.clock = clock

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Drop the empty AUTH line aiosmtpd adds after STARTTLS: senders do not log in."""
        session.host_name = hostname
        return [line for line in responses if not line.startswith("250-AUTH")]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() not in self.accept:
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "unknown_recipient").inc()
            return f"550 5.1.1 <{address}>: no such mailbox here; this server takes mail only for its mailbox"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        if has_bare_cr_or_lf(raw):
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "bare_cr_or_lf").inc()
            return "550 5.6.0 Message refused: it contains a bare CR or LF; every line must end with CRLF"
        received = Received(
            channel=CHANNEL,
            mail_from=_null_sender_empty(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            peer=_peer(session.peer),
            tls=session.ssl is not None,
            received_at=self.clock.now(),
            raw=raw,
        )
        try:
            stored = await self.committer.save(received)
        except StoreUnavailable:
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "store_unavailable").inc()
            return "451 4.3.0 Message not accepted: the mailbox cannot store it right now; try again later"
        metrics.MESSAGES_ACCEPTED.labels(CHANNEL).inc()
        log.info(
            "message accepted",
            channel=CHANNEL,
            message=stored.message_id,
            size=len(raw),
            recipients=len(received.rcpt_tos),
            tls=received.tls,
        )
        return f"250 2.0.0 OK: stored as message {stored.message_id}"


class MailboxSMTP(SMTP):
    """aiosmtpd's SMTP with a whole-session time limit, rejection metrics and a polite shutdown."""

    def __init__(
        self, handler: MailboxHandler, *, server: SmtpServer, session_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.server = server
        self.session_timeout = session_timeout
        self.session_timer: asyncio.TimerHandle | None = None

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.session_timer is None:  # also called again after STARTTLS
            self.session_timer = self.loop.call_later(self.session_timeout, self._session_expired)
            self.server.sessions.add(self)
            metrics.SMTP_SESSIONS.set(len(self.server.sessions))

    def connection_lost(self, error: Exception | None) -> None:
        if self.session_timer is not None:
            self.session_timer.cancel()
        self.server.sessions.discard(self)
        metrics.SMTP_SESSIONS.set(len(self.server.sessions))
        super().connection_lost(error)

    async def smtp_MAIL(self, arg: str) -> None:
        if self.server.stopping:
            await self.say_goodbye()
            return
        await super().smtp_MAIL(arg)

    async def push(self, status: AnyStr) -> None:
        code = status.encode() if isinstance(status, str) else bytes(status)
        for prefix, reason in _BUILTIN_REJECTIONS.items():
            if code.startswith(prefix):
                metrics.MESSAGES_REJECTED.labels(CHANNEL, reason).inc()
        await super().push(status)

    async def say_goodbye(self) -> None:
        """Tell the client we are closing (421) and close; a client that already left is no error."""
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(OSError):
            await self.push("421 4.3.2 Service shutting down; try again later")
        if self.transport is not None:
            self.transport.close()

    def _session_expired(self) -> None:
        log.info("smtp session time limit reached", peer=_peer(self.session.peer if self.session else None))
        if self.transport is not None:
            self.transport.close()


class SmtpServer:
    """The listening socket and the sessions on it."""

    def __init__(self, settings: SmtpSettings, handler: MailboxHandler) -> None:
        self.settings = settings
        self.handler = handler
        self.sessions: set[MailboxSMTP] = set()
        self.stopping = False
        self.server: asyncio.Server | None = None
        self.tls_context = _tls_context(settings)

    def _protocol(self) -> MailboxSMTP:
        return MailboxSMTP(
            self.handler,
            server=self,
            session_timeout=self.settings.session_timeout_seconds,
            data_size_limit=self.settings.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.settings.hostname,
            ident="postkasse",
            tls_context=self.tls_context,
            require_starttls=self.settings.require_starttls,
            timeout=self.settings.idle_timeout_seconds,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],  # senders are not users: no AUTH offered
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.settings.host, self.settings.port)
        log.info(
            "smtp listening",
            address=f"{self.settings.host}:{self.port}",
            starttls=self.tls_context is not None,
            require_starttls=self.settings.require_starttls,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop listening, let open transactions finish within the grace time, then close every session."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            if not session.in_transaction:
                await session.say_goodbye()
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_seconds
        while any(s.in_transaction for s in self.sessions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            await session.say_goodbye()
        if self.server is not None:
            await self.server.wait_closed()


def _null_sender_empty(mail_from: str | None) -> str:
    """aiosmtpd keeps the null reverse-path as '<>'; the store keeps it as ''."""
    return "" if mail_from is None or mail_from == "<>" else mail_from


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context
