"""The `route` step for a MedCom document: find the document in a stored message, apply MedCom's rules
(duplicates, reused envelopes, receivers), route each letter like mail, and write the answer MedCom
prescribes, to go back by the channel the document came in on.

Everything here runs inside the route step's transaction, so a retried step repeats nothing; only the
parse may come first (prepare), in a read of its own, so the write holds the store's lock for the writes.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, select, update

from postkasse import kinds, logs
from postkasse.committee import correspondence, referrals
from postkasse.config import MedcomSettings
from postkasse.deadlines.rules import RuleBook
from postkasse.mailbox import content
from postkasse.mailbox.content import readable
from postkasse.medcom import answers
from postkasse.medcom.document import Document, Letter, MedcomError, Party
from postkasse.medcom.parse import Limits, Schemas, parse
from postkasse.pipeline import Follow
from postkasse.receipts import compose, outgoing
from postkasse.reference import reference as reference_of
from postkasse.reference import referral_from_reference
from postkasse.routing.medcom import facts
from postkasse.routing.policy import Decision
from postkasse.routing.router import Router
from postkasse.routing.senders import SenderKinds
from postkasse.store import Store, insert_ignoring_duplicates
from postkasse.store.schema import medcom_answers, medcom_first_letters, medcom_letters, messages
from postkasse.store.schema import referrals as referrals_table

log = logs.get(__name__)

DOCUMENT_TYPES = frozenset(
    {"application/xml", "text/xml", "application/fhir+xml", "application/fhir+json", "application/json"}
)
_SNIFF = (b"<Emessage", b"hl7.org/fhir", b'"resourceType"')
PREPARED = 4  # documents parsed ahead of their route step and not yet taken: about one per worker
_SENDER_EAN = re.compile(rb"<(?:\w+:)?Sender>\s*<(?:\w+:)?EANIdentifier>\s*([^<\s]+)")


def looks_like_medcom(data: bytes) -> bool:
    head = data[:4096]
    return any(marker in head for marker in _SNIFF)


def document_of(channel: str, raw: bytes) -> bytes | None:
    """The MedCom document a stored message carries: an HTTP submission's body, or a mail part of an XML
    or FHIR type (or named .xml / .json) that reads as one. None for ordinary mail."""
    if channel == "http":
        return raw
    return document_in(content.read(raw)) if may_carry_document(raw) else None


def may_carry_document(raw: bytes) -> bool:
    """Whether a mail's headers leave room for a document part: most mail is read no further."""
    header_end = raw.find(b"\r\n\r\n")
    header = raw[: header_end if header_end >= 0 else 4096].lower()
    return b"multipart" in header or b"xml" in header or b"json" in header


def document_in(mail: content.Mail) -> bytes | None:
    """The first part of the mail, as already parsed, that reads as a MedCom document."""
    for part in mail.message.walk():  # bounded in depth; never raises
        if part.is_multipart():
            continue
        try:
            name = (readable(part.get_filename()) or "").lower()
            payload = part.get_payload(decode=True)
        except Exception:  # noqa: S112  (a part whose name or payload cannot be read is no document)
            continue
        if part.get_content_type() not in DOCUMENT_TYPES and not name.endswith((".xml", ".json")):
            continue
        if isinstance(payload, bytes) and looks_like_medcom(payload):
            return payload
    return None


@dataclass(frozen=True)
class Outcome:
    """What happened to one letter, for the answer."""

    letter: Letter
    refusal: MedcomError | None = None
    referral_id: int | None = None
    duplicate_of_message: int | None = None


# What `prepare` reads, built once: it runs for every message routed.
_SUBMITTED = select(messages.c.raw).where(messages.c.id == bindparam("id"), messages.c.channel == "http")


class MedcomIntake:
    def __init__(
        self, settings: MedcomSettings, rules: RuleBook, senders: SenderKinds, from_address: str
    ) -> None:
        self.settings = settings
        self.schemas = Schemas(settings.schema_dir) if settings.schema_dir else None
        self.limits = Limits(settings.max_document_bytes, settings.max_depth, settings.max_nodes)
        self._prepared: OrderedDict[int, Document | MedcomError] = OrderedDict()
        self._prepared_lock = threading.Lock()
        self.rules = rules
        self.senders = senders
        self.from_address = from_address
        self.us = Party(
            ean=settings.ean, identifier=settings.ean, identifier_code="lokationsnummer", name=settings.name
        )

    def read(self, data: bytes) -> Document:
        return parse(data, schemas=self.schemas, limits=self.limits)

    def _read_or_refuse(self, data: bytes) -> Document | MedcomError:
        """The document, or its refusal as a value: a refusal is a fact about the content. It is kept
        without traceback or chained cause, whose frames would hold the whole document alive in a cycle."""
        try:
            return self.read(data)
        except MedcomError as refusal:
            refusal.__cause__ = refusal.__context__ = None
            return refusal.with_traceback(None)

    def prepare(self, store: Store, message_id: int) -> None:
        """Parse the stored message's document before the route step's write transaction, in a read of its
        own: parsing and validating a large document then never holds SQLite's write lock. `route` takes
        the result; without it (a restart, another process) `route` parses by itself. Only a submission
        over HTTP is read here: a mail is parsed once, by the route step, which finds any document in it."""
        with store.read() as conn:
            data = conn.execute(_SUBMITTED, {"id": message_id}).scalar()
        if data is None:
            return
        result = self._read_or_refuse(data)
        with self._prepared_lock:
            self._prepared[message_id] = result
            while len(self._prepared) > PREPARED:
                self._prepared.popitem(last=False)

    def _document(self, message_id: int, data: bytes) -> Document | MedcomError:
        """The prepared document of this message (or its refusal), else `data` parsed now."""
        with self._prepared_lock:
            prepared = self._prepared.pop(message_id, None)
        return prepared if prepared is not None else self._read_or_refuse(data)

    def route(
        self, conn: Connection, message: Any, data: bytes, now: datetime, router: Router
    ) -> list[Follow]:
        """Route every letter of the document in `message`; returns the work that follows."""
        document = self._document(message.id, data)
        if isinstance(document, MedcomError):
            refusal = document
            log.warning(
                "MedCom document refused",
                message=message.id,
                code=refusal.refuse_code,
                reason=refusal.reason,
                why=refusal.text,
            )
            return self._refuse_unread(conn, message, data, refusal, now)
        if document.is_acknowledgement:
            for letter in document.letters:
                self._record(conn, message, document, letter, self._sender_key(letter.sender, message), now)
            log.info("MedCom acknowledgement received", message=message.id, kind=document.letters[0].kind)
            return []
        key = self._sender_key(document.letters[0].sender, message)
        reused = self._reused_envelope(conn, key, document, message.id)
        follow: list[Follow] = []
        outcomes: list[Outcome] = []
        for letter in document.letters:
            row_id = self._record(conn, message, document, letter, key, now)
            if reused:
                outcomes.append(
                    Outcome(letter, MedcomError("ikke_specificeret", reused, letter_id=letter.identifier))
                )
                continue
            first = conn.execute(
                insert_ignoring_duplicates(conn, medcom_first_letters)
                .values(sender=key, letter_id=letter.identifier[:64], first=row_id)
                .returning(medcom_first_letters.c.first)
            ).scalar_one_or_none()
            if first is None:
                outcomes.append(self._duplicate(conn, message, key, letter, row_id, now))
                continue
            if not self._addressed_to_us(letter.receiver):
                receiver = letter.receiver.identifier or letter.receiver.ean
                unknown = MedcomError(
                    "problem_med_modtagerID",
                    f"Modtageren {receiver} er ikke den fælles postkasse.",
                    letter_id=letter.identifier,
                )
                outcomes.append(Outcome(letter, unknown))
                continue
            referral_id = self._reply_or_route(conn, message, letter, now, router, follow)
            conn.execute(
                update(medcom_letters).where(medcom_letters.c.id == row_id).values(referral_id=referral_id)
            )
            outcomes.append(Outcome(letter, None, referral_id))
        follow += self._answer(conn, message, document, outcomes, now)
        return follow

    # --- letters --------------------------------------------------------------------------------

    def _sender_key(self, sender: Party, message: Any) -> str:
        """Whose identifiers these are: MedCom ids are unique per sender."""
        return (sender.ean or sender.identifier or message.mail_from or "unknown")[:64]

    def _record(
        self, conn: Connection, message: Any, document: Document, letter: Letter, key: str, now: datetime
    ) -> int:
        row_id: int = conn.execute(
            medcom_letters.insert()
            .values(
                message_id=message.id,
                sender=key,
                envelope_id=document.envelope_id[:64],
                letter_id=letter.identifier[:64],
                kind=letter.kind[:32],
                created_at=now,
                thread=letter.thread[:128] if letter.thread else None,
            )
            .returning(medcom_letters.c.id)
        ).scalar_one()
        return row_id

    def _reused_envelope(self, conn: Connection, key: str, document: Document, message_id: int) -> str | None:
        """A sentence when this sender used the envelope id before for other letters."""
        earlier = set(
            conn.execute(
                select(medcom_letters.c.letter_id).where(
                    medcom_letters.c.sender == key,
                    medcom_letters.c.envelope_id == document.envelope_id[:64],
                    medcom_letters.c.message_id != message_id,
                )
            ).scalars()
        )
        if earlier and earlier != {letter.identifier for letter in document.letters}:
            return (
                f"Kuvertnummeret {document.envelope_id} er allerede brugt til andre breve; send med et nyt."
            )
        return None

    def _duplicate(
        self, conn: Connection, message: Any, key: str, letter: Letter, row_id: int, now: datetime
    ) -> Outcome:
        first = conn.execute(
            select(medcom_letters.c.id, medcom_letters.c.message_id, medcom_letters.c.referral_id)
            .join(medcom_first_letters, medcom_first_letters.c.first == medcom_letters.c.id)
            .where(
                medcom_first_letters.c.sender == key,
                medcom_first_letters.c.letter_id == letter.identifier[:64],
            )
        ).one()
        conn.execute(
            update(medcom_letters)
            .where(medcom_letters.c.id == row_id)
            .values(duplicate_of=first.id, referral_id=first.referral_id)
        )
        if first.referral_id is not None:
            referrals.note_duplicate(conn, first.referral_id, message.id, now)
        log.info("MedCom duplicate", message=message.id, first_message=first.message_id)
        return Outcome(letter, None, first.referral_id, first.message_id)

    def _thread_referral(self, conn: Connection, thread: str, message_id: int) -> int | None:
        """The referral whose MedCom conversation this thread is (its first letter in the thread)."""
        referral_id: int | None = conn.execute(
            select(medcom_letters.c.referral_id)
            .where(
                medcom_letters.c.thread == thread[:128],
                medcom_letters.c.referral_id.is_not(None),
                medcom_letters.c.message_id != message_id,
            )
            .order_by(medcom_letters.c.id)
            .limit(1)
        ).scalar_one_or_none()
        return referral_id

    def _addressed_to_us(self, receiver: Party) -> bool:
        if receiver.identifier_code == "kommunenummer":
            return receiver.municipality is not None
        if not self.settings.receivers:
            return True
        return any(i in self.settings.receivers for i in (receiver.ean, receiver.identifier) if i)

    def _reply_or_route(
        self,
        conn: Connection,
        message: Any,
        letter: Letter,
        now: datetime,
        router: Router,
        follow: list[Follow],
    ) -> int:
        """A letter from the referral's own sender that names one of our references, or continues the
        referral's MedCom thread, joins its correspondence; any other letter becomes a referral of its own."""
        answered = referral_from_reference(f"{letter.subject or ''}\n{letter.text}")
        if answered is None and letter.thread:
            answered = self._thread_referral(conn, letter.thread, message.id)
        if answered is not None and correspondence.sent_by(conn, answered, message.mail_from):
            correspondence.attach_reply(
                conn, answered, message.id, letter.sender.name or message.mail_from, letter.text.strip(), now
            )
            return answered
        found = facts(letter)
        decision: Decision = router.decide_facts(conn, found, message.received_at)
        kind = (
            "gp"
            if letter.sender.identifier_code == "ydernummer"
            else self.senders.classify(message.mail_from)
        )
        if found.subject is None:
            found = replace(found, subject=letter.kind)
        referral_id = referrals.create(
            conn,
            referrals.decided(
                message.id, message.received_at, decision, found, self.rules, kind, letter.identifier[:64]
            ),
            now,
        )
        if found.urgent:
            follow.append((kinds.URGENT, referral_id))
        return referral_id

    # --- the committee writes back ---------------------------------------------------------------

    def write(
        self, conn: Connection, referral_id: int, text: str, now: datetime
    ) -> tuple[list[Follow], int | None] | None:
        """A committee's message to the sender of a MedCom referral, as MedCom: an XDIS91 ClinicalEmail to an
        OIOXML sender, a CareCommunication reply to a FHIR one, by the channel the referral came in on.
        None when the referral did not come as MedCom. Returns the work and the outgoing mail, if any."""
        origin = conn.execute(
            select(
                messages.c.id,
                messages.c.channel,
                messages.c.mail_from,
                messages.c.message_id,
                messages.c.raw,
                medcom_letters.c.letter_id,
                referrals_table.c.cpr,
                referrals_table.c.patient_name,
            )
            .join(medcom_letters, medcom_letters.c.message_id == messages.c.id)
            .join(referrals_table, referrals_table.c.id == medcom_letters.c.referral_id)
            .where(medcom_letters.c.referral_id == referral_id, medcom_letters.c.duplicate_of.is_(None))
            .order_by(medcom_letters.c.id)
            .limit(1)
        ).one_or_none()
        if origin is None:
            return None
        data = document_of(origin.channel, origin.raw)
        if data is None:
            return None
        document = self.read(data)
        letter = next(item for item in document.letters if item.identifier[:64] == origin.letter_id)
        reference = reference_of(referral_id)
        if document.format == "oioxml":
            body = answers.clinical_email(
                original=document,
                letter_ref=letter,
                us=self.us,
                to=letter.sender,
                cpr=origin.cpr or letter.cpr or "",
                patient_name=origin.patient_name or letter.patient_name,
                subject=f"Svar fra koordinationsudvalget [{reference}]",
                text=text,
                envelope_id=answers.new_identifier(),
                letter_id=answers.new_identifier(),
                now=now,
            )
            kind = "XDIS91"
        else:
            body = answers.care_communication_reply(
                original=document,
                us_sor=self.settings.sor or self.settings.ean,
                us_name=self.settings.name,
                text=text,
                now=now,
                topic=reference,
                thread_identifier=letter.thread,
            )
            kind = "CareCommunication"
        follow = self._deliver(
            conn,
            origin,
            kind,
            "ok",
            body,
            document.content_type,
            referral_id,
            now,
            mail_kind="committee_message",
        )
        outgoing_id = follow[0][1] if follow else None  # ("send", outgoing id) when it went by mail
        return follow, outgoing_id

    # --- answers --------------------------------------------------------------------------------

    def _answer(
        self,
        conn: Connection,
        message: Any,
        document: Document,
        outcomes: Sequence[Outcome],
        now: datetime,
    ) -> list[Follow]:
        refusals = [o.refusal for o in outcomes if o.refusal is not None]
        accepted = [o for o in outcomes if o.refusal is None]
        # A duplicate is answered as its first copy was: positively when that was, or if it was not asked.
        repeated_refusal = [o for o in accepted if o.duplicate_of_message and self._first_refused(conn, o)]
        accepted = [o for o in accepted if o not in repeated_refusal]
        referral_id = next((o.referral_id for o in outcomes if o.referral_id), None)
        follow: list[Follow] = []
        if document.format == "oioxml":
            if refusals:
                body = answers.negative_receipt(
                    document,
                    refusals,
                    us=self.us,
                    envelope_id=answers.new_identifier(),
                    letter_id=answers.new_identifier(),
                    now=now,
                )
                follow += self._deliver(
                    conn,
                    message,
                    "XCTL02",
                    refusals[0].refuse_code,
                    body,
                    document.content_type,
                    referral_id,
                    now,
                )
            wants = document.wants_positive_receipt or any(o.duplicate_of_message for o in accepted)
            if accepted and wants:
                body = answers.positive_receipt(
                    document,
                    us=self.us,
                    envelope_id=answers.new_identifier(),
                    letter_id=answers.new_identifier(),
                    now=now,
                    letter_ids=[o.letter.identifier for o in accepted],
                )
                follow += self._deliver(
                    conn, message, "XCTL03", "ok", body, document.content_type, referral_id, now
                )
            return follow
        code: Literal["ok", "fatal-error"] = "ok" if not refusals and not repeated_refusal else "fatal-error"
        issue = "; ".join(r.text for r in refusals) or None
        if code != "ok" and issue is None:
            issue = "Beskeden blev afvist, da den blev modtaget første gang."
        body = answers.fhir_acknowledgement(
            document,
            code=code,
            issue=issue,
            us_sor=self.settings.sor or self.settings.ean,
            us_name=self.settings.name,
            now=now,
        )
        return self._deliver(
            conn, message, "Acknowledgement", code, body, document.content_type, referral_id, now
        )

    def _first_refused(self, conn: Connection, outcome: Outcome) -> bool:
        codes = set(
            conn.execute(
                select(medcom_answers.c.code).where(
                    medcom_answers.c.message_id == outcome.duplicate_of_message
                )
            ).scalars()
        )
        return bool(codes) and "ok" not in codes

    def _refuse_unread(
        self, conn: Connection, message: Any, data: bytes, refusal: MedcomError, now: datetime
    ) -> list[Follow]:
        """A document we could not read: MedCom's negative receipt when it can name the original, else
        the refusal in words, by the same channel. The message itself stays stored."""
        ean = _SENDER_EAN.search(data[:65536])
        if data.lstrip()[:1] == b"<" and b"Emessage" in data[:4096]:
            try:
                body = answers.negative_receipt(
                    None,
                    refusal,
                    us=self.us,
                    envelope_id=answers.new_identifier(),
                    letter_id=answers.new_identifier(),
                    now=now,
                    original_sender=Party(ean=ean.group(1).decode("ascii", "replace")) if ean else None,
                    original_receiver=self.us,
                )
                return self._deliver(
                    conn, message, "XCTL02", refusal.refuse_code, body, "application/xml", None, now
                )
            except answers.ReceiptImpossible:
                pass
        body = json.dumps(
            {"code": refusal.refuse_code, "reason": refusal.reason, "detail": refusal.text},
            ensure_ascii=False,
        ).encode()
        return self._deliver(
            conn, message, "refusal", refusal.refuse_code, body, "application/json", None, now
        )

    def _deliver(
        self,
        conn: Connection,
        message: Any,
        kind: str,
        code: str,
        body: bytes,
        content_type: str,
        referral_id: int | None,
        now: datetime,
        mail_kind: str = "medcom_answer",
    ) -> list[Follow]:
        """Store the answer; by mail it goes back to the envelope sender attached to a reply, over HTTP the
        sender fetches it (GET /api/v1/messages/{id}/answers)."""
        outgoing_id: int | None = None
        follow: list[Follow] = []
        if message.channel != "http" and message.mail_from:
            mail = compose.medcom_answer(
                from_address=self.from_address,
                to=message.mail_from,
                kind=kind,
                body=body,
                content_type=content_type,
                in_reply_to=message.message_id,
            )
            outgoing_id = outgoing.add(
                conn,
                mail_kind,
                mail,
                recipient=message.mail_from,
                referral_id=referral_id,
                answers_message=message.id,
                now=now,
            )
            follow.append((kinds.SEND, outgoing_id))
        conn.execute(
            medcom_answers.insert().values(
                message_id=message.id,
                referral_id=referral_id,
                kind=kind,
                code=code,
                content_type=content_type,
                body=body,
                recipient=message.mail_from or "<>",
                outgoing_id=outgoing_id,
                created_at=now,
            )
        )
        return follow
