"""Hostile and careless MedCom documents, generated from MedCom's own samples: XML and JSON as attackers and
broken systems write them (entities, depth, floods of nodes, wrong encodings, strict-JSON violations)."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.refdata_files import SHARED

MEDCOM = SHARED / "fixtures" / "medcom"
OIOXML = "application/xml"
FHIR_XML = "application/fhir+xml"
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class DocumentCase:
    name: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Base:
    name: str
    path: Path
    ids: tuple[bytes, ...]  # identifiers made new for every case, so no case is another's duplicate
    content_types: tuple[str, ...]

    def fresh(self, counter: itertools.count[int]) -> bytes:
        body = self.path.read_bytes()
        for old in self.ids:
            n = next(counter)
            new = f"{uuid.UUID(int=n)}" if len(old) > 20 else f"H{n:09d}"
            body = body.replace(old, new.encode())
        return body


BASES = (
    Base("ref01", MEDCOM / "oioxml" / "REF01_1.xml", (b"Kuv1234", b"Brv5678"), (OIOXML, "text/xml")),
    Base("dis91", MEDCOM / "oioxml" / "DIS91_1.xml", (b"KuvertNr012234", b"BrevNr00129"), (OIOXML,)),
    Base(
        "carecomm-xml",
        MEDCOM / "fhir" / "CareCommunication-new-Bundle-0d5b3c18.xml",
        (b"025bdfdd-397b-43e2-9e8c-272664a6e471",),
        (FHIR_XML,),
    ),
)
JSON_BASE = Base(
    "carecomm-json",
    MEDCOM / "fhir" / "Bundle-R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff.json",
    (b"559e4be0-e1f2-4371-969d-29bbbd5ca9d1",),
    (FHIR_JSON,),
)

Mutation = Callable[[bytes], bytes]
_ROOT_END = re.compile(rb"</[A-Za-z:]*(Emessage|Bundle)>\s*$")


def _inside_root(doc: bytes, insert: bytes) -> bytes:
    """`insert` just before the root element's end tag."""
    match = _ROOT_END.search(doc)
    assert match, "sample without a root end tag"
    return doc[: match.start()] + insert + doc[match.start() :]


def _prolog(doc: bytes, extra: bytes) -> bytes:
    """`extra` (a DOCTYPE) after the XML declaration."""
    head, sep, rest = doc.partition(b"?>")
    return head + sep + b"\n" + extra + rest if sep else extra + doc


def _declared(doc: bytes, encoding: bytes) -> bytes:
    return re.sub(rb'encoding="[^"]*"', b'encoding="' + encoding + b'"', doc, count=1)


LAUGHS = (
    b'<!DOCTYPE Emessage [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    b'<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">]>'
)

XML_MUTATIONS: dict[str, Mutation] = {
    "as-is": lambda d: d,
    "truncated-10": lambda d: d[: len(d) // 10],
    "truncated-50": lambda d: d[: len(d) // 2],
    "truncated-99": lambda d: d[: len(d) * 99 // 100],
    "unknown-medcom-ns": lambda d: re.sub(
        rb'xmlns="http://rep\.oio\.dk/[^"]*"',
        b'xmlns="http://rep.oio.dk/medcom.dk/xml/schemas/2013/09/02/"',
        d,
        count=1,
    ),
    "foreign-ns": lambda d: re.sub(rb'xmlns="[^"]*"', b'xmlns="http://example.com/not-medcom"', d, count=1),
    "no-ns": lambda d: re.sub(rb' xmlns="[^"]*"', b"", d, count=1),
    "billion-laughs": lambda d: _inside_root(_prolog(d, LAUGHS), b"<x>&f;</x>"),
    "external-entity": lambda d: _inside_root(
        _prolog(d, b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'), b"<x>&x;</x>"
    ),
    "external-dtd": lambda d: _prolog(d, b'<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">'),
    "parameter-entity": lambda d: _prolog(
        d, b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/hostname"> %p;]>'
    ),
    "xinclude": lambda d: _inside_root(
        d, b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"/>'
    ),
    "empty-element-flood": lambda d: _inside_root(d, b"<x/>" * 400_000),
    "deep-nesting": lambda d: _inside_root(d, b"<a>" * 50_000 + b"</a>" * 50_000),
    "attribute-flood": lambda d: _inside_root(
        d, b"<x " + b" ".join(b'a%d="1"' % i for i in range(40_000)) + b"/>"
    ),
    "comment-flood": lambda d: _inside_root(d, b"<!---->" * 200_000),
    "pi-flood": lambda d: _inside_root(d, b"<?p?>" * 200_000),
    "huge-text": lambda d: _inside_root(d, b"<x>" + b"y" * 4_000_000 + b"</x>"),
    "nul-byte": lambda d: d.replace(b"<Envelope>", b"<Envelope>\x00", 1).replace(
        b"<entry>", b"<entry>\x00", 1
    ),
    "invalid-utf8": lambda d: _declared(d, b"utf-8").replace(b"<Letter>", b"<Letter>\xff\xfe", 1) + b"\xc3",
    "declared-utf16": lambda d: _declared(d, b"UTF-16"),
    "declared-bogus": lambda d: _declared(d, b"x-no-such-encoding"),
    "bom-and-1252": lambda d: b"\xef\xbb\xbf" + d,
    "cpr-with-space": lambda d: re.sub(
        rb"<CivilRegistrationNumber>\d{10}", b"<CivilRegistrationNumber>010215 4123", d
    ).replace(b'value="2509479989"', b'value="010215 4123"'),
    "cpr-letters": lambda d: re.sub(
        rb"<CivilRegistrationNumber>\d{10}", b"<CivilRegistrationNumber>ABCDEFGHIJ", d
    ),
    "cdata-and-junk": lambda d: _inside_root(d, b"<x><![CDATA[ ]]> ]]&gt; <![CDATA[\x01]]></x>"),
    "empty-root": lambda d: (
        b'<?xml version="1.0"?><Emessage xmlns="http://rep.oio.dk/medcom.dk/xml/schemas/2005/08/07/"/>'
    ),
    "whitespace-only": lambda d: b"   \r\n\t  ",
    "not-xml": lambda d: b"Hej, her er en henvisning. CPR 010215-4123",
    "json-as-xml": lambda d: b'{"resourceType": "Bundle"}',
    "two-roots": lambda d: d + d,
    "schema-location": lambda d: d.replace(
        b"<Envelope>",
        b'<Envelope xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        b'xsi:schemaLocation="x http://127.0.0.1:9/x.xsd">',
        1,
    ),
}

HEAVY = {"empty-element-flood", "deep-nesting", "attribute-flood", "comment-flood", "pi-flood", "huge-text"}


def _json_inside(doc: bytes, insert: bytes) -> bytes:
    """`insert` as the first member of the top-level object."""
    brace = doc.index(b"{")
    return doc[: brace + 1] + insert + b"," + doc[brace + 1 :]


JSON_MUTATIONS: dict[str, Mutation] = {
    "as-is": lambda d: d,
    "nan": lambda d: _json_inside(d, b'"x": NaN'),
    "infinity": lambda d: _json_inside(d, b'"x": Infinity'),
    "minus-infinity": lambda d: _json_inside(d, b'"x": -Infinity'),
    "overflow": lambda d: _json_inside(d, b'"x": 1e999999'),
    "huge-integer": lambda d: _json_inside(d, b'"x": ' + b"9" * 6000),
    "duplicate-key": lambda d: _json_inside(d, b'"resourceType": "Patient"'),
    "deep-nesting": lambda d: _json_inside(d, b'"x": ' + b"[" * 100_000 + b"]" * 100_000),
    "node-flood": lambda d: _json_inside(d, b'"x": [' + b",".join([b"0"] * 500_000) + b"]"),
    "object-flood": lambda d: _json_inside(d, b'"x": [' + b",".join([b"{}"] * 300_000) + b"]"),
    "huge-string": lambda d: _json_inside(d, b'"x": "' + b"y" * 4_000_000 + b'"'),
    "invalid-utf8": lambda d: _json_inside(d, b'"x": "\xff\xfe\xc3"'),
    "lone-surrogate": lambda d: _json_inside(d, b'"x": "\\ud800"'),
    "nul-escape": lambda d: _json_inside(d, b'"x": "a\\u0000b"'),
    "raw-control": lambda d: _json_inside(d, b'"x": "a\x01\x00b"'),
    "bom": lambda d: b"\xef\xbb\xbf" + d,
    "trailing-comma": lambda d: d.rstrip().rstrip(b"}") + b",}",
    "comment": lambda d: b"/* kommentar */" + d,
    "single-quotes": lambda d: d.replace(b'"', b"'"),
    "top-level-array": lambda d: b"[" + d + b"]",
    "top-level-string": lambda d: b'"Bundle"',
    "top-level-null": lambda d: b"null",
    "empty-object": lambda d: b"{}",
    "truncated-50": lambda d: d[: len(d) // 2],
    "truncated-99": lambda d: d[: len(d) * 99 // 100],
    "wrong-resource": lambda d: d.replace(b'"resourceType" : "Bundle"', b'"resourceType" : "Patient"', 1),
    "xml-as-json": lambda d: b'<?xml version="1.0"?><Bundle xmlns="http://hl7.org/fhir"/>',
    "cpr-with-space": lambda d: d.replace(b'"2509479989"', b'"010215 4123"'),
}


def cases() -> list[DocumentCase]:
    """Every mutation on every sample and content type; heavy ones once per format, they cost the most."""
    counter = itertools.count(1)
    found: list[DocumentCase] = []
    for base in BASES:
        for name, mutate in XML_MUTATIONS.items():
            types = base.content_types[:1] if name in HEAVY else base.content_types
            for content_type in types:
                if name in HEAVY and base.name == "dis91":
                    continue
                body = mutate(base.fresh(counter))
                found.append(DocumentCase(f"{base.name}/{name}/{content_type}", body, content_type))
    for name, mutate in JSON_MUTATIONS.items():
        for content_type in (FHIR_JSON,):
            body = mutate(JSON_BASE.fresh(counter))
            found.append(DocumentCase(f"{JSON_BASE.name}/{name}", body, content_type))
    return found
