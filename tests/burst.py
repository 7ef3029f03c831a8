"""A burst of SMTP sessions spread over several `serve` processes, and the exactly-once audit after it.

Shared by tests/test_scaleout.py and bench/scaleout.py. The load client behaves like a sending MTA: a
message whose session fails before its 250 is tried again on the next `serve`, and only a 250 counts as
acknowledged. Every message has its own Message-ID and its own envelope sender, so its receipt at the relay
sink is found by its In-Reply-To.
"""

from __future__ import annotations

import smtplib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from postkasse.store import Store, outbox
from postkasse.store.schema import messages, outgoing_mail, referrals
from tests.helpers import RCPT
from tests.sink import Sink


class TimedSink(Sink):
    """The relay sink, noting when each mail arrived (for the end-to-end rate)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.arrivals.append(time.monotonic())
        return answer

    def receipts(self) -> Counter[str]:
        """Receipts delivered per answered Message-ID (without angle brackets)."""
        return Counter(bare_id(d.mail["In-Reply-To"] or "") for d in self.mails())


def bare_id(message_id: str) -> str:
    return message_id.strip().strip("<>")


def burst_message(message_id: str, sender: str, padding: int) -> bytes:
    """A referral-like mail without a CPR number (the router sends it to triage: one referral each)."""
    body = b"".join(b"Linje %d af en henvisning uden personnummer.\r\n" % n for n in range(padding))
    return (
        f"From: Klinik <{sender}>\r\nTo: {RCPT}\r\nSubject: Henvisning\r\nMessage-ID: <{message_id}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode() + body


@dataclass
class Outcome:
    """What the load client saw of one message."""

    message_id: str
    sender: str
    attempts: int = 0  # sessions it was sent in
    acked_at: float | None = None  # when its 250 came
    failed_attempts: int = 0  # sessions that broke or refused it before any 250


@dataclass
class Burst:
    """`sessions` threads send `total` messages between them over the SMTP ports `ports()` names now.

    A session keeps its connection for many messages; when it breaks (the serve was killed) or a message is
    refused with 4xx, the message is tried again on the next port, as a sending MTA would.
    """

    ports: Callable[[], Sequence[int]]
    sessions: int
    total: int
    padding: int = 40
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    deadline_seconds: float = 300.0
    outcomes: list[Outcome] = field(default_factory=list)
    started_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.outcomes = [
            Outcome(f"{self.tag}.{n}@burst.example", f"klinik-{self.tag}-{n}@klinik.example")
            for n in range(self.total)
        ]

    @property
    def acked(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.acked_at is not None]

    def acked_count(self) -> int:
        with self.lock:
            return sum(o.acked_at is not None for o in self.outcomes)

    def run(self) -> None:
        """Send everything; returns when every message got its 250 or the deadline passed."""
        self.started_at = time.monotonic()
        threads = [
            threading.Thread(target=self._session, args=(k,), name=f"burst-{k}") for k in range(self.sessions)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _session(self, k: int) -> None:
        mine = self.outcomes[k :: self.sessions]
        turn = k
        client: smtplib.SMTP | None = None
        try:
            for outcome in mine:
                raw = burst_message(outcome.message_id, outcome.sender, self.padding)
                while outcome.acked_at is None and time.monotonic() - self.started_at < self.deadline_seconds:
                    ports = self.ports()
                    if client is None:
                        try:
                            client = smtplib.SMTP("127.0.0.1", ports[turn % len(ports)], timeout=30)
                            client.ehlo()
                        except (smtplib.SMTPException, OSError):
                            client = None
                            turn += 1
                            time.sleep(0.05)  # a refused connection: the next serve, after a moment
                            continue
                    outcome.attempts += 1
                    try:
                        client.sendmail(outcome.sender, [RCPT], raw)
                        outcome.acked_at = time.monotonic()
                    except smtplib.SMTPResponseException as exc:
                        outcome.failed_attempts += 1
                        if exc.smtp_code < 400 or exc.smtp_code >= 500:
                            raise
                        _drop(client)
                        client = None
                        turn += 1
                    except (smtplib.SMTPServerDisconnected, smtplib.SMTPRecipientsRefused, OSError):
                        outcome.failed_attempts += 1
                        _drop(client)
                        client = None
                        turn += 1
        finally:
            if client is not None:
                _drop(client)


def _drop(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def backlog(store: Store) -> dict[str, int]:
    with store.read() as conn:
        return outbox.backlog(conn)


def drained(store: Store, sink: TimedSink) -> bool:
    """No outbox work left and every outgoing mail at the relay (or suppressed)."""
    with store.read() as conn:
        left = set(outbox.backlog(conn)) - {"done"}
        states = Counter(conn.execute(select(outgoing_mail.c.state)).scalars())
    if left or set(states) - {"sent", "suppressed"}:
        return False
    return len(sink.mails()) >= states["sent"]


@dataclass(frozen=True)
class Audit:
    """Per acknowledged message: its rows in `messages`, its referrals and its receipts at the relay sink.

    Exactly once is one of each. The one exception SMTP itself leaves: a `serve` killed after its commit but
    before the 250 went out leaves a stored message its client never heard about; the client sends it again
    (RFC 1047's duplicate). The copy is kept as a resend of the same message: noted on the first one's
    referral, not a referral of its own, with a receipt of its own that names the same reference.
    """

    acked: int
    stored: Counter[int]  # how many acknowledged messages were stored n times
    referred: Counter[int]
    receipted: Counter[int]
    resent_after_lost_250: int  # stored twice, one referral, a receipt per copy: the client's retry
    receipt_sent_twice: int  # one receipt (its own Message-ID) delivered more than once to the relay
    violations: list[str]  # acknowledged messages that are neither exactly once nor a retried lost 250
    unacked_stored: int  # messages stored without any 250 to the client (which gave up on them)

    @property
    def exactly_once(self) -> bool:
        """Every acknowledged message stored, routed and receipted exactly once."""
        return self.acked > 0 and all(set(c) == {1} for c in (self.stored, self.referred, self.receipted))

    @property
    def once_but_for_lost_250s(self) -> bool:
        """Exactly once, except for copies the client sent again because it never got their 250."""
        return self.acked > 0 and not self.violations

    def describe(self) -> str:
        def show(c: Counter[int]) -> str:
            return ", ".join(f"{n}x: {c[n]}" for n in sorted(c))

        return (
            f"{self.acked} acknowledged; stored {show(self.stored)}; referrals {show(self.referred)}; "
            f"receipts at the sink {show(self.receipted)}; of these resent by the client after a lost 250 "
            f"(stored twice, one referral, two receipts): {self.resent_after_lost_250}; a receipt delivered "
            f"twice to the relay: {self.receipt_sent_twice}; stored without a 250: {self.unacked_stored}"
            + (f"; NOT ONCE: {'; '.join(self.violations[:5])}" if self.violations else "")
        )


def audit(store: Store, burst: Burst, sink: TimedSink) -> Audit:
    with store.read() as conn:
        rows = conn.execute(select(messages.c.id, messages.c.message_id)).all()
        routed = conn.execute(select(referrals.c.message_id)).scalars().all()
    stored = Counter(bare_id(r.message_id or "") for r in rows)
    header_of = {r.id: bare_id(r.message_id or "") for r in rows}
    referred = Counter(header_of[m] for m in routed)
    receipts = sink.receipts()
    acked = burst.acked
    resent, violations = 0, []
    for o in acked:
        s, r, d = stored[o.message_id], referred[o.message_id], receipts[o.message_id]
        if (s, r, d) == (1, 1, 1):
            continue
        if s == d == 2 and r == 1 and o.failed_attempts > 0:
            resent += 1
            continue
        violations.append(f"{o.message_id}: stored {s}, referrals {r}, receipts {d}, attempts {o.attempts}")
    unacked = sum(1 for o in burst.outcomes if o.acked_at is None and stored[o.message_id])
    twice = Counter(d.mail["Message-ID"] for d in sink.mails())
    return Audit(
        acked=len(acked),
        stored=Counter(stored[o.message_id] for o in acked),
        referred=Counter(referred[o.message_id] for o in acked),
        receipted=Counter(receipts[o.message_id] for o in acked),
        resent_after_lost_250=resent,
        receipt_sent_twice=sum(1 for n in twice.values() if n > 1),
        violations=violations,
        unacked_stored=unacked,
    )


def run_in_thread(burst: Burst) -> threading.Thread:
    thread = threading.Thread(target=burst.run, name="burst")
    thread.start()
    return thread
