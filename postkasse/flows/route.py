"""The `route` step: read the stored message, decide where it goes, and create its referral.

A MedCom document (an HTTP submission, or a mail part of an XML or FHIR type) is handed to `route_medcom`;
anything else is mail: a resend is noted on the first referral, an answer to a committee's message is put on
its thread, and the rest is routed by `routing` on the facts the mail gives.

Idempotent: a message that already has a referral is left alone, and a message whose Message-ID and
sender match an earlier one is recorded as a duplicate on the first referral, never shown twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from email.errors import MessageError
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import DataError, SQLAlchemyError

from postkasse import kinds, logs
from postkasse.committee import correspondence, referrals
from postkasse.deadlines.rules import RuleBook
from postkasse.flows.route_medcom import MedcomIntake, document_in, may_carry_document
from postkasse.mailbox import content
from postkasse.pipeline import Follow
from postkasse.routing.facts import Facts
from postkasse.routing.policy import ROUTING_FAILED, TRIAGE_TEXT, Decision, unreadable
from postkasse.routing.router import Router
from postkasse.routing.senders import SenderKinds
from postkasse.store import Store
from postkasse.store import messages as stored
from postkasse.store.schema import messages

log = logs.get(__name__)


def content_fault(exc: BaseException) -> bool:
    """Whether routing failed on what the message holds rather than on the store, the network or a lookup:
    errors of decoding and parsing, and a value the store refuses. Anything else raises, to be retried."""
    if isinstance(exc, DataError):
        return True
    if isinstance(exc, SQLAlchemyError):
        return False
    return isinstance(
        exc, ValueError | LookupError | RecursionError | MessageError | SyntaxError | ArithmeticError
    )


class RouteMessage:
    name = kinds.ROUTE
    max_attempts = 5
    min_backoff = timedelta(seconds=2)
    max_backoff = timedelta(minutes=2)

    def __init__(
        self, router: Router, rules: RuleBook, senders: SenderKinds, medcom: MedcomIntake | None = None
    ) -> None:
        self.router = router
        self.rules = rules
        self.senders = senders
        self.medcom = medcom

    def prepare(self, store: Store, message_id: int) -> None:
        """A MedCom document is parsed and validated here, so the write transaction never waits on it."""
        if self.medcom is not None:
            self.medcom.prepare(store, message_id)

    def _create(
        self, conn: Connection, message: Any, decision: Decision, facts: Facts | None, now: datetime
    ) -> Sequence[Follow]:
        referral_id = referrals.create(
            conn,
            referrals.decided(
                message.id,
                message.received_at,
                decision,
                facts,
                self.rules,
                self.senders.classify(message.mail_from),
            ),
            now,
        )
        urgent: list[Follow] = [(kinds.URGENT, referral_id)] if facts and facts.urgent else []
        return [(kinds.RECEIPT, message.id), *urgent]

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        """Route the message; content that cannot be read sends it to triage, and only the store's and the
        broker's faults raise, so a retry can only help where one is asked for."""
        stored.hold(conn, message_id)
        if referrals.for_message(conn, message_id) is not None:
            return ()
        message = stored.row_of(conn, message_id)
        try:
            with conn.begin_nested():  # what a failed reading wrote is undone before triage is written
                return self._route(conn, message, now)
        except Exception as exc:
            if not content_fault(exc):
                raise
            log.warning(
                "content could not be read; sent to triage", message_id=message_id, error=type(exc).__name__
            )
        return self._create(conn, message, unreadable(), None, now)

    def _route(self, conn: Connection, message: Any, now: datetime) -> Sequence[Follow]:
        """The message is parsed once here; the document search, the reply match and the facts share it."""
        if self.medcom and message.channel == "http":
            return self.medcom.route(conn, message, message.raw, now, self.router)
        mail = content.read(message.raw)
        document = document_in(mail) if self.medcom and may_carry_document(message.raw) else None
        if self.medcom and document is not None:
            return self.medcom.route(conn, message, document, now, self.router)
        first = stored.first_copy(conn, message)
        if first is not None and correspondence.reply_in_thread(conn, first) is None:
            # Steps run in any order: a resend may come first, so the original is routed before it is named.
            follow = self.run(conn, first, now)
            original = referrals.for_message(conn, first)
            if original is not None:
                referrals.note_duplicate(conn, original.id, message.id, now)
                return [*follow, (kinds.RECEIPT, message.id)]
        answered = correspondence.match_reply(conn, message.mail_from, mail.message)
        if answered is not None:
            text = mail.text().strip()
            correspondence.attach_reply(conn, answered, message.id, message.mail_from, text, now)
            return [(kinds.RECEIPT, message.id)]
        facts = self.router.mail.facts(mail)
        if mail.unreadable:
            return self._create(conn, message, unreadable(facts.notes), facts, now)
        decision = self.router.decide_facts(conn, facts, message.received_at)
        return self._create(conn, message, decision, facts, now)

    def give_up(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        if referrals.for_message(conn, message_id) is not None:
            return [(kinds.RECEIPT, message_id)]
        message = conn.execute(  # what _create needs, not the raw message
            select(messages.c.id, messages.c.received_at, messages.c.mail_from).where(
                messages.c.id == message_id
            )
        ).one()
        failed = Decision(
            decision="triage",
            municipality=None,
            triage_reason=ROUTING_FAILED,
            reasons=(ROUTING_FAILED,),
            explanation=(TRIAGE_TEXT[ROUTING_FAILED],),
            flags=(),
            cpr=None,
        )
        return self._create(conn, message, failed, None, now)
