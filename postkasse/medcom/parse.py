"""Reading MedCom messages safely: OIOXML (`Emessage`), FHIR XML and FHIR JSON into a Document.

Every document comes from outside, so the XML parser never loads a DTD, never resolves an entity and never
touches the network; a DOCTYPE is refused before lxml sees the document (and again after, as a second line).
Only ASCII-compatible encodings are accepted, so the byte scan for the DOCTYPE cannot be fooled. Size,
element depth and JSON nesting are bounded. What MedCom's rules say to refuse raises MedcomError with the
RefuseCode the answer needs, naming the envelope and letter when they can be read.

Processing instructions other than the XML declaration are dropped unread (a `<?xml-stylesheet?>` is harmless
and common in MedCom exports); nothing in the document is ever fetched or executed.
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lxml import etree  # type: ignore[import-untyped]

from postkasse.medcom.document import Attachment, Document, Letter, MedcomError, Party
from postkasse.routing.facts import Address, Facts

OIOXML_NAMESPACE = re.compile(
    r"^http://rep\.oio\.dk/sundcom\.dk/medcom\.dk/xml/schemas/(\d{4})/(\d{2})/(\d{2})/$"
)
FHIR_NAMESPACE = "http://hl7.org/fhir"
XHTML_NAMESPACE = "http://www.w3.org/1999/xhtml"
MAX_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64  # elements in XML, objects and arrays in JSON; MedCom's own messages stay below 20

CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"
SOR_SYSTEM = "urn:oid:1.2.208.176.1.1"
GLN_SYSTEMS = frozenset({"urn:oid:1.3.88", "https://www.gs1.org/gln"})  # MedCom's samples use the URL

# OIOXML letter elements whose statistical code is known even when the letter omits it.
LETTER_KINDS = {
    "HospitalReferral": "XREF01",
    "DischargeLetter": "XDIS01",
    "ClinicalEmail": "XDIS91",
    "NegativeVansReceipt": "XCTL01",
    "NegativeReceipt": "XCTL02",
    "PositiveReceipt": "XCTL03",
}
FHIR_KINDS = {
    "care-communication-message": "CareCommunication",
    "hospital-notification-message": "HospitalNotification",
    "acknowledgement-message": "Acknowledgement",
}
# The schemas' priority lists: PriorityCodeType is elektiv / akut / saerlige_forhold, XDIS91's own list is
# rutine / høj_prioritet. FHIR Communication.priority is routine / urgent / asap / stat.
URGENT_PRIORITIES = frozenset({"akut", "høj_prioritet", "urgent", "asap", "stat"})

# Headings for the OIOXML text sections that are not plain ClinicalInformation text.
SECTION_HEADINGS = {
    "ClinicalReason": "Klinisk begrundelse",
    "Supplementary": "Supplerende oplysninger",
    "Cave": "Cave",
    "Anamnesis": "Anamnese",
    "Examination": "Undersøgelser",
    "ActualMedicine": "Aktuel medicin",
}


class _NoExternalContent(etree.Resolver):  # type: ignore[misc]
    """Answers every request for an external DTD or entity with nothing, so no file or URL is ever opened
    even if some parser option asks libxml2 to load one (collect_ids=False does: it loads the external DTD
    subset and parameter entities despite load_dtd=False)."""

    def resolve(self, system_url: str, public_id: str | None, context: Any) -> Any:
        return self.resolve_string("", context)


# Built once; lxml serialises concurrent use of one parser. remove_pis drops stylesheet hints unread.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    attribute_defaults=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)
_PARSER.resolvers.add(_NoExternalContent())
# Encodings whose bytes keep ASCII's, so the prolog scan reads them right; MedCom uses the first three.
ENCODINGS = frozenset({"utf-8", "cp1252", "iso8859-1", "iso8859-15", "ascii"})

_UTF8_BOM = b"\xef\xbb\xbf"
_SPACE = re.compile(rb"[ \t\r\n]*")
_DECLARED_ENCODING = re.compile(rb"<\?xml\s[^>]*?encoding\s*=\s*[\"']([^\"']*)[\"']")
_HOUSE_NUMBER = re.compile(r"^(?P<street>.*?[^\d\s,])\s+(?P<number>\d+\s?[A-Za-zÆØÅæøå]?)(?!\w)")
_NAMESPACE_IN_MESSAGE = re.compile(r"\{https?://[^}]*\}")
_TAG = re.compile(r"<[^>]+>")
_MARKUP = re.compile(r"^\s*<(?:div|p|span|br|b|i|ul|ol|table)\b", re.I)


class Schemas:
    """OIOXML schemas chosen by namespace: `directory/<yyyy>/<mm>/<dd>/EMessage.xsd`.

    Each is compiled once and cached. Includes and imports are read only from files inside `directory`: the
    schema parser has no network and a resolver that answers anything else with an empty document, so a
    schema that points elsewhere fails to compile (XMLSchemaParseError, a configuration error, not the
    sender's). Validation holds a per-schema lock because an lxml XMLSchema keeps its error log on itself."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self._lock = threading.Lock()
        self._compiled: dict[str, tuple[Any, threading.Lock]] = {}
        self._parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        self._parser.resolvers.add(_FilesUnder(self.directory))

    def path_for(self, namespace: str) -> Path | None:
        match = OIOXML_NAMESPACE.match(namespace)
        if not match:
            return None
        path = self.directory.joinpath(*match.groups(), "EMessage.xsd")
        return path if path.is_file() else None

    def schema_for(self, namespace: str) -> Any | None:
        """The compiled schema (lxml XMLSchema) for a namespace, or None when there is none."""
        with self._lock:
            cached = self._compiled.get(namespace)
            if cached is None:
                path = self.path_for(namespace)
                if path is None:
                    return None
                schema = etree.XMLSchema(etree.parse(str(path), self._parser))
                cached = self._compiled[namespace] = (schema, threading.Lock())
        return cached[0]

    def validate(self, root: Any, *, envelope_id: str | None = None, letter_id: str | None = None) -> None:
        """Refuse a document its namespace's schema rejects (syntaksfejl, naming the first error's line),
        or whose namespace has no schema here (problem_med_version)."""
        namespace = etree.QName(root).namespace or ""
        schema = self.schema_for(namespace)
        if schema is None:
            raise MedcomError(
                "problem_med_version",
                f"OIOXML-versionen {namespace or '(uden navnerum)'} kan ikke modtages her.",
                envelope_id=envelope_id,
                letter_id=letter_id,
            )
        lock = self._compiled[namespace][1]
        with lock:
            if schema.validate(root.getroottree()):
                return
            error = schema.error_log[0]
            line, message = error.line, _NAMESPACE_IN_MESSAGE.sub("", str(error.message))
        raise MedcomError(
            "syntaksfejl",
            f"Dokumentet overholder ikke skemaet for {namespace}: linje {line}: {message}",
            envelope_id=envelope_id,
            letter_id=letter_id,
        )


class _FilesUnder(etree.Resolver):  # type: ignore[misc]
    """Lets schema includes and imports read files below one directory and nothing else."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def resolve(self, system_url: str, public_id: str | None, context: Any) -> Any:
        url = urlparse(system_url)
        if url.scheme not in ("", "file"):
            return self.resolve_string("", context)
        path = Path(unquote(url.path) if url.scheme else system_url).resolve()
        if path.is_relative_to(self.directory) and path.is_file():
            return self.resolve_filename(str(path), context)
        return self.resolve_string("", context)


def parse(data: bytes, *, schemas: Schemas | None = None, max_bytes: int = MAX_BYTES) -> Document:
    """Read an OIOXML Emessage, a FHIR XML Bundle or a FHIR JSON Bundle; refuse anything else.

    With `schemas`, OIOXML is validated against the schema its namespace names. FHIR is not schema-validated:
    the structure the mailbox relies on (a message Bundle, MessageHeader first, ids) is checked instead."""
    if len(data) > max_bytes:
        raise MedcomError(
            "ikke_specificeret", f"Dokumentet fylder {len(data)} bytes; der modtages højst {max_bytes} bytes."
        )
    first = data.removeprefix(_UTF8_BOM).lstrip(b" \t\r\n")[:1]
    if first in (b"{", b"["):
        return _parse_json(data)
    if first == b"<":
        return _parse_xml(data, schemas)
    raise MedcomError("syntaksfejl", "Dokumentet er hverken XML eller JSON.")


def facts(letter: Letter) -> Facts:
    """What routing may use from one letter; a receiver named by kommunenummer is an explicit municipality."""
    return Facts(
        cprs=(re.sub(r"[\s-]", "", letter.cpr),) if letter.cpr else (),
        name=letter.patient_name,
        address=letter.address,
        receiver_municipality=letter.receiver.municipality,
        subject=letter.subject,
        urgent=letter.urgent,
        source="medcom",
    )


# XML ---------------------------------------------------------------------------------------------------


def _parse_xml(data: bytes, schemas: Schemas | None) -> Document:
    _refuse_other_encodings(data)
    _refuse_doctype_in_prolog(data)
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MedcomError("syntaksfejl", f"Dokumentet er ikke velformet XML: {exc}") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise MedcomError("syntaksfejl", "Dokumentet har en DOCTYPE; MedCom-dokumenter må ikke have en DTD.")
    if next(root.iter(etree.Entity), None) is not None:
        raise MedcomError("syntaksfejl", "Dokumentet bruger entiteter; de er ikke tilladt.")
    _check_depth(root)
    tag = etree.QName(root)
    if tag.localname == "Emessage":
        return _read_oioxml(root, tag.namespace, schemas)
    if tag.namespace == FHIR_NAMESPACE and tag.localname == "Bundle":
        bundle = _fhir_node(root)
        if not isinstance(bundle, dict):
            raise MedcomError("syntaksfejl", "FHIR-Bundle'en er tom.")
        return _read_fhir({"resourceType": "Bundle", **bundle}, "fhir-xml")
    raise MedcomError(
        "syntaksfejl", f"Rodelementet {tag.localname} er hverken et OIOXML-Emessage eller et FHIR-Bundle."
    )


def _refuse_other_encodings(data: bytes) -> None:
    """Only encodings that keep ASCII's bytes: in UTF-7, `+ADw-!DOCTYPE` is a DOCTYPE no byte scan sees, and
    UTF-16 without a byte order mark (found by its NUL bytes; NUL is never legal XML) hides one as well."""
    if b"\x00" in data:
        raise MedcomError("syntaksfejl", "Dokumentet er ikke i UTF-8, windows-1252 eller ISO-8859-1.")
    declaration = _DECLARED_ENCODING.match(data.removeprefix(_UTF8_BOM))
    if declaration is None:
        return  # UTF-8 by default
    name = declaration.group(1).decode("ascii", "replace")
    try:
        known = codecs.lookup(name).name if re.fullmatch(r"[A-Za-z0-9._-]{1,40}", name) else None
    except LookupError:
        known = None
    if known not in ENCODINGS:
        raise MedcomError(
            "syntaksfejl", f"Tegnsættet {name!r} modtages ikke; brug UTF-8, windows-1252 eller ISO-8859-1."
        )


def _refuse_doctype_in_prolog(data: bytes) -> None:
    """Refuse `<!DOCTYPE` (and any other `<!` declaration) before the root element, without parsing.

    Sound because only ASCII-compatible encodings get this far; the check of the parsed tree stays as a
    second line."""
    pos = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    while True:
        space = _SPACE.match(data, pos)
        pos = space.end() if space else pos
        if data.startswith(b"<!--", pos):
            end = data.find(b"-->", pos + 4)
            if end < 0:
                return
            pos = end + 3
        elif data.startswith(b"<?", pos):
            end = data.find(b"?>", pos + 2)
            if end < 0:
                return
            pos = end + 2
        elif data.startswith(b"<!", pos):
            raise MedcomError(
                "syntaksfejl",
                "Dokumentet har en DOCTYPE; MedCom-dokumenter må ikke have en DTD eller entiteter.",
            )
        else:
            return


def _check_depth(root: Any) -> None:
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > MAX_DEPTH:
            raise MedcomError("syntaksfejl", f"Dokumentet er indlejret mere end {MAX_DEPTH} niveauer dybt.")


def _local(element: Any) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _children(element: Any, name: str | None = None) -> list[Any]:
    if element is None:
        return []
    return [c for c in element if isinstance(c.tag, str) and (name is None or _local(c) == name)]


def _child(element: Any, *path: str) -> Any:
    for name in path:
        found = _children(element, name)
        element = found[0] if found else None
    return element


def _text(element: Any, *path: str) -> str | None:
    found = _child(element, *path)
    if found is None:
        return None
    return "".join(str(t) for t in found.itertext()).strip() or None


def _formatted(element: Any) -> str:
    """MedCom formatted text: `<Break/>` is a new line and `<Space/>` a space; source line breaks are not."""
    parts = [re.sub(r"\s*\n\s*", " ", element.text or "")]
    for child in _children(element):
        name = _local(child)
        if name == "Break":
            parts.append("\n")
        elif name == "Space":
            parts.append(" ")
        else:
            parts.append(_formatted(child))
        parts.append(re.sub(r"\s*\n\s*", " ", child.tail or ""))
    return "".join(parts)


def _section(element: Any, heading: str | None) -> str | None:
    text = "\n".join(line.strip() for line in _formatted(element).split("\n")).strip("\n")
    if not text:
        return None
    return f"{heading}:\n{text}" if heading else text


# OIOXML ------------------------------------------------------------------------------------------------


def _read_oioxml(root: Any, namespace: str | None, schemas: Schemas | None) -> Document:
    envelope_id = _text(root, "Envelope", "Identifier")
    letter_elements = [c for c in _children(root) if _local(c) not in ("Envelope", "Local_Elements")]
    first_letter_id = _text(letter_elements[0], "Letter", "Identifier") if letter_elements else None
    ids = {"envelope_id": envelope_id, "letter_id": first_letter_id}
    if namespace is None or not OIOXML_NAMESPACE.match(namespace):
        raise MedcomError(
            "problem_med_version",
            f"Navnerummet {namespace or '(intet)'} er ikke en MedCom OIOXML-version.",
            **ids,
        )
    if schemas is not None:
        schemas.validate(root, **ids)
    if envelope_id is None:
        raise MedcomError("syntaksfejl", "Envelope/Identifier mangler.", **ids)
    if not letter_elements:
        raise MedcomError("syntaksfejl", "Forsendelsen indeholder ingen breve.", **ids)
    date, time = _text(root, "Envelope", "Sent", "Date"), _text(root, "Envelope", "Sent", "Time")
    return Document(
        format="oioxml",
        envelope_id=envelope_id,
        sent=f"{date}T{time}" if date and time else date,
        acknowledgement_code=_text(root, "Envelope", "AcknowledgementCode"),
        namespace=namespace,
        letters=tuple(_oioxml_letter(element, envelope_id) for element in letter_elements),
    )


def _oioxml_letter(element: Any, envelope_id: str) -> Letter:
    """Any letter, read by the elements all MedCom letters share; receipts also say what they answer."""
    name = _local(element)
    identifier = _text(element, "Letter", "Identifier")
    if identifier is None:
        raise MedcomError("syntaksfejl", f"{name}/Letter/Identifier mangler.", envelope_id=envelope_id)
    patient = _child(element, "Patient")
    given = [_text(patient, n) for n in ("PersonGivenName", "PersonMiddleName", "PersonSurnameName")]
    priority = _text(element, "AdditionalInformation", "Priority")
    original = _child(element, "OriginalEmessage")
    originals = _children(original, "OriginalLetter")
    letter_refusals = [code for o in originals if (code := _text(o, "RefuseCode"))]
    return Letter(
        kind=_text(element, "Letter", "StatisticalCode")
        or _text(element, "Letter", "TypeCode")
        or LETTER_KINDS.get(name, name),
        identifier=identifier,
        version_code=_text(element, "Letter", "VersionCode"),
        status_code=_text(element, "Letter", "StatusCode"),
        sender=_oioxml_party(_child(element, "Sender")),
        receiver=_oioxml_party(_child(element, "Receiver")),
        cpr=_text(patient, "CivilRegistrationNumber"),
        patient_name=" ".join(n for n in given if n) or None,
        address=_address(_text(patient, "StreetName"), _text(patient, "PostCodeIdentifier")),
        subject=_text(element, "AdditionalInformation", "Subject"),
        text=_oioxml_text(element),
        priority=priority,
        urgent=_is_urgent(priority),
        answers_envelope=_text(original, "OriginalEnvelopeIdentifier"),
        answers_letter=_text(originals[0], "OriginalLetterIdentifier") if originals else None,
        response_code=_text(original, "RefuseCode") or next(iter(letter_refusals), None),
    )


def _oioxml_party(element: Any) -> Party:
    if element is None:
        return Party()
    names = [_text(element, "OrganisationName"), _text(element, "DepartmentName")]
    return Party(
        ean=_text(element, "EANIdentifier"),
        identifier=_text(element, "Identifier"),
        identifier_code=_text(element, "IdentifierCode"),
        name=", ".join(n for n in names if n) or None,
    )


def _oioxml_text(letter: Any) -> str:
    """The clinical text in document order: reasons and supplements, relevant clinical information, the
    ClinicalInformation texts, and for a receipt its refusal texts."""
    sections: list[str | None] = []
    for part in _children(letter):
        name = _local(part)
        if name == "AdditionalInformation":
            sections += [
                _section(c, SECTION_HEADINGS[_local(c)])
                for c in _children(part)
                if _local(c) in ("ClinicalReason", "Supplementary")
            ]
        elif name == "RelevantClinicalInformation":
            sections += [_section(c, SECTION_HEADINGS.get(_local(c), _local(c))) for c in _children(part)]
        elif name == "ClinicalInformation":
            sections += [_section(c, None) for c in _children(part) if re.fullmatch(r"Text\d+", _local(c))]
        elif name == "OriginalEmessage":
            refusals = _children(part, "RefuseText") + [
                r for o in _children(part, "OriginalLetter") for r in _children(o, "RefuseText")
            ]
            sections += [_section(r, None) for r in refusals]
    return "\n\n".join(s for s in sections if s)


def _address(line: str | None, postal_code: str | None) -> Address | None:
    """Splits "Park Alle 48" into street "Park Alle" and number "48"; floor and door ("3, 3 tv") go."""
    if not line and not postal_code:
        return None
    street = number = None
    if line:
        match = _HOUSE_NUMBER.match(line.strip())
        if match:
            street, number = match.group("street").strip(), re.sub(r"\s", "", match.group("number")).upper()
        else:
            street = line.strip()
    return Address(street, number, postal_code)


def _is_urgent(priority: str | None) -> bool:
    return priority is not None and priority.strip().lower() in URGENT_PRIORITIES


# FHIR --------------------------------------------------------------------------------------------------


def _parse_json(data: bytes) -> Document:
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise MedcomError(
            "syntaksfejl", f"JSON-dokumentet er indlejret mere end {MAX_DEPTH} niveauer dybt."
        ) from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, integers beyond Python's digit limit
        raise MedcomError("syntaksfejl", f"Dokumentet er ikke gyldig JSON: {exc}") from exc
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MedcomError(
                "syntaksfejl", f"JSON-dokumentet er indlejret mere end {MAX_DEPTH} niveauer dybt."
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        raise MedcomError("syntaksfejl", "JSON-dokumentet er ikke et FHIR-Bundle (resourceType Bundle).")
    return _read_fhir(value, "fhir-json")


def _fhir_node(element: Any) -> Any:
    """FHIR XML as FHIR JSON would say it, so one reader serves both: `value` attributes become strings, a
    resource wrapper (`<resource><Patient>`) an object with resourceType, repeated elements lists. An element
    that occurs once stays single, so readers take one or many either way."""
    if etree.QName(element).namespace == XHTML_NAMESPACE:
        return " ".join(" ".join(str(t) for t in element.itertext()).split())
    if "value" in element.attrib:
        return str(element.attrib["value"])
    node: dict[str, Any] = {"url": str(element.attrib["url"])} if "url" in element.attrib else {}
    fields: dict[str, list[Any]] = {}
    for child in _children(element):
        name = _local(child)
        value = _fhir_node(child)
        if name[:1].isupper():  # a resource inside resource, contained or outcome
            node["resourceType"] = name
            if isinstance(value, dict):
                node.update(value)
        else:
            fields.setdefault(name, []).append(value)
    node.update({name: values[0] if len(values) == 1 else values for name, values in fields.items()})
    return node


def _many(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _get(node: Any, *path: str) -> Any:
    """The first value at a path, stepping into the first item of any list on the way."""
    for key in path:
        items = _many(node)
        node = items[0].get(key) if items and isinstance(items[0], dict) else None
    return node


def _str(value: Any) -> str | None:
    items = _many(value)
    first = items[0] if items else None
    if isinstance(first, bool):
        return None
    if isinstance(first, int | float):
        return str(first)
    return first.strip() or None if isinstance(first, str) else None


def _read_fhir(bundle: dict[str, Any], fmt: str) -> Document:
    envelope_id = _str(bundle.get("id"))
    entries = [e for e in _many(bundle.get("entry")) if isinstance(e, dict)]
    header = _get(entries[:1], "resource")
    is_header = isinstance(header, dict) and header.get("resourceType") == "MessageHeader"
    letter_id = _str(_get(header, "id")) if is_header else None
    ids = {"envelope_id": envelope_id, "letter_id": letter_id}
    if _str(bundle.get("type")) != "message":
        raise MedcomError("syntaksfejl", "FHIR-Bundle'en er ikke af typen message.", **ids)
    if envelope_id is None:
        raise MedcomError("syntaksfejl", "Bundle.id mangler.", **ids)
    if not is_header:
        raise MedcomError("syntaksfejl", "Bundle'ens første entry er ikke en MessageHeader.", **ids)
    if letter_id is None:
        raise MedcomError("syntaksfejl", "MessageHeader.id mangler.", **ids)
    event = _str(_get(header, "eventCoding", "code")) or _str(_get(header, "eventUri"))
    if event is None:
        raise MedcomError("syntaksfejl", "MessageHeader.eventCoding mangler.", **ids)

    resources = _ResourceIndex(entries)
    focus = resources.find(_get(header, "focus", "reference"))
    communication = focus if _type(focus) == "Communication" else resources.first("Communication")
    patient = resources.find(_get(focus, "subject", "reference")) or resources.first("Patient")
    response = _get(header, "response")
    texts, attachments = _payload(communication)
    priority = _str(_get(communication, "priority"))
    category = _get(communication, "category", "coding")
    if response is not None:
        texts += _outcome(resources.find(_get(response, "details", "reference")))
    return Document(
        format="fhir-json" if fmt == "fhir-json" else "fhir-xml",
        envelope_id=envelope_id,
        sent=_str(bundle.get("timestamp")),
        acknowledgement_code=None,
        namespace=FHIR_NAMESPACE,
        letters=(
            Letter(
                kind=FHIR_KINDS.get(event, event),
                identifier=letter_id,
                version_code=None,
                sender=_fhir_party(resources.find(_get(header, "sender", "reference"))),
                receiver=_fhir_party(resources.find(_get(_destination(header), "receiver", "reference"))),
                cpr=_cpr(patient),
                patient_name=_person_name(patient),
                address=_address(
                    _str(_get(patient, "address", "line")), _str(_get(patient, "address", "postalCode"))
                ),
                subject=_str(_get(communication, "topic", "text"))
                or _str(_get(category, "display"))
                or _str(_get(category, "code")),
                text="\n\n".join(texts),
                priority=priority,
                urgent=_is_urgent(priority),
                event=event,
                thread=_str(_get(communication, "identifier", "value")),
                attachments=tuple(attachments),
                answers_letter=_str(_get(response, "identifier")),
                response_code=_str(_get(response, "code")),
            ),
        ),
    )


class _ResourceIndex:
    """The Bundle's resources by fullUrl and by `Type/id`, so references of either form resolve."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.resources: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        for entry in entries:
            resource = _get(entry, "resource")
            if not isinstance(resource, dict):
                continue
            self.resources.append(resource)
            full_url, kind, ident = _str(entry.get("fullUrl")), _type(resource), _str(resource.get("id"))
            if full_url:
                self.by_key.setdefault(full_url, resource)
            if kind and ident:
                self.by_key.setdefault(f"{kind}/{ident}", resource)

    def find(self, reference: Any) -> dict[str, Any] | None:
        ref = _str(reference)
        if ref is None:
            return None
        ref = ref.split("/_history/")[0]
        return self.by_key.get(ref) or self.by_key.get("/".join(ref.split("/")[-2:]))

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in self.resources if _type(r) == kind), None)


def _type(resource: Any) -> str | None:
    return _str(resource.get("resourceType")) if isinstance(resource, dict) else None


def _destination(header: Any) -> Any:
    """The primary destination (MedCom's destinationUse extension), else the first."""
    destinations = _many(_get(header, "destination"))
    for destination in destinations:
        for extension in _many(_get(destination, "extension")):
            if _str(_get(extension, "valueCoding", "code")) == "primary":
                return destination
    return destinations[0] if destinations else None


def _fhir_party(organization: dict[str, Any] | None) -> Party:
    """SOR id as identifier (`sorkode`) and GLN as the location number (`lokationsnummer` when alone)."""
    if organization is None:
        return Party()
    sor = gln = None
    for identifier in _many(organization.get("identifier")):
        system, value = _str(_get(identifier, "system")), _str(_get(identifier, "value"))
        if system == SOR_SYSTEM:
            sor = sor or value
        elif system in GLN_SYSTEMS:
            gln = gln or value
    name = _str(organization.get("name"))
    if sor:
        return Party(ean=gln, identifier=sor, identifier_code="sorkode", name=name)
    if gln:
        return Party(ean=gln, identifier=gln, identifier_code="lokationsnummer", name=name)
    return Party(name=name)


def _cpr(patient: dict[str, Any] | None) -> str | None:
    """The CPR number only: a replacement id (erstatnings-CPR, another system) is not one."""
    for identifier in _many(_get(patient, "identifier")):
        if _str(_get(identifier, "system")) == CPR_SYSTEM:
            return _str(_get(identifier, "value"))
    return None


def _person_name(patient: dict[str, Any] | None) -> str | None:
    names = [n for n in _many(_get(patient, "name")) if isinstance(n, dict)]
    name = next((n for n in names if _str(n.get("use")) == "official"), names[0] if names else None)
    if name is None:
        return None
    parts = [_str(g) for g in _many(name.get("given"))] + [_str(name.get("family"))]
    return " ".join(p for p in parts if p) or _str(name.get("text"))


def _payload(communication: dict[str, Any] | None) -> tuple[list[str], list[Attachment]]:
    texts: list[str] = []
    attachments: list[Attachment] = []
    for payload in _many(_get(communication, "payload")):
        content = _str(_get(payload, "contentString"))
        if content:
            texts.append(_plain(content))
        attachment = _get(payload, "contentAttachment")
        if isinstance(attachment, dict):
            attachments.append(
                Attachment(
                    filename=_str(attachment.get("title")),
                    content_type=_str(attachment.get("contentType")),
                    size=_attachment_size(attachment),
                )
            )
    return texts, attachments


def _plain(text: str) -> str:
    """A contentString as plain text; one written as XHTML loses its tags, its paragraphs become lines."""
    if not _MARKUP.match(text):
        return text
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</li>", "\n", text)
    return "\n".join(line.strip() for line in unescape(_TAG.sub("", text)).splitlines()).strip()


def _attachment_size(attachment: dict[str, Any]) -> int:
    """The declared size, else the decoded length of the base64 data, computed without decoding it."""
    size = _str(attachment.get("size"))
    if size and size.isdigit():
        return int(size)
    data = re.sub(r"\s", "", _str(attachment.get("data")) or "")
    return max(len(data) * 3 // 4 - (len(data) - len(data.rstrip("="))), 0)


def _outcome(outcome: dict[str, Any] | None) -> list[str]:
    """An acknowledgement's OperationOutcome issues as lines: the error code and any text."""
    lines = []
    for issue in _many(_get(outcome, "issue")):
        parts = [
            _str(_get(issue, "details", "coding", "code")),
            _str(_get(issue, "details", "text")),
            _str(_get(issue, "diagnostics")),
        ]
        line = ": ".join(p for p in parts if p)
        if line:
            lines.append(line)
    return ["\n".join(lines)] if lines else []
