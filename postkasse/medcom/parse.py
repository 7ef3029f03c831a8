"""Reading MedCom messages safely: OIOXML (`Emessage`), FHIR XML and FHIR JSON into a Document.

Every document comes from outside, so the XML parser never loads a DTD, never resolves an entity and never
touches the network; a DOCTYPE is refused before lxml sees the document (and again after, as a second line).
Only ASCII-compatible encodings are accepted, so the byte scan for the DOCTYPE cannot be fooled.

The work is bounded before anything is built (Limits): the size, then a scan of the bytes counts the nodes
(XML tags and attributes, JSON values) and JSON's nesting, so a hostile document costs a pass over its bytes,
never a tree of millions of nodes. JSON is read as RFC 8259 says: no NaN or Infinity, no number beyond a
double, no key twice in one object. What MedCom's rules say to refuse raises MedcomError with the RefuseCode
the answer needs and a named reason, naming the envelope and letter when they can be read; no refusal quotes a
value from the document (a schema error names the element and the rule).

OIOXML is read by the structure all MedCom versions share, in any namespace under MedCom's schema address;
it is validated where the schema for its namespace is installed.

Processing instructions other than the XML declaration are dropped unread (a `<?xml-stylesheet?>` is harmless
and common in MedCom exports); nothing in the document is ever fetched or executed.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import threading
from dataclasses import dataclass
from html import unescape
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lxml import etree  # type: ignore[import-untyped]

from postkasse.address import Address
from postkasse.medcom.document import Attachment, Document, Letter, MedcomError, Party

OIOXML_NAMESPACE = re.compile(  # MedCom's versions, dated; older ones under sundcom.dk, newer ones not
    r"^http://rep\.oio\.dk/(?:sundcom\.dk/)?medcom\.dk/xml/schemas/(?:(\d{4})/(\d{2})/(\d{2})/)?"
)
FHIR_NAMESPACE = "http://hl7.org/fhir"
XHTML_NAMESPACE = "http://www.w3.org/1999/xhtml"
MAX_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64  # elements in XML, objects and arrays in JSON; MedCom's own messages stay below 20
MAX_NODES = 100_000  # XML tags and attributes, JSON values; MedCom's own messages have a few thousand


@dataclass(frozen=True)
class Limits:
    """The work one document may cost ([medcom] max_document_bytes, max_depth, max_nodes)."""

    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES


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
        self._compiled: dict[str, tuple[Any, threading.Lock] | None] = {}
        self._parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        self._parser.resolvers.add(_FilesUnder(self.directory))

    def path_for(self, namespace: str) -> Path | None:
        match = OIOXML_NAMESPACE.match(namespace)
        if not match or match.group(1) is None:
            return None
        path = self.directory.joinpath(*match.groups(), "EMessage.xsd")
        return path if path.is_file() else None

    def schema_for(self, namespace: str) -> Any | None:
        """The compiled schema (lxml XMLSchema) for a namespace, or None when none is installed whose
        target namespace is this one (a dated directory may hold the schema of a sibling namespace)."""
        with self._lock:
            if namespace not in self._compiled:
                path = self.path_for(namespace)
                self._compiled[namespace] = None
                if path is not None:
                    tree = etree.parse(str(path), self._parser)
                    schema = etree.XMLSchema(tree)  # compiled first: a bad include is an error either way
                    if tree.getroot().get("targetNamespace") == namespace:
                        self._compiled[namespace] = (schema, threading.Lock())
            cached = self._compiled[namespace]
        return cached[0] if cached is not None else None

    def validate(self, root: Any, *, envelope_id: str | None = None, letter_id: str | None = None) -> None:
        """Refuse a document its namespace's schema rejects (syntaksfejl, naming the first error's line,
        element and rule, never its value). A version whose schema is not installed is read unvalidated."""
        namespace = etree.QName(root).namespace or ""
        schema = self.schema_for(namespace)
        if schema is None:
            return
        cached = self._compiled[namespace]
        assert cached is not None
        with cached[1]:
            if schema.validate(root.getroottree()):
                return
            error = schema.error_log[0]
            where = _schema_error(root, error.line, error.path, error.type_name, str(error.message))
        raise MedcomError(
            "syntaksfejl",
            f"Dokumentet overholder ikke skemaet for {namespace}: {where}",
            envelope_id=envelope_id,
            letter_id=letter_id,
            reason="schema_invalid",
        )


# What each schema rule checks, in words; the rule's own name follows, and the value is never quoted.
_SCHEMA_RULES = {
    "SCHEMAV_CVC_PATTERN_VALID": "værdien har ikke det krævede format",
    "SCHEMAV_CVC_ENUMERATION_VALID": "værdien er ikke en af de tilladte",
    "SCHEMAV_CVC_LENGTH_VALID": "værdien har ikke den krævede længde",
    "SCHEMAV_CVC_MINLENGTH_VALID": "værdien er for kort",
    "SCHEMAV_CVC_MAXLENGTH_VALID": "værdien er for lang",
    "SCHEMAV_CVC_DATATYPE_VALID_1_2_1": "værdien har ikke den krævede datatype",
    "SCHEMAV_ELEMENT_CONTENT": "elementerne står ikke som skemaet kræver",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_4": "et påkrævet element mangler",
}
_EXPECTED = re.compile(r"Expected is (?:one of )?\(([^)]*)\)")
_SCHEMA_NAME = re.compile(r"(?:\{[^}]*\})?([A-Za-z_][\w.-]*)")


def _schema_error(root: Any, line: int, path: str | None, rule: str, message: str) -> str:
    """Where and which rule, from the error's fields: the element's path of local names (found by the path
    libxml2 gives, not by the message), the rule, and for a misplaced or missing element the names the schema
    expects. libxml2's message quotes the value (a CPR number, say), so only its "Expected" list is used."""
    try:
        found = root.getroottree().xpath(path) if path else []
    except etree.XPathError:  # a path with a prefix the document declares only locally (xi:include, say)
        found = []
    element = found[0] if found and isinstance(found[0], etree._Element) else None
    if element is not None:
        names = [_local(e) for e in (element, *element.iterancestors())]
        where = "/".join(reversed(names))
    else:
        where = "(ukendt element)"
    text = f"linje {line}: {where}: {_SCHEMA_RULES.get(rule, 'overholder ikke skemaet')} ({rule})"
    expected = _EXPECTED.search(message)
    if expected:
        names = [m.group(1) for m in _SCHEMA_NAME.finditer(expected.group(1))]
        text += f"; skemaet forventer {', '.join(names)}"
    return text


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


def parse(data: bytes, *, schemas: Schemas | None = None, limits: Limits = Limits()) -> Document:
    """Read an OIOXML Emessage, a FHIR XML Bundle or a FHIR JSON Bundle; refuse anything else.

    With `schemas`, OIOXML is validated against the schema its namespace names. FHIR is not schema-validated:
    the structure the mailbox relies on (a message Bundle, MessageHeader first, ids) is checked instead."""
    if len(data) > limits.max_bytes:
        raise MedcomError(
            "ikke_specificeret",
            f"Dokumentet fylder {len(data)} bytes; der modtages højst {limits.max_bytes} bytes.",
            reason="too_large",
        )
    first = data.removeprefix(_UTF8_BOM).lstrip(b" \t\r\n")[:1]
    if first in (b"{", b"["):
        return _parse_json(data, limits)
    if first == b"<":
        try:
            return _parse_xml(data, schemas, limits)
        except etree.LxmlError as exc:  # what the checks above did not foresee is still the content's fault
            raise MedcomError(
                "ikke_specificeret", "Dokumentet kunne ikke læses som XML.", reason="not_readable"
            ) from exc
    raise MedcomError("syntaksfejl", "Dokumentet er hverken XML eller JSON.", reason="not_xml_or_json")


def _too_many_nodes(limits: Limits) -> MedcomError:
    return MedcomError(
        "ikke_specificeret",
        f"Dokumentet har flere end {limits.max_nodes} knuder (elementer, attributter eller værdier).",
        reason="too_many_nodes",
    )


def _too_deep(limits: Limits, what: str = "Dokumentet") -> MedcomError:
    return MedcomError(
        "syntaksfejl", f"{what} er indlejret mere end {limits.max_depth} niveauer dybt.", reason="too_deep"
    )


# XML ---------------------------------------------------------------------------------------------------


def _parse_xml(data: bytes, schemas: Schemas | None, limits: Limits) -> Document:
    _refuse_other_encodings(data)
    _refuse_doctype_in_prolog(data)
    _refuse_many_xml_nodes(data, limits)
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MedcomError(
            "syntaksfejl", f"Dokumentet er ikke velformet XML: {exc}", reason="not_well_formed"
        ) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise MedcomError(
            "syntaksfejl",
            "Dokumentet har en DOCTYPE; MedCom-dokumenter må ikke have en DTD.",
            reason="doctype",
        )
    if next(root.iter(etree.Entity), None) is not None:
        raise MedcomError("syntaksfejl", "Dokumentet bruger entiteter; de er ikke tilladt.", reason="doctype")
    _check_depth(root, limits)
    tag = etree.QName(root)
    if tag.localname == "Emessage":
        return _read_oioxml(root, tag.namespace, schemas)
    if tag.namespace == FHIR_NAMESPACE and tag.localname == "Bundle":
        bundle = _fhir_node(root)
        if not isinstance(bundle, dict):
            raise MedcomError("syntaksfejl", "FHIR-Bundle'en er tom.")
        return _read_fhir({"resourceType": "Bundle", **bundle}, "fhir-xml")
    raise MedcomError(
        "syntaksfejl",
        f"Rodelementet {tag.localname} er hverken et OIOXML-Emessage eller et FHIR-Bundle.",
        reason="not_medcom",
    )


def _refuse_other_encodings(data: bytes) -> None:
    """Only encodings that keep ASCII's bytes: in UTF-7, `+ADw-!DOCTYPE` is a DOCTYPE no byte scan sees, and
    UTF-16 without a byte order mark (found by its NUL bytes; NUL is never legal XML) hides one as well."""
    if b"\x00" in data:
        raise MedcomError(
            "syntaksfejl", "Dokumentet er ikke i UTF-8, windows-1252 eller ISO-8859-1.", reason="encoding"
        )
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
            "syntaksfejl",
            f"Tegnsættet {name!r} modtages ikke; brug UTF-8, windows-1252 eller ISO-8859-1.",
            reason="encoding",
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
                reason="doctype",
            )
        else:
            return


_ATTRIBUTE = re.compile(rb"=[ \t\r\n]*[\"']")


def _refuse_many_xml_nodes(data: bytes, limits: Limits) -> None:
    """Count before parsing: every tag starts with `<` and every attribute is `=` and a quote, so the two
    counts bound what libxml2 would build (it keeps all of one tag's attributes at once, ~100 bytes each).
    Attributes are counted one by one only when the count of `=` says they could matter, and only until
    the bound is crossed."""
    tags = data.count(b"<")
    if tags > limits.max_nodes:
        raise _too_many_nodes(limits)
    room = limits.max_nodes - tags
    if data.count(b"=") > room and next(islice(_ATTRIBUTE.finditer(data), room, None), None) is not None:
        raise _too_many_nodes(limits)


def _check_depth(root: Any, limits: Limits) -> None:
    depth = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > limits.max_depth:
            raise _too_deep(limits)


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
            reason="unknown_namespace",
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


# A JSON string (an unterminated one runs to the end, so no position is scanned twice) or a bracket or comma.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[\]{},]', re.S)
_OPENING, _CLOSING, _COMMA = frozenset(b"[{"), frozenset(b"]}"), ord(",")


def _refuse_json_beyond(data: bytes, limits: Limits) -> None:
    """Nesting and values, counted from the tokens before json builds anything: each value but the first
    in an array or object follows a comma, each array or object opens with a bracket. Strings are skipped
    whole, and the scan stops at the first bound crossed, so its cost is bounded by the limits too."""
    depth = nodes = 0
    for token in _JSON_TOKEN.finditer(data):
        first = data[token.start()]
        if first in _OPENING:
            depth, nodes = depth + 1, nodes + 1
            if depth > limits.max_depth:
                raise _too_deep(limits, "JSON-dokumentet")
        elif first in _CLOSING:
            depth -= 1
        elif first == _COMMA:
            nodes += 1
        if nodes > limits.max_nodes:
            raise _too_many_nodes(limits)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise MedcomError(
            "syntaksfejl",
            "JSON-dokumentet har samme nøgle to gange i ét objekt.",
            reason="json_duplicate_key",
        )
    return found


def _not_a_number(_: str) -> Any:
    raise MedcomError(
        "syntaksfejl", "JSON-dokumentet har NaN eller Infinity; det er ikke JSON.", reason="json_not_finite"
    )


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MedcomError(
            "syntaksfejl",
            "JSON-dokumentet har et tal uden for et kommatals grænser.",
            reason="json_not_finite",
        )
    return value


def _parse_json(data: bytes, limits: Limits) -> Document:
    """RFC 8259 JSON: Python's json also takes NaN, Infinity, 1e999999 (as inf) and a repeated key (the
    last wins), which a FHIR reader elsewhere may read otherwise; each of them is refused."""
    _refuse_json_beyond(data, limits)
    try:
        value = json.loads(
            data, object_pairs_hook=_json_object, parse_constant=_not_a_number, parse_float=_json_float
        )
    except json.JSONDecodeError as exc:
        raise MedcomError(
            "syntaksfejl",
            f"Dokumentet er ikke gyldig JSON: {exc.msg}, linje {exc.lineno}, kolonne {exc.colno}.",
            reason="not_json",
        ) from exc
    except ValueError as exc:  # bad UTF-8, integers beyond Python's digit limit
        raise MedcomError(
            "syntaksfejl", f"Dokumentet er ikke gyldig JSON ({type(exc).__name__}).", reason="not_json"
        ) from exc
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
