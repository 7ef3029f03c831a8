"""SMTP ingest on the daemon's own event loop: say 250 only after the message is committed.

RFC 5321 6.1: once the server says 250 to DATA it owns the message, so the handler waits for the
group committer and answers 451 (try again) whenever the store could not take it.

The protocol is answered as trusted servers answer it (RFC 5321, RFC 2920, RFC 6531 and Postfix's defaults):
bad address syntax 501, a UTF-8 address without SMTPUTF8 553 5.6.7, a client that talks ahead where RFC 2920
does not let it 554 5.5.0, a mail loop 554 5.4.6, STARTTLS inside TLS 554 5.5.1, and a session that keeps
erring, or keeps talking without sending mail, is ended with 421 4.7.0. Every refusal carries an enhanced
status code (RFC 3463) and a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from postkasse import logs, metrics
from postkasse.clock import Clock
from postkasse.config import SmtpSettings
from postkasse.mailbox.committer import GroupCommitter
from postkasse.mailbox.limits import Tally
from postkasse.store import Received, StoreUnavailable
from postkasse.store.messages import header_block

log = logs.get(__name__)

CHANNEL = "smtp"


# A CR not followed by LF, or an LF not preceded by CR: what lets a header be smuggled past a parser.
def has_bare_cr_or_lf(raw: bytes) -> bool:
    """A CR not followed by LF, or an LF not preceded by CR: what is left once every CRLF is taken out
    (a tenth of the time of a regular expression over a large message, which runs on the event loop)."""
    rest = raw.replace(b"\r\n", b"")
    return b"\r" in rest or b"\n" in rest


# RFC 5321 4.1.2's Mailbox, with RFC 6531's UTF-8 in atoms, quoted strings and domain labels. Surrogates
# (8-bit bytes that are not UTF-8) and every control character, CR, LF and NUL included, are outside it.
_UTF8 = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_UTF8}]+"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LABEL = rf"[A-Za-z0-9{_UTF8}](?:[A-Za-z0-9\-{_UTF8}]*[A-Za-z0-9{_UTF8}])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_MAILBOX = rf"(?:{_ATOM}(?:\.{_ATOM})*|{_QUOTED})@(?:{_DOMAIN}|\[[\x21-\x5a\x5e-\x7e]+\])"
# A path in angle brackets (an old source route before it is allowed and ignored), or a bare mailbox as
# Postfix takes it; then the parameters, after a space.
_PATH = re.compile(
    rf"(?:<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?(?P<bracketed>{_MAILBOX})?>|(?P<bare>{_MAILBOX}))(?= |$)"
)

# Replies aiosmtpd gives without an enhanced status code (RFC 3463), given the one its basic code means.
_ENHANCED_FOR = {
    "421": "4.3.2",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.5.0",
    "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def with_enhanced_code(reply: str) -> str:
    """A refusal that names its class and reason the way Postfix's do (`501 5.5.4 ...`)."""
    if reply[:1] not in ("4", "5") or _HAS_ENHANCED.match(reply):
        return reply
    code, separator, text = reply[:3], reply[3:4] or " ", reply[4:]
    enhanced = _ENHANCED_FOR.get(code, f"{code[0]}.0.0")
    return f"{code}{separator}{enhanced} {text}".rstrip()


# Answers aiosmtpd gives by itself, counted by the reason they carry.
_BUILTIN_REJECTIONS = {
    b"552": "too_large",
    b"500 Line too long": "line_too_long",
    b"530": "starttls_required",
    b"421": "closing",
}

# RFC 2920 3.1 (and RFC 3207, RFC 4954): these commands end a pipelined group; anything sent after them
# before their reply is a client that does not wait. Without EHLO (HELO, or nothing yet) every command does.
_LAST_IN_GROUP = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP", "STARTTLS", "AUTH", "TURN"})
# Commands that move no mail (Postfix's junk commands, with HELP and the greetings).
_JUNK = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "HELO", "EHLO", "ETRN"})
# Connections the kernel holds until they are accepted: in a flood, room for a real client's SYN.
LISTEN_BACKLOG = 1024
MAX_RECEIVED_HEADERS = 100  # RFC 5321 6.3: a count of at least 100 before a loop is assumed
_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


class MailboxHandler:
    """The aiosmtpd handler: which recipients we take, and storing what arrives."""

    def __init__(self, accept_addresses: Iterable[str], committer: GroupCommitter, clock: Clock) -> None:
        self.accept = {a.lower() for a in accept_addresses}
        self.committer = committer
        self.clock = clock

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Drop the empty AUTH line aiosmtpd adds after STARTTLS (senders do not log in); offer PIPELINING,
        which MailboxSMTP enforces as RFC 2920 says."""
        session.host_name = hostname
        lines = [line for line in responses if not line.startswith("250-AUTH")]
        return [*lines[:-1], "250-PIPELINING", lines[-1]]

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
        if len(_RECEIVED.findall(header_block(raw))) > MAX_RECEIVED_HEADERS:
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "mail_loop").inc()
            return (
                f"554 5.4.6 Message refused: more than {MAX_RECEIVED_HEADERS} Received headers; "
                "it is looping between servers"
            )
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
        if isinstance(server, MailboxSMTP):
            server.delivered()
        return f"250 2.0.0 OK: stored as message {stored.message_id}"


Command = Callable[[str | None], Coroutine[Any, Any, None]]


class _Commands(dict[str, Command]):
    """aiosmtpd looks every command up here before it runs it, known or not: the one place where the session
    sees each command, so it can refuse a client that talks ahead or only idles."""

    def __init__(self, session: MailboxSMTP, methods: dict[str, Command]) -> None:
        super().__init__(methods)
        self.session = session

    def get(self, command: str, default: Any = None) -> Any:
        ending = self.session.ending_for(command)
        if ending is not None:
            return functools.partial(self.session.end_session, ending)
        if command not in self:  # an error like any other (aiosmtpd's own count would end it with 502)
            return functools.partial(self.session.unknown_command, command)
        return super().get(command, default)


class MailboxSMTP(SMTP):
    """aiosmtpd's SMTP with session limits, the protocol checks trusted servers make, rejection metrics, an
    idle timer that data keeps alive, and a polite shutdown."""

    def __init__(
        self, handler: MailboxHandler, *, server: SmtpServer, session_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.server = server
        self.session_timeout = session_timeout
        self.session_timer: asyncio.TimerHandle | None = None
        self.client: str | None = None  # the address counted against the per-client limit
        self.refused = False
        self.errors = 0
        self.junk = 0
        self.last_read = 0.0
        self._smtp_methods = _Commands(self, self._smtp_methods)

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.session_timer is None and not self.refused:  # also called again after STARTTLS
            refusal = self.server.admit(self, transport.get_extra_info("peername"))
            if refusal is not None:
                # Before aiosmtpd sets anything up: a refused connection costs one write and one close.
                self.refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"421 4.7.0 {self.hostname} {refusal}\r\n".encode())
                transport.close()
                return
            self.last_read = self.loop.time()
            super().connection_made(transport)
            self.session_timer = self.loop.call_later(self.session_timeout, self._session_expired)
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        if self.session_timer is not None:
            self.session_timer.cancel()
        self.server.release(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        return False if self.refused else super().eof_received()

    def data_received(self, data: bytes) -> None:
        """Any bytes from the client count as activity: a slow but steady upload is not idle."""
        self.last_read = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        remaining = self.last_read + self._timeout_duration - self.loop.time()
        if remaining > 0:
            self._reset_timeout(remaining)
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def ending_for(self, command: str) -> str | None:
        """The reply that ends the session before `command` runs, if the client broke the rules to send it."""
        if self._talked_ahead(command):
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "pipelining").inc()
            return (
                f"554 5.5.0 Error: SMTP protocol synchronization: {command} was sent with more after it, "
                "before its reply"
            )
        if command in _JUNK:
            self.junk += 1
            if self.junk > self.server.settings.max_junk_commands:
                metrics.MESSAGES_REJECTED.labels(CHANNEL, "too_many_commands").inc()
                return "421 4.7.0 Error: too many commands that send no mail; closing the session"
        return None

    def _talked_ahead(self, command: str) -> bool:
        """More input is already waiting after this command: RFC 2920 lets a client send ahead only after
        EHLO, and never past a command that ends a group."""
        if not self._reader._buffer:  # type: ignore[attr-defined]
            return False
        extended = self.session is not None and self.session.extended_smtp
        return not extended or command in _LAST_IN_GROUP

    async def end_session(self, reply: str, _arg: str | None = None) -> None:
        """Say why (421 or 554) and close; nothing the client sent after it is read."""
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    async def unknown_command(self, command: str, _arg: str | None = None) -> None:
        await self.push(f'500 5.5.2 Error: command "{command}" not recognized')

    def delivered(self) -> None:
        """A stored message shows a sender doing what it came for: its error and idle counts start again."""
        self.errors = 0
        self.junk = 0

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.server.stopping:
            await self.say_goodbye()
            return
        if await self.check_helo_needed():
            return
        refusal = self._address_refusal(arg, "FROM:", sender=True)
        if refusal is not None:
            await self.push(refusal)
            return
        await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if self.in_transaction:
            refusal = self._address_refusal(arg, "TO:", sender=False)
            if refusal is not None:
                await self.push(refusal)
                return
        await super().smtp_RCPT(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        """RFC 2920 3.1: a DATA after only refused recipients is refused with 554, not 503."""
        if self.in_transaction and self.envelope is not None and not self.envelope.rcpt_tos and not arg:
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        await super().smtp_DATA(arg)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self._tls_protocol is not None:
            await self.push("554 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    def _address_refusal(self, arg: str | None, keyword: str, *, sender: bool) -> str | None:
        """501 for an address outside RFC 5321's grammar, 553 5.6.7 for UTF-8 without SMTPUTF8 (RFC 6531)."""
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return None  # aiosmtpd answers the command's own syntax error
        rest = arg[len(keyword) :].lstrip(" ")
        match = _PATH.match(rest)
        address = match and (match.group("bracketed") or match.group("bare") or "")
        if match is None or (not address and not sender):
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "bad_address").inc()
            if sender:
                return "501 5.1.7 Bad sender address syntax"
            return "501 5.1.3 Bad recipient address syntax"
        assert address is not None
        if sender:
            smtputf8 = "SMTPUTF8" in rest[match.end() :].upper().split()
        else:
            smtputf8 = self.envelope is not None and self.envelope.smtp_utf8
        if not address.isascii() and not smtputf8:
            metrics.MESSAGES_REJECTED.labels(CHANNEL, "utf8_without_smtputf8").inc()
            return "553 5.6.7 Must declare SMTPUTF8 to send a UTF-8 address"
        return None

    async def push(self, status: AnyStr) -> None:
        """Every reply with an enhanced status code; refusals counted, and the session ended at the limit."""
        if self.transport is None or self.transport.is_closing():
            return  # the session is over (a reply after 421 or 554 goes nowhere)
        text = status if isinstance(status, str) else status.decode("utf-8", "surrogateescape")
        for prefix, reason in _BUILTIN_REJECTIONS.items():
            if text.encode("utf-8", "surrogateescape").startswith(prefix):
                metrics.MESSAGES_REJECTED.labels(CHANNEL, reason).inc()
        reply = with_enhanced_code(text)
        await super().push(reply)
        if reply[:1] in ("4", "5") and not reply.startswith("421"):
            self.errors += 1
            if self.errors >= self.server.settings.max_errors:
                metrics.MESSAGES_REJECTED.labels(CHANNEL, "too_many_errors").inc()
                await self.end_session("421 4.7.0 Error: too many errors; closing the session")

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
    """The listening socket and the sessions on it, within their limits overall and per client address."""

    def __init__(
        self,
        settings: SmtpSettings,
        handler: MailboxHandler,
        max_sessions: int | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.reuse_port = reuse_port  # several processes accept on the port, the kernel spreads connections
        self.max_sessions = max_sessions or settings.max_sessions
        self.sessions: set[MailboxSMTP] = set()
        self.per_client: Counter[str] = Counter()
        self.stopping = False
        self.server: asyncio.Server | None = None
        self.tls_context = _tls_context(settings)
        self.refusals: Tally | None = None

    def admit(self, session: MailboxSMTP, peer: Any) -> str | None:
        """Count a new connection in, or say why it is refused (421 4.7.0, logged once per interval)."""
        client = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        if len(self.sessions) >= self.max_sessions:
            return self._refuse("too_many_sessions", "Error: too many connections; try again later")
        if self.per_client[client] >= self.settings.max_sessions_per_client:
            return self._refuse(
                "too_many_sessions_from_client", "Error: too many connections from your address"
            )
        session.client = client
        self.per_client[client] += 1
        self.sessions.add(session)
        metrics.SMTP_SESSIONS.set(len(self.sessions))
        return None

    def release(self, session: MailboxSMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            assert session.client is not None
            self.per_client[session.client] -= 1
            if self.per_client[session.client] <= 0:
                del self.per_client[session.client]
        metrics.SMTP_SESSIONS.set(len(self.sessions))

    def _refuse(self, reason: str, text: str) -> str:
        metrics.MESSAGES_REJECTED.labels(CHANNEL, reason).inc()
        if self.refusals is not None:
            self.refusals.add(reason)
        return text

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
        self.refusals = Tally("smtp connections refused", loop.call_later)
        self.server = await loop.create_server(
            self._protocol,
            self.settings.host,
            self.settings.port,
            backlog=LISTEN_BACKLOG,
            reuse_port=self.reuse_port or None,
        )
        log.info(
            "smtp listening",
            address=f"{self.settings.host}:{self.port}",
            starttls=self.tls_context is not None,
            require_starttls=self.settings.require_starttls,
            max_sessions=self.max_sessions,
            max_sessions_per_client=self.settings.max_sessions_per_client,
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
