"""MedCom's answers to a message, and the committee's letters back to the sender, as bytes ready to send.

OIOXML: the XCTL03 PositiveReceipt and XCTL02 NegativeReceipt, and the XDIS91 ClinicalEmail, encoded
windows-1252 like MedCom's own samples. FHIR: the Acknowledgement message and a CareCommunication reply, as
XML or JSON like the original. Everything is built as a tree (lxml, or dicts for FHIR JSON), so every text
is escaped by the serialiser. Receipts and acknowledgements name envelopes, letters and organisations only:
they never carry a CPR number or a name, whatever the original held.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from lxml import etree  # type: ignore[import-untyped]

from postkasse.medcom.document import Document, Letter, MedcomError, Party
from postkasse.medcom.parse import CPR_SYSTEM, FHIR_NAMESPACE, SOR_SYSTEM, XHTML_NAMESPACE

Json = dict[str, Any]
AckCode = Literal["ok", "transient-error", "fatal-error"]

COPENHAGEN = ZoneInfo("Europe/Copenhagen")  # MedCom writes Danish local time
OIOXML_BASE = "http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/"
NS_2005 = OIOXML_BASE + "2005/08/07/"
NS_2006 = OIOXML_BASE + "2006/07/01/"
# Only the 2005/08/07 schemas define PositiveReceipt and NegativeReceipt; 2006/07/01 and 2007/02/01 define
# no receipt at all, so a letter in those namespaces is receipted in the 2005/08/07 one.
RECEIPT_NAMESPACES = frozenset({NS_2005})
# ClinicalEmail exists in these two, each with its own fixed VersionCode.
CLINICAL_EMAIL_VERSIONS = {NS_2005: "XD9133L", NS_2006: "XD9134L"}
OIOXML_ENCODING = "windows-1252"
IDENTIFIER_CODES = {
    NS_2005: frozenset(
        {"sygehusafdelingsnummer", "ydernummer", "lokationsnummer", "kommunenummer", "sorkode"}
    ),
    NS_2006: frozenset(
        {"sygehusafdelingsnummer", "ydernummer", "lokationsnummer", "kommunenummer", "amt", "sorkode"}
    ),
}
MAX_IDENTIFIER = 14  # String_1_14: envelope and letter identifiers
MAX_ORIGINAL_LETTERS = 99  # OriginalLetter maxOccurs

GLN_SYSTEM = "https://www.gs1.org/gln"  # the one of parse.GLN_SYSTEMS MedCom's samples write
REPLACEMENT_CPR_SYSTEM = "urn:oid:1.2.208.176.1.6.1.1"
SOR_ENDPOINT = "https://sor2.sum.dsdn.dk/#id="
UNKNOWN_ENDPOINT = (
    "http://medcomfhir.dk/unknown"  # what MedCom's own examples write when the SOR id is unknown
)
IG = "http://medcomfhir.dk/ig/"
EVENT_SYSTEM = IG + "terminology/CodeSystem/medcom-messaging-eventCodes"
ACTIVITY_SYSTEM = IG + "terminology/CodeSystem/medcom-messaging-activityCodes"
DESTINATION_USE_URL = IG + "messaging/StructureDefinition/medcom-messaging-destinationUseExtension"
DESTINATION_USE_SYSTEM = IG + "terminology/CodeSystem/medcom-messaging-destinationUse"
ACK_ERROR_SYSTEM = IG + "terminology/CodeSystem/medcom-acknowledgement-error-codes"
HL7_OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/operation-outcome"
CATEGORY_SYSTEM = IG + "terminology/CodeSystem/medcom-careCommunication-categoryCodes"
CORE_EXTENSION = IG + "core/StructureDefinition/medcom-core-"
ORGANIZATION_PROFILE = IG + "messaging/StructureDefinition/medcom-messaging-organization"
ACK_BUNDLE_PROFILE = IG + "acknowledgement/StructureDefinition/medcom-messaging-acknowledgement"
ACK_HEADER_PROFILE = IG + "acknowledgement/StructureDefinition/medcom-messaging-acknowledgementHeader"
ACK_OUTCOME_PROFILE = IG + "acknowledgement/StructureDefinition/medcom-acknowledgement-operationoutcome"
MESSAGING_PROVENANCE_PROFILE = IG + "messaging/StructureDefinition/medcom-messaging-provenance"
CC_PROFILE = IG + "carecommunication/StructureDefinition/medcom-careCommunication-"
CORE_PROFILE = IG + "core/StructureDefinition/medcom-core-"
CC_DEFINITION = IG + "messagedefinitions/MessageDefinition/MedComCareCommunicationMessageDefinition|5.0"
ACK_FULL_URL = "https://medcomfhir.dk/ig/acknowledgement/"
CC_FULL_URL = "https://medcomfhir.dk/ig/carecommunication/"
# MedCom's own acknowledgement error codes; any other issue code is taken to be HL7's operation-outcome code.
MEDCOM_ACK_ERRORS = frozenset(
    {
        "MSG_Receiver_Identifier_UNKNOWN",
        "MSG_Receiver_Identifier_MISSING",
        "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE",
        "MSG_VALUESET_VALUE_UNKNOWN",
        "MSG_CodeSystem_VALUE_UNKNOWN",
        "MSG_Element_To_Long",
        "MSG_Datatype_Wrong",
        "MSG_Mailbox_Out_Of_Operation",
        "MSG_Damaged_durin_transport",
    }
)

_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class ReceiptImpossible(ValueError):
    """MedCom's receipt schema requires what is missing here (the original envelope id, or a location number
    to address): no XCTL receipt can be built, so the refusal goes back by the channel itself instead."""


@dataclass(frozen=True)
class Author:
    """Who in the committee wrote a CareCommunication reply: MedCom wants an author, a role and a phone."""

    name: str
    role: str
    phone: str | None = None


def new_identifier() -> str:
    """A fresh envelope or letter identifier of exactly 14 characters (the schemas' String_1_14 limit).

    Eight base-36 digits of the time in milliseconds (cycling every 89 years) keep identifiers roughly in
    order and apart across restarts; six random base-36 digits (2 billion values) keep processes that write
    in the same millisecond apart. Upper case only, so systems that fold case do not make two into one."""
    millis = time.time_ns() // 1_000_000 % 36**8
    return _base36(millis, 8) + _base36(secrets.randbelow(36**6), 6)


def positive_receipt(
    original: Document,
    *,
    us: Party,
    envelope_id: str,
    letter_id: str,
    now: datetime,
    letter_ids: Collection[str] | None = None,
) -> bytes:
    """XCTL03: the letters of `original` were received (all, or those in `letter_ids` when some were refused
    by an XCTL02). The receipt itself asks for no receipt (minuspositivkvitt)."""
    _require_answerable_oioxml(original)
    if not original.letters:
        raise ReceiptImpossible("the original has no letter, so no sender to receipt to")
    first = original.letters[0]
    letters = [x for x in original.letters if letter_ids is None or x.identifier in letter_ids]
    for letter in letters:
        if not _fits(letter.identifier, MAX_IDENTIFIER) or not _fits(letter.version_code, 7):
            raise ReceiptImpossible(f"letter {letter.identifier!r} cannot be named in a receipt")
    if len(letters) > MAX_ORIGINAL_LETTERS:
        raise ReceiptImpossible(f"a receipt names at most {MAX_ORIGINAL_LETTERS} letters")
    sender_ean = _answer_ean(first.sender, "the original sender")
    root, body = _receipt(
        "PositiveReceipt",
        "XC0330Q",
        "XCTL03",
        original.namespace,
        us,
        sender_ean,
        envelope_id,
        letter_id,
        now,
    )
    emessage = _original_emessage(
        body, _original_envelope(original.envelope_id), sender_ean, first.receiver.ean or _our_ean(us)
    )
    for letter in letters:
        _original_letter(emessage, letter.identifier, letter.version_code or "")
    return _oioxml_bytes(root)


def negative_receipt(
    original: Document | None,
    refusals: MedcomError | Sequence[MedcomError],
    *,
    us: Party,
    envelope_id: str,
    letter_id: str,
    now: datetime,
    original_sender: Party | None = None,
    original_receiver: Party | None = None,
) -> bytes:
    """XCTL02: refuse an envelope, or some of its letters, with MedCom's RefuseCode and a text for a person.

    A refusal whose `letter_id` is set refuses that letter (OriginalLetter/RefuseCode); one without refuses
    the envelope (OriginalEmessage/RefuseCode), and then every letter of the original is listed. `original` is
    None when the document could not be read: then the envelope id comes from the errors, and the sender from
    `original_sender` (e.g. the party an HTTP token belongs to). A letter refusal that cannot name its letter
    (not in `original`, or with an identifier or version the schema cannot hold) is folded into the envelope
    refusal with the letter id in the text: nothing was accepted from such a document. Raises
    ReceiptImpossible when the schema's required envelope id or sender location number is
    unknown."""
    errors = [refusals] if isinstance(refusals, MedcomError) else list(refusals)
    if not errors:
        raise ValueError("a negative receipt needs at least one refusal")
    if original is not None:
        _require_answerable_oioxml(original)
    first = original.letters[0] if original is not None and original.letters else None
    known_id = original.envelope_id if original is not None else None
    env_id = known_id or next((e.envelope_id for e in errors if e.envelope_id), None)
    sender = original_sender or (first.sender if first else None)
    receiver = original_receiver or (first.receiver if first else None)
    sender_ean = _answer_ean(sender, "the original sender")
    receiver_ean = (receiver.ean if receiver else None) or _our_ean(us)

    versions = {x.identifier: x.version_code for x in original.letters} if original is not None else {}
    envelope_errors: list[MedcomError] = []
    letter_errors: dict[str, list[MedcomError]] = {}
    for error in errors:
        nameable = error.letter_id is not None and _fits(error.letter_id, MAX_IDENTIFIER)
        if nameable and _fits(versions.get(error.letter_id or ""), 7):
            letter_errors.setdefault(error.letter_id or "", []).append(error)
        else:
            envelope_errors.append(error)

    namespace = original.namespace if original is not None else None
    root, body = _receipt(
        "NegativeReceipt", "XC0230Q", "XCTL02", namespace, us, sender_ean, envelope_id, letter_id, now
    )
    emessage = _original_emessage(body, _original_envelope(env_id), sender_ean, receiver_ean)
    if envelope_errors:
        _refusal(emessage, envelope_errors, name_letters=True)
    listed = [x.identifier for x in original.letters] if envelope_errors and original is not None else []
    listed += [x for x in letter_errors if x not in listed]
    if len(listed) > MAX_ORIGINAL_LETTERS:
        raise ReceiptImpossible(f"a receipt names at most {MAX_ORIGINAL_LETTERS} letters")
    for identifier in listed:
        version = versions.get(identifier)
        if not _fits(identifier, MAX_IDENTIFIER) or not _fits(version, 7):
            continue  # the envelope refusal covers it; the schema cannot name it
        letter = _original_letter(emessage, identifier, version or "")
        if identifier in letter_errors:
            _refusal(letter, letter_errors[identifier], name_letters=False)
    return _oioxml_bytes(root)


def fhir_acknowledgement(
    original: Document,
    *,
    code: AckCode,
    issue: str | None,
    us_sor: str,
    us_name: str,
    now: datetime,
    as_json: bool | None = None,
    issue_code: str | None = None,
) -> bytes:
    """A MedCom Acknowledgement message for a FHIR message: `response.identifier` is the original's
    MessageHeader.id, with new Bundle.id and MessageHeader.id each time (a duplicate gets the same content
    under new ids). When not ok, `issue` is the OperationOutcome's text and `issue_code` an optional code from
    MedCom's acknowledgement error codes (or HL7's operation-outcome codes). `as_json` None answers in the
    original's format. An acknowledgement is never acknowledged."""
    if not original.format.startswith("fhir"):
        raise ValueError("an OIOXML document is answered with an XCTL receipt, not a FHIR acknowledgement")
    if original.is_acknowledgement:
        raise ValueError("an acknowledgement is never acknowledged")
    if code not in ("ok", "transient-error", "fatal-error"):
        raise ValueError(f"unknown response code {code!r}")
    if code == "ok" and (issue or issue_code):
        raise ValueError("an ok acknowledgement carries no issue")
    if code != "ok" and not issue:
        raise ValueError("an acknowledgement that is not ok needs the issue's text")
    if not original.letters:
        raise ValueError("the original has no MessageHeader to acknowledge")
    acked = original.letters[0]

    bundle_id, header_id, provenance_id = _uuid(), _uuid(), _uuid()
    us_org, them_org, outcome_id = _uuid(), _uuid(), _uuid()
    stamp = _fhir_time(now)
    response: Json = {"identifier": acked.identifier, "code": code}
    if code != "ok":
        response["details"] = {"reference": f"OperationOutcome/{outcome_id}"}
    header: Json = {
        "resourceType": "MessageHeader",
        "id": header_id,
        "meta": {"profile": [ACK_HEADER_PROFILE]},
        "text": _narrative(f"Kvittering ({code}) for meddelelse {acked.identifier}"),
        "eventCoding": {"system": EVENT_SYSTEM, "code": "acknowledgement-message"},
        "destination": [_destination(acked.sender, them_org)],
        "sender": {"reference": f"Organization/{us_org}"},
        "source": {"endpoint": SOR_ENDPOINT + us_sor},
        "response": response,
    }
    provenance: Json = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"profile": [MESSAGING_PROVENANCE_PROFILE]},
        "text": _narrative(f"Kvittering sendt for meddelelse {acked.identifier}"),
        "target": [{"reference": f"MessageHeader/{header_id}"}],
        "occurredDateTime": stamp,
        "recorded": stamp,
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": "acknowledgement"}]},
        "agent": [{"who": {"reference": f"Organization/{us_org}"}}],
        "entity": [{"role": "revision", "what": {"reference": f"MessageHeader/{acked.identifier}"}}],
    }
    resources = [
        header,
        provenance,
        _organization(us_org, gln=None, sor=us_sor, name=us_name),
        _organization(them_org, gln=acked.sender.ean, sor=_sor(acked.sender), name=acked.sender.name),
    ]
    if code != "ok":
        resources.append(_operation_outcome(outcome_id, code, issue or "", issue_code))
    bundle = _bundle(bundle_id, ACK_BUNDLE_PROFILE, stamp, ACK_FULL_URL, resources)
    return _fhir_bytes(bundle, _wants_json(original, as_json))


def clinical_email(
    *,
    original: Document | None,
    letter_ref: Letter | None,
    us: Party,
    to: Party,
    cpr: str,
    patient_name: str | None,
    subject: str,
    text: str,
    envelope_id: str,
    letter_id: str,
    now: datetime,
    namespace: str | None = None,
) -> bytes:
    """An XDIS91 ClinicalEmail (korrespondancebrev) from the committee to `to`, about the letter it answers.

    ClinicalEmail has no element that points at another letter (Reference is for links and attachments), so
    the answered letter is named in the first lines of the text. The namespace is `namespace`, else the
    answered letter's own when it is an XDIS91 (the sender demonstrably speaks that version), else 2006/07/01
    (XD9134L, the current XDIS91). The schema requires the patient's CPR and surname."""
    ns = namespace or _clinical_email_namespace(original, letter_ref or _first_letter(original))
    if ns not in CLINICAL_EMAIL_VERSIONS:
        raise ValueError(f"no ClinicalEmail in namespace {ns!r}")
    if not re.fullmatch(r"[0-9]{10}", cpr):
        raise ValueError("an XDIS91 needs a ten-digit CPR number")
    if not patient_name or not patient_name.strip():
        raise ValueError("an XDIS91 needs the patient's surname")
    answered = letter_ref or _first_letter(original)
    local = _local(now)

    root = _emessage(ns, envelope_id, local)
    email = _child(root, "ClinicalEmail")
    letter = _child(email, "Letter")
    _child(letter, "Identifier", _own_identifier(letter_id))
    _child(letter, "VersionCode", CLINICAL_EMAIL_VERSIONS[ns])
    _child(letter, "StatisticalCode", "XDIS91")
    _date_time(_child(letter, "Authorisation"), local)
    _child(letter, "TypeCode", "XDIS91")
    _child(letter, "StatusCode", "nytbrev")
    _party(email, "Sender", us, ns, organisation_required=True)
    _party(email, "Receiver", to, ns, organisation_required=False)
    patient = _child(email, "Patient")
    _child(patient, "CivilRegistrationNumber", cpr)
    surname, given = _split_name(patient_name)
    _child(patient, "PersonSurnameName", _truncate(surname, 70))
    if given:
        _child(patient, "PersonGivenName", _truncate(given, 70))
    _child(patient, "EpisodeOfCareStatusCode", "inaktiv")  # not admitted anywhere by us

    lines = []
    if ns == NS_2006 and subject.strip():
        _child(_child(email, "AdditionalInformation"), "Subject", _truncate(subject, 70))
    elif subject.strip():
        lines.append(f"Emne: {_one_line(subject)}")
    if answered is not None:
        lines.append(_answer_line(original, answered))
    body = "\n".join([*lines, "", text]) if lines else text
    _breakable(_child(email, "ClinicalInformation"), "Text01", body)
    return _oioxml_bytes(root)


def care_communication_reply(
    *,
    original: Document,
    us_sor: str,
    us_name: str,
    text: str,
    now: datetime,
    as_json: bool | None = None,
    category: str = "regarding-referral",
    topic: str | None = None,
    thread_identifier: str | None = None,
    author: Author | None = None,
) -> bytes:
    """A MedCom CareCommunication reply from the committee to the original's sender.

    The event stays care-communication-message; the Provenance says reply-message and points at the
    previous message (its MessageHeader for FHIR, `letter id#sender EAN` for OIOXML, as MedCom's examples do).
    `thread_identifier` is the original Communication.identifier (Letter.thread), which MedCom keeps across
    a conversation; without one (an OIOXML original) the reply starts a new thread. The Patient is minimal:
    the CPR (or replacement CPR) and the name as the Document has them."""
    if original.is_acknowledgement:
        raise ValueError("an acknowledgement is not answered with a CareCommunication")
    if not original.letters:
        raise ValueError("the original has no message to reply to")
    if category == "other" and not topic:
        raise ValueError("MedCom requires a topic when the category is 'other'")
    previous = original.letters[0]
    if not previous.cpr:
        raise ValueError("a CareCommunication needs the patient's CPR")

    bundle_id, header_id, patient_id, communication_id = _uuid(), _uuid(), _uuid(), _uuid()
    them_org, us_org, provenance_id, payload_id = _uuid(), _uuid(), _uuid(), "urn:uuid:" + _uuid()
    role_id, practitioner_id = _uuid(), _uuid()
    stamp = _fhir_time(now)

    header: Json = {
        "resourceType": "MessageHeader",
        "id": header_id,
        "meta": {"profile": [CC_PROFILE + "messageHeader"]},
        "text": _narrative(f"Svar på meddelelse {previous.identifier}"),
        "eventCoding": {"system": EVENT_SYSTEM, "code": "care-communication-message"},
        "destination": [_destination(previous.sender, them_org)],
        "sender": {"reference": f"Organization/{us_org}"},
        "source": {"endpoint": SOR_ENDPOINT + us_sor},
        "focus": [{"reference": f"Communication/{communication_id}"}],
        "definition": CC_DEFINITION,
    }
    payload_extensions: list[Json] = [
        {"url": CORE_EXTENSION + "datetime-extension", "valueDateTime": stamp},
        {
            "url": CORE_EXTENSION + "identifier-extension",
            "valueIdentifier": {"value": payload_id, "assigner": {"reference": f"Organization/{us_org}"}},
        },
    ]
    if author is not None:
        payload_extensions.append(
            {
                "url": CORE_EXTENSION + "practitioner-extension",
                "valueReference": {"reference": f"PractitionerRole/{role_id}"},
            }
        )
        if author.phone:
            payload_extensions.append(
                {
                    "url": CORE_EXTENSION + "contact-extension",
                    "valueContactPoint": {"system": "phone", "value": author.phone},
                }
            )
    communication: Json = {
        "resourceType": "Communication",
        "id": communication_id,
        "meta": {"profile": [CC_PROFILE + "communication"]},
        "text": _narrative(*(x for x in (topic, text) if x)),
        "identifier": [{"value": thread_identifier or "urn:uuid:" + _uuid()}],
        "status": "unknown",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if topic:
        communication["topic"] = {"text": _fhir_text(topic)}
    communication["payload"] = [{"extension": payload_extensions, "contentString": _fhir_text(text)}]

    if original.format.startswith("fhir"):
        preceding: Json = {"reference": f"MessageHeader/{previous.identifier}"}
    else:
        preceding = {"identifier": {"value": f"{previous.identifier}#{previous.sender.ean or ''}"}}
    provenance: Json = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"profile": [CC_PROFILE + "provenance"]},
        "text": _narrative(f"Svar på meddelelse {previous.identifier}"),
        "target": [{"reference": f"MessageHeader/{header_id}"}],
        "occurredDateTime": stamp,
        "recorded": stamp,
        "activity": {"coding": [{"system": ACTIVITY_SYSTEM, "code": "reply-message"}]},
        "agent": [{"who": {"reference": f"Organization/{us_org}"}}],
        "entity": [
            {"role": "revision", "what": preceding},
            {"role": "source", "what": {"identifier": {"value": payload_id}}},
        ],
    }
    resources = [header, _patient(patient_id, previous.cpr, previous.patient_name), communication]
    if author is not None:
        resources += _author_resources(role_id, practitioner_id, author)
    resources += [
        _organization(
            them_org, gln=previous.sender.ean, sor=_sor(previous.sender), name=previous.sender.name
        ),
        _organization(us_org, gln=None, sor=us_sor, name=us_name),
        provenance,
    ]
    bundle = _bundle(bundle_id, CC_PROFILE + "message", stamp, CC_FULL_URL, resources)
    return _fhir_bytes(bundle, _wants_json(original, as_json))


# OIOXML building blocks


def _require_answerable_oioxml(original: Document) -> None:
    if original.format != "oioxml":
        raise ValueError("an XCTL receipt answers an OIOXML document only")
    if original.is_acknowledgement:
        raise ValueError("a receipt is never receipted")


def _receipt(
    kind: str,
    version: str,
    statistical: str,
    original_namespace: str | None,
    us: Party,
    receiver_ean: str,
    envelope_id: str,
    letter_id: str,
    now: datetime,
) -> tuple[Any, Any]:
    """The Emessage root and the receipt element, with its Letter, Sender and Receiver written."""
    ns = original_namespace if original_namespace in RECEIPT_NAMESPACES else NS_2005
    root = _emessage(ns, envelope_id, _local(now))
    body = _child(root, kind)
    letter = _child(body, "Letter")
    _child(letter, "Identifier", _own_identifier(letter_id))
    _child(letter, "VersionCode", version)
    _child(letter, "StatisticalCode", statistical)
    _child(_child(body, "Sender"), "EANIdentifier", _our_ean(us))
    _child(_child(body, "Receiver"), "EANIdentifier", receiver_ean)
    return root, body


def _original_emessage(body: Any, envelope_id: str, sender_ean: str, receiver_ean: str) -> Any:
    emessage = _child(body, "OriginalEmessage")
    _child(emessage, "OriginalEnvelopeIdentifier", envelope_id)
    _child(_child(emessage, "OriginalSender"), "EANIdentifier", sender_ean)
    _child(_child(emessage, "OriginalReceiver"), "EANIdentifier", receiver_ean)
    return emessage


def _original_letter(emessage: Any, identifier: str, version: str) -> Any:
    letter = _child(emessage, "OriginalLetter")
    _child(letter, "OriginalLetterIdentifier", identifier)
    _child(letter, "OriginalVersionCode", version)
    return letter


def _refusal(parent: Any, errors: Sequence[MedcomError], *, name_letters: bool) -> None:
    """RefuseCode of the first error (the schema allows one) and all their texts, one per line; at envelope
    level a letter's refusal names the letter, since no OriginalLetter could."""
    _child(parent, "RefuseCode", errors[0].refuse_code)
    texts = []
    for error in errors:
        prefix = f"Brev {error.letter_id}: " if error.letter_id and name_letters else ""
        if error.text.strip():
            texts.append(prefix + error.text.strip())
    if texts:
        _breakable(parent, "RefuseText", "\n".join(texts))


def _original_envelope(identifier: str | None) -> str:
    if not identifier or not _fits(identifier, MAX_IDENTIFIER):
        raise ReceiptImpossible(
            "the original envelope id is unknown or longer than 14 characters; a made-up one could match "
            "another envelope of the sender's"
        )
    return identifier


def _answer_ean(party: Party | None, what: str) -> str:
    if party is None or not party.ean or not _fits(party.ean, 35):
        raise ReceiptImpossible(f"{what} has no location number (EANIdentifier) to address a receipt to")
    return party.ean


def _our_ean(us: Party) -> str:
    if not us.ean or not _fits(us.ean, 35):
        raise ValueError("our own Party needs a location number (EANIdentifier) of 1-35 characters")
    return us.ean


def _own_identifier(identifier: str) -> str:
    if not _fits(identifier, MAX_IDENTIFIER):
        raise ValueError(
            f"identifier {identifier!r} must be 1-{MAX_IDENTIFIER} characters (see new_identifier)"
        )
    return identifier


def _emessage(ns: str, envelope_id: str, local: datetime) -> Any:
    root = etree.Element(f"{{{ns}}}Emessage", nsmap={None: ns})
    envelope = _child(root, "Envelope")
    _date_time(_child(envelope, "Sent"), local)
    _child(envelope, "Identifier", _own_identifier(envelope_id))
    _child(envelope, "AcknowledgementCode", "minuspositivkvitt")
    return root


def _party(parent: Any, name: str, party: Party, ns: str, *, organisation_required: bool) -> None:
    """Sender or Receiver of a letter: EAN, Identifier + IdentifierCode (the EAN as lokationsnummer when the
    party has no identifier the schema accepts), and the name split into organisation and department."""
    if not party.ean or not _fits(party.ean, 35):
        raise ValueError(f"{name} needs a location number (EANIdentifier)")
    element = _child(parent, name)
    _child(element, "EANIdentifier", party.ean)
    if party.identifier and _fits(party.identifier, 17) and party.identifier_code in IDENTIFIER_CODES[ns]:
        _child(element, "Identifier", party.identifier)
        _child(element, "IdentifierCode", party.identifier_code)
    else:
        _child(element, "Identifier", party.ean[:17])
        _child(element, "IdentifierCode", "lokationsnummer")
    organisation, _, department = (party.name or "").partition(", ")
    if organisation.strip():
        _child(element, "OrganisationName", _truncate(organisation, 35))
        if department.strip():
            _child(element, "DepartmentName", _truncate(department, 35))
    elif organisation_required:
        raise ValueError(f"{name} needs an organisation name")


def _clinical_email_namespace(original: Document | None, answered: Letter | None) -> str:
    is_xdis91 = original is not None and answered is not None and answered.kind == "XDIS91"
    if is_xdis91 and original is not None and original.namespace in CLINICAL_EMAIL_VERSIONS:
        return original.namespace
    return NS_2006


def _first_letter(original: Document | None) -> Letter | None:
    return original.letters[0] if original is not None and original.letters else None


def _answer_line(original: Document | None, letter: Letter) -> str:
    parts = [f"Vedr. jeres brev {letter.identifier} ({letter.kind})"]
    if original is not None:
        parts.append(f"kuvert {original.envelope_id}")
        if original.sent:
            parts.append(f"sendt {original.sent}")
    return ", ".join(parts) + "."


def _child(parent: Any, name: str, text: str | None = None) -> Any:
    """A child in the parent's namespace: every OIOXML element is in the Emessage's one namespace."""
    element = etree.SubElement(parent, f"{{{etree.QName(parent).namespace}}}{name}")
    if text is not None:
        element.text = _xml_safe(text)
    return element


def _breakable(parent: Any, name: str, text: str) -> Any:
    """MedCom's formatted text: each line break becomes <Break/>."""
    element = _child(parent, name)
    lines = _xml_safe(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    element.text = lines[0]
    for line in lines[1:]:
        _child(element, "Break").tail = line
    return element


def _date_time(parent: Any, local: datetime) -> None:
    _child(parent, "Date", local.strftime("%Y-%m-%d"))
    _child(parent, "Time", local.strftime("%H:%M"))


def _oioxml_bytes(root: Any) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding=OIOXML_ENCODING))


# FHIR building blocks


def _bundle(bundle_id: str, profile: str, stamp: str, full_url: str, resources: Sequence[Json]) -> Json:
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"profile": [profile]},
        "type": "message",
        "timestamp": stamp,
        "entry": [{"fullUrl": f"{full_url}{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


def _destination(party: Party, organization_id: str) -> Json:
    sor = _sor(party)
    return {
        "extension": [
            {"url": DESTINATION_USE_URL, "valueCoding": {"system": DESTINATION_USE_SYSTEM, "code": "primary"}}
        ],
        "endpoint": SOR_ENDPOINT + sor if sor else UNKNOWN_ENDPOINT,
        "receiver": {"reference": f"Organization/{organization_id}"},
    }


def _organization(organization_id: str, *, gln: str | None, sor: str | None, name: str | None) -> Json:
    organization: Json = {
        "resourceType": "Organization",
        "id": organization_id,
        "meta": {"profile": [ORGANIZATION_PROFILE]},
        "text": _narrative(name or sor or gln or "Organisation"),
    }
    identifiers = [{"system": GLN_SYSTEM, "value": gln}] if gln else []
    identifiers += [{"system": SOR_SYSTEM, "value": sor}] if sor else []
    if identifiers:
        organization["identifier"] = identifiers
    if name:
        organization["name"] = _fhir_text(name)
    return organization


def _operation_outcome(outcome_id: str, code: str, issue: str, issue_code: str | None) -> Json:
    details: Json = {}
    if issue_code:
        system = ACK_ERROR_SYSTEM if issue_code in MEDCOM_ACK_ERRORS else HL7_OUTCOME_SYSTEM
        details["coding"] = [{"system": system, "code": issue_code}]
    details["text"] = _fhir_text(issue)
    return {
        "resourceType": "OperationOutcome",
        "id": outcome_id,
        "meta": {"profile": [ACK_OUTCOME_PROFILE]},
        "text": _narrative(issue),
        "issue": [
            {
                "severity": "error",
                "code": "transient" if code == "transient-error" else "invalid",
                "details": details,
            }
        ],
    }


def _patient(patient_id: str, cpr: str, name: str | None) -> Json:
    """The least MedComCorePatient that names the child: the CPR, or a replacement CPR, and the name."""
    if cpr.isdigit():
        identifier: Json = {"system": CPR_SYSTEM, "value": cpr}
    else:
        identifier = {"use": "temp", "system": REPLACEMENT_CPR_SYSTEM, "value": cpr}
    patient: Json = {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {"profile": [CORE_PROFILE + "patient"]},
        "text": _narrative("Patient"),
        "identifier": [identifier],
    }
    if name and name.strip():
        patient["name"] = [{"use": "official", **_human_name(name)}]
    return patient


def _author_resources(role_id: str, practitioner_id: str, author: Author) -> list[Json]:
    role: Json = {
        "resourceType": "PractitionerRole",
        "id": role_id,
        "meta": {"profile": [CORE_PROFILE + "practitionerrole"]},
        "text": _narrative(author.role),
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "code": [{"text": _fhir_text(author.role)}],
    }
    practitioner: Json = {
        "resourceType": "Practitioner",
        "id": practitioner_id,
        "meta": {"profile": [CORE_PROFILE + "practitioner"]},
        "text": _narrative(author.name),
        "name": [_human_name(author.name)],
    }
    return [role, practitioner]


def _human_name(name: str) -> Json:
    surname, given = _split_name(name)
    human: Json = {"family": _fhir_text(surname)}
    if given:
        human["given"] = [_fhir_text(x) for x in given.split()]
    return human


def _narrative(*lines: str) -> Json:
    """The generated narrative MedCom wants in every resource: one XHTML paragraph per line."""
    div = etree.Element(f"{{{XHTML_NAMESPACE}}}div", nsmap={None: XHTML_NAMESPACE})
    for line in lines:
        etree.SubElement(div, f"{{{XHTML_NAMESPACE}}}p").text = _xml_safe(line)
    return {"status": "generated", "div": div}


def _sor(party: Party) -> str | None:
    return party.identifier if party.identifier_code == "sorkode" and party.identifier else None


def _wants_json(original: Document, as_json: bool | None) -> bool:
    return original.format == "fhir-json" if as_json is None else as_json


def _fhir_bytes(resource: Json, as_json: bool) -> bytes:
    if as_json:
        return json.dumps(resource, ensure_ascii=False, indent=2, default=_div_string).encode("utf-8")
    root = etree.Element(f"{{{FHIR_NAMESPACE}}}{resource['resourceType']}", nsmap={None: FHIR_NAMESPACE})
    _fhir_children(root, resource)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _fhir_children(element: Any, obj: Json) -> None:
    """FHIR's XML form of a JSON object: primitives as value attributes, an extension's url as attribute,
    a contained resource wrapped in an element named by its type."""
    for key, value in obj.items():
        if key == "resourceType":
            continue
        if key == "url" and etree.QName(element).localname == "extension":
            element.set("url", value)
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, etree._Element):
                element.append(copy.deepcopy(item))
            elif isinstance(item, dict) and "resourceType" in item:
                wrapper = etree.SubElement(element, f"{{{FHIR_NAMESPACE}}}{key}")
                inner = etree.SubElement(wrapper, f"{{{FHIR_NAMESPACE}}}{item['resourceType']}")
                _fhir_children(inner, item)
            elif isinstance(item, dict):
                _fhir_children(etree.SubElement(element, f"{{{FHIR_NAMESPACE}}}{key}"), item)
            else:
                primitive = ("true" if item else "false") if isinstance(item, bool) else str(item)
                etree.SubElement(element, f"{{{FHIR_NAMESPACE}}}{key}", value=_xml_safe(primitive))


def _div_string(value: object) -> str:
    if isinstance(value, etree._Element):
        return str(etree.tostring(value, encoding="unicode"))
    raise TypeError(f"not JSON: {type(value).__name__}")


def _fhir_time(now: datetime) -> str:
    return _local(now).isoformat(timespec="seconds")


def _fhir_text(text: str) -> str:
    return _xml_safe(text).replace("\r\n", "\n").replace("\r", "\n")


def _uuid() -> str:
    return str(uuid.uuid4())


# Small helpers


def _local(now: datetime) -> datetime:
    """MedCom's dates and times are Danish local time."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(COPENHAGEN)


def _fits(value: str | None, length: int) -> bool:
    return value is not None and 1 <= len(value) <= length


def _xml_safe(text: str) -> str:
    """Without the control characters XML 1.0 cannot carry at all (lxml refuses them)."""
    return _NOT_XML.sub("", text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _truncate(text: str, length: int) -> str:
    text = _one_line(text)
    return text if len(text) <= length else text[: length - 1] + "…"


def _split_name(name: str) -> tuple[str, str | None]:
    """(surname, given names) from a name as held: 'Surname, Given Names' or 'Given Names Surname'."""
    name = _one_line(name)
    if "," in name:
        surname, _, given = name.partition(",")
        return surname.strip(), given.strip() or None
    given, _, surname = name.rpartition(" ")
    return surname, given or None


def _base36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))
