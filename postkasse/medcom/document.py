"""A MedCom message as postkasse reads it: the envelope (OIOXML `Emessage`, or a FHIR message Bundle) and
its letters (OIOXML letters, or the one FHIR message), each with the parties and the patient.

The same model serves both formats, so routing, duplicates and answers do not care which one came in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from postkasse.address import Address

Format = Literal["oioxml", "fhir-xml", "fhir-json"]

# MedCom's refusal codes for an OIOXML NegativeReceipt (XCTL02).
REFUSE_CODES = (
    "ikke_specificeret",
    "ukendt_lokationsnummer",
    "problem_med_modtagerID",
    "problem_med_version",
    "syntaksfejl",
)


class MedcomError(Exception):
    """A document MedCom's rules say to refuse, with the refusal code and a sentence for the sender.

    `envelope_id` and `letter_id` are set when they could still be read, so the refusal can name them.
    `reason` is a stable name for the cause, finer than MedCom's five codes (`too_many_nodes`,
    `json_duplicate_key`, ...), for the sender's JSON answer, the log and the operator; the text never
    quotes a value from the document."""

    def __init__(
        self,
        refuse_code: str,
        text: str,
        *,
        envelope_id: str | None = None,
        letter_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(text)
        if refuse_code not in REFUSE_CODES:
            raise ValueError(f"unknown refuse code {refuse_code!r}")
        self.refuse_code = refuse_code
        self.reason = reason or refuse_code
        self.text = text
        self.envelope_id = envelope_id
        self.letter_id = letter_id


@dataclass(frozen=True)
class Party:
    """A sender or receiver. `identifier_code` is OIOXML's (ydernummer, sygehusafdelingsnummer, sorkode,
    lokationsnummer, kommunenummer); a FHIR party says `sorkode` for a SOR id, `lokationsnummer` for a GLN."""

    ean: str | None = None  # EANIdentifier / GLN: the location number
    identifier: str | None = None
    identifier_code: str | None = None
    name: str | None = None  # organisation, and department where given

    @property
    def municipality(self) -> str | None:
        """The four-digit municipality code when the party is named by `kommunenummer`."""
        if self.identifier_code == "kommunenummer" and self.identifier:
            digits = self.identifier.strip()
            if digits.isdigit() and len(digits) <= 4:
                return digits.zfill(4)
        return None


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str | None
    size: int


@dataclass(frozen=True)
class Letter:
    """One OIOXML letter, or a FHIR message (MessageHeader and what it points to)."""

    kind: str  # XREF01, XDIS01, XDIS91, CareCommunication, HospitalNotification, ... (the statistical code)
    identifier: str  # Letter/Identifier, or MessageHeader.id
    version_code: str | None  # OIOXML VersionCode (e.g. XH0130R); None for FHIR
    sender: Party
    receiver: Party
    cpr: str | None = None  # as written: ten digits
    patient_name: str | None = None
    address: Address | None = None
    subject: str | None = None
    text: str = ""  # the clinical text or communication, with line breaks
    priority: str | None = None  # as written, e.g. "akut", "høj_prioritet", "elektiv", "asap"
    urgent: bool = False
    status_code: str | None = None  # OIOXML nytbrev / rettetbrev / ...
    event: str | None = None  # FHIR MessageHeader.eventCoding.code
    thread: str | None = None  # FHIR Communication.identifier: MedCom keeps it across a conversation
    attachments: tuple[Attachment, ...] = ()
    # For an acknowledgement or receipt: what it answers, and its verdict.
    answers_envelope: str | None = None
    answers_letter: str | None = None
    response_code: str | None = None  # FHIR ok / transient-error / fatal-error; OIOXML the RefuseCode


@dataclass(frozen=True)
class Document:
    format: Format
    envelope_id: str  # Envelope/Identifier, or Bundle.id
    sent: str | None  # as written (OIOXML date and time; FHIR Bundle.timestamp)
    acknowledgement_code: str | None  # OIOXML pluspositivkvitt / minuspositivkvitt; None for FHIR
    namespace: str | None  # the OIOXML schema namespace, or FHIR's
    letters: tuple[Letter, ...] = field(default=())

    @property
    def is_acknowledgement(self) -> bool:
        """An XCTL01/02/03 receipt or a FHIR Acknowledgement: never answered, never a referral."""
        return any(letter.kind in ACKNOWLEDGEMENT_KINDS for letter in self.letters)

    @property
    def wants_positive_receipt(self) -> bool:
        return self.acknowledgement_code == "pluspositivkvitt"

    @property
    def content_type(self) -> str:
        """The media type its answers are sent as: the format it came in."""
        return CONTENT_TYPES[self.format]


CONTENT_TYPES = {
    "oioxml": "application/xml",
    "fhir-xml": "application/fhir+xml",
    "fhir-json": "application/fhir+json",
}


ACKNOWLEDGEMENT_KINDS = frozenset({"XCTL01", "XCTL02", "XCTL03", "Acknowledgement"})
