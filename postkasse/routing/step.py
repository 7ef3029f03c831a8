"""The `route` step: read the stored message, decide where it goes, and create its referral.

Idempotent: a message that already has a referral is left alone, and a message whose Message-ID and
sender match an earlier one is recorded as a duplicate on the first referral, never shown twice.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.errors import MessageError
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import DataError, SQLAlchemyError

from postkasse import logs
from postkasse.clock import danish_date
from postkasse.committee import correspondence, referrals
from postkasse.config import Settings
from postkasse.deadlines.rules import RuleBook, rulebook
from postkasse.mailbox import content
from postkasse.medcom.intake import MedcomIntake, document_of
from postkasse.pipeline import Follow
from postkasse.routing.extract import MailExtractor, extract
from postkasse.routing.facts import Extractor, Facts
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import ROUTING_FAILED, TRIAGE_TEXT, AgeRange, Decision, decide, unreadable
from postkasse.routing.refdata import Geography, imports
from postkasse.routing.registry import LocalRegistry, Registry
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


class StoreLookups:
    """The policy's lookups against the store: municipalities from configuration, the rest imported."""

    def __init__(self, municipalities: Municipalities, geography: Geography, registry: Registry) -> None:
        self.municipalities = municipalities
        self.geography = geography
        self.registry = registry

    def registry_municipality(self, cpr: str) -> str | None:
        return self.registry.municipality_of(cpr)

    def postal_municipalities(self, postal_code: str) -> frozenset[str]:
        return self.geography.postal_municipalities(postal_code)

    def street_municipalities(self, street: str, postal_code: str) -> frozenset[str]:
        return self.geography.street_municipalities(street, postal_code)


class ReferenceCache:
    """Geography and registry in memory, loaded again when an import changed them.

    Whether an import happened is asked at most once per `check_seconds`, not once per message."""

    def __init__(self, check_seconds: float = 1.0) -> None:
        self.lock = threading.Lock()
        self.check_seconds = check_seconds
        self.checked_at = -check_seconds
        self.version: object = None
        self.geography = Geography({}, {})
        self.registry = LocalRegistry(array("q"), array("H"), [], {})

    def get(self, conn: Connection) -> tuple[Geography, LocalRegistry]:
        with self.lock:
            if time.monotonic() - self.checked_at >= self.check_seconds:
                current = imports(conn)
                version = (current.get("postnord"), current.get("roads"), current.get("registry"))
                if version != self.version:
                    self.geography = Geography.load(conn)
                    self.registry = LocalRegistry.load(conn)
                    self.version = version
                self.checked_at = time.monotonic()
            return self.geography, self.registry


class Router:
    """Facts to decision for one stored message; used by the step and by `postkasse route --explain`."""

    def __init__(self, municipalities: Municipalities, ages: AgeRange) -> None:
        self.municipalities = municipalities
        self.ages = ages
        self.mail = MailExtractor(municipalities.by_name)
        self.extractors: list[Extractor] = [self.mail]
        self.reference = ReferenceCache()

    def lookups(self, conn: Connection) -> StoreLookups:
        geography, registry = self.reference.get(conn)
        return StoreLookups(self.municipalities, geography, registry)

    def decide(self, conn: Connection, raw: bytes, received_at: datetime) -> tuple[Decision, Facts]:
        facts = extract(raw, self.extractors)
        return self.decide_facts(conn, facts, received_at), facts

    def decide_facts(self, conn: Connection, facts: Facts, received_at: datetime) -> Decision:
        return decide(facts, self.lookups(conn), danish_date(received_at), self.ages)


class RouteMessage:
    name = "route"
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

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteMessage:
        municipalities = Municipalities.load(settings.routing.municipalities_file)
        rules = rulebook(settings.deadlines)
        senders = SenderKinds(settings.routing.sender_kinds.model_dump().items())
        return cls(
            Router(municipalities, AgeRange(settings.routing.min_age, settings.routing.max_age)),
            rules,
            senders,
            MedcomIntake(settings.medcom, rules, senders, settings.outbound.from_address),
        )

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
        urgent: list[Follow] = [("urgent", referral_id)] if facts and facts.urgent else []
        return [("receipt", message.id), *urgent]

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        """Route the message; content that cannot be read sends it to triage, and only the store's and the
        broker's faults raise, so a retry can only help where one is asked for."""
        stored.hold(conn, message_id)
        if referrals.for_message(conn, message_id) is not None:
            return ()
        message = conn.execute(select(messages).where(messages.c.id == message_id)).one()
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
        document = document_of(message.channel, message.raw) if self.medcom else None
        if self.medcom and document is not None:
            return self.medcom.route(conn, message, document, now, self.router)
        first = stored.first_copy(conn, message)
        if first is not None and correspondence.reply_in_thread(conn, first) is None:
            # Steps run in any order: a resend may come first, so the original is routed before it is named.
            follow = self.run(conn, first, now)
            original = referrals.for_message(conn, first)
            if original is not None:
                referrals.note_duplicate(conn, original.id, message.id, now)
                return [*follow, ("receipt", message.id)]
        mail = content.read(message.raw)
        answered = correspondence.match_reply(conn, message.mail_from, mail.message)
        if answered is not None:
            text = mail.text().strip()
            correspondence.attach_reply(conn, answered, message.id, message.mail_from, text, now)
            return [("receipt", message.id)]
        facts = self.router.mail.facts(mail)
        if mail.unreadable:
            return self._create(conn, message, unreadable(facts.notes), facts, now)
        decision = self.router.decide_facts(conn, facts, message.received_at)
        return self._create(conn, message, decision, facts, now)

    def give_up(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        if referrals.for_message(conn, message_id) is not None:
            return [("receipt", message_id)]
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
