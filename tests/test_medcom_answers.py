"""MedCom answers: every OIOXML answer validates against MedCom's own XSD (by namespace, no network), and the
FHIR answers read back with what MedCom requires. Originals are built by hand from the sample files' facts,
so these tests do not depend on the parser."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from postkasse.medcom import answers
from postkasse.medcom.answers import (
    NS_2005,
    NS_2006,
    OIOXML_BASE,
    Author,
    ReceiptImpossible,
    care_communication_reply,
    clinical_email,
    fhir_acknowledgement,
    negative_receipt,
    new_identifier,
    positive_receipt,
)
from postkasse.medcom.document import REFUSE_CODES, Document, Letter, MedcomError, Party

MEDCOM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "medcom"
NS_2007 = OIOXML_BASE + "2007/02/01/"
FHIR = "{http://hl7.org/fhir}"
NOW = datetime(2024, 7, 1, 10, 5, tzinfo=UTC)  # 12:05 in Copenhagen (summer time)
HOSTILE = "Kunne ikke læses: æøå ÆØÅ <&> \"'\nLinje to\r\nLinje tre"

US = Party(
    ean="5790000000005", identifier="0101", identifier_code="kommunenummer", name="Postkassen, Børneudvalget"
)
LAEGEHUSET = Party(ean="5790000121526", identifier="079741", identifier_code="ydernummer", name="Lægehuset")
HILLEROED_B = Party(
    ean="5790000201389",
    identifier="2001060",
    identifier_code="sygehusafdelingsnummer",
    name="Hillerød Sygehus, Medicinsk afd. B",
)
HILLEROED_A = Party(
    ean="5790000120400",
    identifier="2001060",
    identifier_code="sygehusafdelingsnummer",
    name="HILLERØD SYGEHUS, KIRURGISK AFD. A",
)

REF01 = Document(
    format="oioxml",
    envelope_id="Kuv1234",
    sent="2005-01-15 12:02",
    acknowledgement_code="minuspositivkvitt",
    namespace=NS_2005,
    letters=(
        Letter(
            kind="XREF01",
            identifier="Brv5678",
            version_code="XH0130R",
            sender=LAEGEHUSET,
            receiver=HILLEROED_B,
            cpr="2406444917",
            patient_name="Ole Berggren",
        ),
    ),
)
DIS01 = Document(
    format="oioxml",
    envelope_id="KuvertNr012234",
    sent="1999-01-15 12:02",
    acknowledgement_code="minuspositivkvitt",
    namespace=NS_2005,
    letters=(
        Letter(
            kind="XDIS01",
            identifier="BrevNr00129",
            version_code="XD0133L",
            sender=Party(
                ean="5790000120420",
                identifier="2001060",
                identifier_code="sygehusafdelingsnummer",
                name="HILLERØD SYGEHUS, KIRURGISK AFD. A",
            ),
            receiver=Party(
                ean="5790000128686", identifier="291714", identifier_code="ydernummer", name="Lægehuset"
            ),
            cpr="0108584947",
            patient_name="Schwenlund Mosebryggersen",
            status_code="rettetbrev",
        ),
    ),
)
DIS91 = Document(
    format="oioxml",
    envelope_id="KuvertNr012234",
    sent="1998-12-13 12:10",
    acknowledgement_code="pluspositivkvitt",
    namespace=NS_2006,
    letters=(
        Letter(
            kind="XDIS91",
            identifier="BrevNr00129",
            version_code="XD9134L",
            sender=HILLEROED_A,
            receiver=Party(
                ean="5790000128700", identifier="291714", identifier_code="ydernummer", name="Lægehuset"
            ),
            cpr="1502824933",
            patient_name="Mosebryggersen, Knut Odvar",
            subject="Forundersøgelse",
        ),
    ),
)
# The envelope MedCom's CTL01/02/03 samples answer: two letters from 5790000181872 to 5790000120420.
MEDREF = Document(
    format="oioxml",
    envelope_id="MEDREF01095",
    sent="1999-11-11 18:46",
    acknowledgement_code="pluspositivkvitt",
    namespace=NS_2005,
    letters=tuple(
        Letter(
            kind="XREF01",
            identifier=identifier,
            version_code="H0130R",
            sender=Party(ean="5790000181872"),
            receiver=Party(ean="5790000120420"),
            cpr="2406444917",
            patient_name="Ole Berggren",
        )
        for identifier in ("1111FRE01095", "1111MAN01095")
    ),
)
HORSENS = Party(ean="5790000120420")
ORIGINALS = {"REF01": REF01, "DIS01": DIS01, "DIS91": DIS91, "MEDREF": MEDREF}

HERLEV_HEART = Party(
    ean="5790000209354",
    identifier="265161000016000",
    identifier_code="sorkode",
    name="Hjerteafdelingen på Herlev og Gentofte hospital",
)
CC_NEW = Document(
    format="fhir-xml",
    envelope_id="0d5b3c18-fab6-4d93-9d88-c9c8abf1f18c",
    sent="2024-06-01T13:55:00+02:00",
    acknowledgement_code=None,
    namespace="http://hl7.org/fhir",
    letters=(
        Letter(
            kind="CareCommunication",
            identifier="025bdfdd-397b-43e2-9e8c-272664a6e471",
            version_code=None,
            sender=HERLEV_HEART,
            receiver=Party(
                ean="5790001348120",
                identifier="953741000016009",
                identifier_code="sorkode",
                name="Plejecenter Herlev",
            ),
            cpr="0703921VJ4",
            patient_name="Birgit Berggren",
            event="care-communication-message",
        ),
    ),
)
SKEJBY = Party(
    ean="5790001987244",
    identifier="441211000016000",
    identifier_code="sorkode",
    name="Klinik for Ældresygdomme, AUH, Skejby",
)
AABENRAA = Party(
    ean="5790001353308",
    identifier="330461000016004",
    identifier_code="sorkode",
    name="Sundhedsplejen, Aabenraa kommune",
)


def _tek(bundle_id: str, format: Any) -> Document:
    return Document(
        format=format,
        envelope_id=bundle_id,
        sent="2024-08-28T15:20:00+02:00",
        acknowledgement_code=None,
        namespace="http://hl7.org/fhir",
        letters=(
            Letter(
                kind="CareCommunication",
                identifier="559e4be0-e1f2-4371-969d-29bbbd5ca9d1",
                version_code=None,
                sender=SKEJBY,
                receiver=AABENRAA,
                cpr="2509479989",
                patient_name="Bruno Test Elmer",
                event="care-communication-message",
            ),
        ),
    )


TEK_K = _tek("R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff", "fhir-json")
TEK_L = _tek("R-Tek-L-dublicate-fa97e431-332f-4605-ad37-c259dc2b8637", "fhir-xml")
FHIR_ORIGINALS = {"CareCommunication-new": CC_NEW, "R-Tek-K": TEK_K, "R-Tek-L": TEK_L}
ACK_OK = Document(
    format="fhir-xml",
    envelope_id="a8c041b8-c65a-4fde-a90f-962076918834",
    sent="2022-09-01T12:01:00Z",
    acknowledgement_code=None,
    namespace="http://hl7.org/fhir",
    letters=(
        Letter(
            kind="Acknowledgement",
            identifier="aba2d9bf-2c6c-47e8-bce4-7928bcd51019",
            version_code=None,
            sender=Party(ean="5790000209354", identifier="265161000016000", identifier_code="sorkode"),
            receiver=Party(ean="5790001348120", identifier="953741000016009", identifier_code="sorkode"),
            event="acknowledgement-message",
            answers_letter="42cb9200-f421-4d08-8391-7d51a2503cb4",
            response_code="ok",
        ),
    ),
)
CTL03 = Document(
    format="oioxml",
    envelope_id="KuvertNr1234",
    sent="1999-11-11 18:50",
    acknowledgement_code="minuspositivkvitt",
    namespace=NS_2005,
    letters=(
        Letter(
            kind="XCTL03",
            identifier="BrevNr5678",
            version_code="XC0330Q",
            sender=Party(ean="5790000120420"),
            receiver=Party(ean="5790000181872"),
            answers_envelope="MEDREF01095",
        ),
    ),
)


# Schemas and reading back


class _NoNetwork(etree.Resolver):
    """Schemas include each other by relative path only: fetching anything from the network fails the test."""

    def resolve(self, url: str | None, pubid: str | None, context: Any) -> Any:
        if url and "://" in url and not url.startswith("file:"):
            raise AssertionError(f"schema wanted {url}")
        return None


def _safe_parser() -> Any:
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    parser.resolvers.add(_NoNetwork())
    return parser


@cache
def schema(namespace: str) -> Any:
    """MedCom's EMessage.xsd for the namespace's date directory."""
    directory = namespace.removeprefix(OIOXML_BASE).strip("/")
    return etree.XMLSchema(etree.parse(str(MEDCOM / "xsd" / directory / "EMessage.xsd"), _safe_parser()))


def valid(data: bytes) -> Any:
    """The answer's root, after checking its declaration and validating it against its namespace's schema."""
    assert data.startswith(b"<?xml version='1.0' encoding='windows-1252'?>")
    root = etree.fromstring(data, _safe_parser())
    xsd = schema(etree.QName(root).namespace)
    assert xsd.validate(root), xsd.error_log
    return root


def find(root: Any, path: str) -> Any:
    ns = etree.QName(root).namespace
    found = root.find("/".join(f"{{{ns}}}{step}" for step in path.split("/")))
    assert found is not None, path
    return found


def text_of(root: Any, path: str) -> str:
    return str(find(root, path).text or "")


def findall(root: Any, path: str) -> list[Any]:
    ns = etree.QName(root).namespace
    return list(root.findall("/".join(f"{{{ns}}}{step}" for step in path.split("/"))))


def formatted(element: Any) -> str:
    """MedCom formatted text as plain text: <Break/> back to a newline."""
    parts = [element.text or ""]
    for child in element:
        assert etree.QName(child).localname == "Break"
        parts += ["\n", child.tail or ""]
    return "".join(parts)


def without_personal_data(data: bytes, *documents: Document) -> None:
    text = data.decode(
        "utf-8" if data.lstrip().startswith((b"{", b"<?xml version='1.0' encoding='UTF-8'")) else "cp1252"
    )
    for document in documents:
        for letter in document.letters:
            assert letter.cpr is None or letter.cpr not in text
            for word in re.split(r"[ ,]+", letter.patient_name or ""):
                assert not word or word not in text, word


def normalise_json(value: Any) -> Any:
    """FHIR JSON with every value a list and narratives' XHTML dropped, to compare with normalise_xml."""
    if isinstance(value, dict):
        return {
            key: [normalise_json(x) for x in (item if isinstance(item, list) else [item])]
            for key, item in value.items()
            if key != "div"
        }
    return value


def normalise_xml(element: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    if etree.QName(element).localname == "extension":
        out["url"] = [element.get("url")]
    for child in element:
        name = etree.QName(child).localname
        if name == "div":
            continue
        if name == "resource":
            inner = normalise_xml(child[0])
            inner["resourceType"] = [etree.QName(child[0]).localname]
            out.setdefault(name, []).append(inner)
        elif child.get("value") is not None and len(child) == 0:
            out.setdefault(name, []).append(child.get("value"))
        else:
            out.setdefault(name, []).append(normalise_xml(child))
    return out


def read_fhir(data: bytes, *, ours: bool = True) -> dict[str, list[Any]]:
    """A FHIR bundle in either format, normalised; ours are UTF-8 with lxml's declaration."""
    if data.lstrip().startswith(b"{"):
        result: dict[str, list[Any]] = normalise_json(json.loads(data.decode("utf-8")))
        return result
    assert not ours or data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(data, _safe_parser())
    assert root.tag == FHIR + "Bundle"
    bundle = normalise_xml(root)
    bundle["resourceType"] = ["Bundle"]
    return bundle


def resources(bundle: dict[str, list[Any]]) -> dict[str, list[dict[str, list[Any]]]]:
    by_type: dict[str, list[dict[str, list[Any]]]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"][0]
        by_type.setdefault(resource["resourceType"][0], []).append(resource)
    return by_type


def get(node: dict[str, list[Any]], path: str) -> Any:
    """The first value along a dotted path."""
    value: Any = node
    for step in path.split("."):
        value = value[step][0]
    return value


def paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, values in node.items():
            here = f"{prefix}/{key}"
            if key == "resourceType":
                continue
            yield here
            for value in values:
                inner = f"{here}/{value['resourceType'][0]}" if key == "resource" else here
                yield from paths(value, inner)


def fixture_fhir(name: str) -> dict[str, list[Any]]:
    (path,) = (MEDCOM / "fhir").glob(name)
    return read_fhir(path.read_bytes(), ours=False)


def profiles(bundle: dict[str, list[Any]]) -> set[str]:
    found = set(bundle["meta"][0]["profile"])
    for entry in bundle["entry"]:
        found |= set(entry["resource"][0]["meta"][0]["profile"])
    return found


def is_uuid4(value: str) -> bool:
    return uuid.UUID(value).version == 4 and str(uuid.UUID(value)) == value


def receipt(kind: Callable[..., bytes], *args: Any, **kwargs: Any) -> bytes:
    return kind(*args, us=US, envelope_id=new_identifier(), letter_id=new_identifier(), now=NOW, **kwargs)


# The validator itself


@pytest.mark.parametrize(
    "name", ["CTL01_1", "CTL02_1", "CTL03_1", "REF01_1", "DIS01_1", "DIS91_1", "korr_x9134"]
)
def test_the_validator_accepts_medcoms_own_samples(name: str) -> None:
    document = etree.parse(str(MEDCOM / "oioxml" / f"{name}.xml"), _safe_parser())
    assert schema(etree.QName(document.getroot()).namespace).validate(document)


def test_the_validator_rejects_a_receipt_without_its_original_envelope() -> None:
    root = valid(receipt(positive_receipt, REF01))
    identifier = find(root, "PositiveReceipt/OriginalEmessage/OriginalEnvelopeIdentifier")
    identifier.getparent().remove(identifier)
    assert not schema(NS_2005).validate(root)


# Identifiers


def test_new_identifiers_fit_the_schema_and_do_not_repeat() -> None:
    made = [new_identifier() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9A-Z]{14}", x) for x in made)
    assert len(set(made)) == len(made)


def test_new_identifiers_follow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    earlier = new_identifier()
    monkeypatch.setattr(answers.time, "time_ns", lambda: 1_700_000_000_001_000_000)
    assert new_identifier()[:8] > earlier[:8]


@pytest.mark.parametrize("bad", ["", "A" * 15])
def test_own_identifiers_outside_the_schemas_limits_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="1-14"):
        positive_receipt(REF01, us=US, envelope_id=bad, letter_id="L1", now=NOW)
    with pytest.raises(ValueError, match="1-14"):
        positive_receipt(REF01, us=US, envelope_id="E1", letter_id=bad, now=NOW)


# XCTL03 PositiveReceipt


@pytest.mark.parametrize("name", list(ORIGINALS))
def test_positive_receipt_validates_and_names_the_original(name: str) -> None:
    original = ORIGINALS[name]
    envelope_id, letter_id = new_identifier(), new_identifier()
    data = positive_receipt(original, us=US, envelope_id=envelope_id, letter_id=letter_id, now=NOW)
    root = valid(data)
    assert etree.QName(root).namespace == NS_2005  # the only version that defines the receipt, even for DIS91
    assert text_of(root, "Envelope/Identifier") == envelope_id
    assert text_of(root, "Envelope/AcknowledgementCode") == "minuspositivkvitt"
    assert text_of(root, "PositiveReceipt/Letter/Identifier") == letter_id
    assert text_of(root, "PositiveReceipt/Letter/VersionCode") == "XC0330Q"
    assert text_of(root, "PositiveReceipt/Letter/StatisticalCode") == "XCTL03"
    first = original.letters[0]
    assert text_of(root, "PositiveReceipt/Sender/EANIdentifier") == US.ean
    assert text_of(root, "PositiveReceipt/Receiver/EANIdentifier") == first.sender.ean
    emessage = "PositiveReceipt/OriginalEmessage"
    assert text_of(root, f"{emessage}/OriginalEnvelopeIdentifier") == original.envelope_id
    assert text_of(root, f"{emessage}/OriginalSender/EANIdentifier") == first.sender.ean
    assert text_of(root, f"{emessage}/OriginalReceiver/EANIdentifier") == first.receiver.ean
    listed = [
        (text_of(x, "OriginalLetterIdentifier"), text_of(x, "OriginalVersionCode"))
        for x in findall(root, f"{emessage}/OriginalLetter")
    ]
    assert listed == [(x.identifier, x.version_code) for x in original.letters]
    assert not findall(root, f"{emessage}/RefuseCode")
    without_personal_data(data, original)


def test_positive_receipt_for_some_letters_is_medcoms_ctl03_sample() -> None:
    """The sample receipts MEDREF01095's letter 1111FRE01095 for 5790000120420: the same, to the byte."""
    root = valid(
        positive_receipt(
            MEDREF,
            us=HORSENS,
            envelope_id="KuvertNr1234",
            letter_id="BrevNr5678",
            now=NOW,
            letter_ids={"1111FRE01095"},
        )
    )
    sample = etree.parse(str(MEDCOM / "oioxml" / "CTL03_1.xml"), _safe_parser()).getroot()
    for path in ("PositiveReceipt/OriginalEmessage", "PositiveReceipt/Letter", "PositiveReceipt/Sender"):
        assert etree.tostring(find(root, path), method="c14n") == etree.tostring(
            find(sample, path), method="c14n"
        )


@pytest.mark.parametrize(
    ("moment", "date", "clock"),
    [
        (datetime(2024, 1, 15, 23, 30, tzinfo=UTC), "2024-01-16", "00:30"),  # winter: UTC+1, next day
        (datetime(2024, 7, 1, 22, 30, tzinfo=UTC), "2024-07-02", "00:30"),  # summer: UTC+2, next day
        (datetime(2024, 10, 27, 0, 59, tzinfo=UTC), "2024-10-27", "02:59"),  # last minute of summer time
        (
            datetime(2024, 10, 27, 1, 0, tzinfo=UTC),
            "2024-10-27",
            "02:00",
        ),  # and the hour again in winter time
    ],
)
def test_sent_is_danish_local_time(moment: datetime, date: str, clock: str) -> None:
    root = valid(positive_receipt(REF01, us=US, envelope_id="E", letter_id="L", now=moment))
    assert (text_of(root, "Envelope/Sent/Date"), text_of(root, "Envelope/Sent/Time")) == (date, clock)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        positive_receipt(REF01, us=US, envelope_id="E", letter_id="L", now=datetime(2024, 1, 1))


@pytest.mark.parametrize("original", [CC_NEW, CTL03], ids=["fhir", "a-receipt"])
def test_positive_receipt_only_for_oioxml_letters_never_for_a_receipt(original: Document) -> None:
    with pytest.raises(ValueError):
        receipt(positive_receipt, original)


def test_positive_receipt_needs_the_senders_location_number() -> None:
    letter = REF01.letters[0]
    nameless = Document(**{**REF01.__dict__, "letters": (Letter(**{**letter.__dict__, "sender": Party()}),)})
    with pytest.raises(ReceiptImpossible):
        receipt(positive_receipt, nameless)


# XCTL02 NegativeReceipt


@pytest.mark.parametrize("code", REFUSE_CODES)
@pytest.mark.parametrize("name", list(ORIGINALS))
def test_envelope_refusal_validates_with_each_code_and_hostile_text(code: str, name: str) -> None:
    original = ORIGINALS[name]
    data = receipt(negative_receipt, original, MedcomError(code, HOSTILE, envelope_id=original.envelope_id))
    root = valid(data)
    assert etree.QName(root).namespace == NS_2005
    assert text_of(root, "NegativeReceipt/Letter/VersionCode") == "XC0230Q"
    assert text_of(root, "NegativeReceipt/Letter/StatisticalCode") == "XCTL02"
    assert text_of(root, "NegativeReceipt/Receiver/EANIdentifier") == original.letters[0].sender.ean
    emessage = "NegativeReceipt/OriginalEmessage"
    assert text_of(root, f"{emessage}/OriginalEnvelopeIdentifier") == original.envelope_id
    assert text_of(root, f"{emessage}/RefuseCode") == code
    assert formatted(find(root, f"{emessage}/RefuseText")) == HOSTILE.replace("\r\n", "\n")
    letters = findall(root, f"{emessage}/OriginalLetter")
    assert [text_of(x, "OriginalLetterIdentifier") for x in letters] == [
        x.identifier for x in original.letters
    ]
    assert all(not findall(x, "RefuseCode") for x in letters)
    assert "æøå ÆØÅ".encode("cp1252") in data and b"&lt;&amp;&gt;" in data
    without_personal_data(data, original)


def test_letter_refusal_is_medcoms_ctl02_sample() -> None:
    """CTL02_1.xml refuses letter 1111MAN01095 of MEDREF01095 with problem_med_version: so do we."""
    text = "EDI-brev med nummeret 1111MAN01095 har ikke kunnet modtages.\nMed venlig hilsen"
    error = MedcomError("problem_med_version", text, envelope_id="MEDREF01095", letter_id="1111MAN01095")
    root = valid(
        negative_receipt(
            MEDREF, error, us=HORSENS, envelope_id="KuvertNr1234", letter_id="BrevNr5678", now=NOW
        )
    )
    sample = etree.parse(str(MEDCOM / "oioxml" / "CTL02_1.xml"), _safe_parser()).getroot()
    emessage = "NegativeReceipt/OriginalEmessage"
    for path in ("OriginalEnvelopeIdentifier", "OriginalSender", "OriginalReceiver"):
        ours, theirs = find(root, f"{emessage}/{path}"), find(sample, f"{emessage}/{path}")
        assert etree.tostring(ours, method="c14n") == etree.tostring(theirs, method="c14n")
    assert not findall(root, f"{emessage}/RefuseCode")
    (letter,) = findall(root, f"{emessage}/OriginalLetter")
    (expected,) = findall(sample, f"{emessage}/OriginalLetter")
    for path in ("OriginalLetterIdentifier", "OriginalVersionCode", "RefuseCode"):
        assert text_of(letter, path) == text_of(expected, path)
    assert formatted(find(letter, "RefuseText")) == text


def test_envelope_and_letter_refusals_together() -> None:
    errors = [
        MedcomError("problem_med_modtagerID", "Modtageren findes ikke"),
        MedcomError("syntaksfejl", "Brevet <Patient> mangler", letter_id="1111FRE01095"),
        MedcomError("ikke_specificeret", "Og noget mere"),
    ]
    root = valid(receipt(negative_receipt, MEDREF, errors))
    emessage = "NegativeReceipt/OriginalEmessage"
    assert (
        text_of(root, f"{emessage}/RefuseCode") == "problem_med_modtagerID"
    )  # the first; the schema has one
    assert formatted(find(root, f"{emessage}/RefuseText")) == "Modtageren findes ikke\nOg noget mere"
    fre, man = findall(root, f"{emessage}/OriginalLetter")
    assert text_of(fre, "RefuseCode") == "syntaksfejl"
    assert formatted(find(fre, "RefuseText")) == "Brevet <Patient> mangler"
    assert text_of(man, "OriginalLetterIdentifier") == "1111MAN01095" and not findall(man, "RefuseCode")


def test_a_document_that_could_not_be_read_is_refused_by_its_envelope_id() -> None:
    error = MedcomError("syntaksfejl", "Dokumentet er ikke gyldig XML", envelope_id="KuvX")
    data = receipt(negative_receipt, None, error, original_sender=LAEGEHUSET)
    root = valid(data)
    emessage = "NegativeReceipt/OriginalEmessage"
    assert text_of(root, f"{emessage}/OriginalEnvelopeIdentifier") == "KuvX"
    assert text_of(root, f"{emessage}/OriginalSender/EANIdentifier") == LAEGEHUSET.ean
    assert text_of(root, f"{emessage}/OriginalReceiver/EANIdentifier") == US.ean  # it came to us
    assert text_of(root, f"{emessage}/RefuseCode") == "syntaksfejl"
    assert not findall(root, f"{emessage}/OriginalLetter")


def test_a_letter_refusal_that_cannot_name_its_letter_refuses_the_envelope() -> None:
    error = MedcomError("problem_med_version", "Ukendt brevtype", envelope_id="KuvX", letter_id="Brv1")
    root = valid(receipt(negative_receipt, None, error, original_sender=LAEGEHUSET))
    emessage = "NegativeReceipt/OriginalEmessage"
    assert text_of(root, f"{emessage}/RefuseCode") == "problem_med_version"
    assert formatted(find(root, f"{emessage}/RefuseText")) == "Brev Brv1: Ukendt brevtype"
    assert not findall(root, f"{emessage}/OriginalLetter")


def test_a_refusal_for_a_letter_the_original_does_not_hold_is_folded_into_the_envelope() -> None:
    error = MedcomError("syntaksfejl", "Findes ikke", letter_id="Brv9999")
    root = valid(receipt(negative_receipt, REF01, error))
    emessage = "NegativeReceipt/OriginalEmessage"
    assert text_of(root, f"{emessage}/RefuseCode") == "syntaksfejl"
    assert [text_of(x, "OriginalLetterIdentifier") for x in findall(root, f"{emessage}/OriginalLetter")] == [
        "Brv5678"
    ]


@pytest.mark.parametrize(
    ("envelope_id", "sender"),
    [(None, LAEGEHUSET), ("A" * 15, LAEGEHUSET), ("KuvX", None), ("KuvX", Party(identifier="079741"))],
    ids=["no-envelope-id", "envelope-id-too-long", "no-sender", "sender-without-location-number"],
)
def test_no_receipt_when_the_schema_cannot_name_the_original(
    envelope_id: str | None, sender: Party | None
) -> None:
    """OriginalEnvelopeIdentifier (1-14 characters) and a location number to answer are required: made-up ones
    could match another envelope, so the caller answers by the channel instead."""
    error = MedcomError("syntaksfejl", "Ulæselig", envelope_id=envelope_id)
    with pytest.raises(ReceiptImpossible):
        receipt(negative_receipt, None, error, original_sender=sender)


@pytest.mark.parametrize("original", [CC_NEW, CTL03], ids=["fhir", "a-receipt"])
def test_negative_receipt_only_for_oioxml_never_for_a_receipt(original: Document) -> None:
    with pytest.raises(ValueError):
        receipt(negative_receipt, original, MedcomError("syntaksfejl", "x"))


def test_a_negative_receipt_needs_a_refusal() -> None:
    with pytest.raises(ValueError, match="refusal"):
        receipt(negative_receipt, REF01, [])


def test_characters_xml_cannot_carry_are_dropped_not_fatal() -> None:
    root = valid(receipt(negative_receipt, REF01, MedcomError("syntaksfejl", "NUL\x00 og \x1bESC")))
    assert formatted(find(root, "NegativeReceipt/OriginalEmessage/RefuseText")) == "NUL og ESC"


# FHIR Acknowledgement


@pytest.mark.parametrize("as_json", [False, True], ids=["xml", "json"])
@pytest.mark.parametrize("code", ["ok", "transient-error", "fatal-error"])
@pytest.mark.parametrize("name", list(FHIR_ORIGINALS))
def test_acknowledgement_reads_back(name: str, code: Any, as_json: bool) -> None:
    original = FHIR_ORIGINALS[name]
    issue = None if code == "ok" else "Meddelelsen <kunne> ikke læses & gemmes"
    data = fhir_acknowledgement(
        original,
        code=code,
        issue=issue,
        us_sor="123456789012345",
        us_name="Postkassen",
        now=NOW,
        as_json=as_json,
    )
    bundle = read_fhir(data)
    assert data.lstrip().startswith(b"{") == as_json
    found = resources(bundle)
    (header,) = found["MessageHeader"]
    assert get(bundle, "type") == "message"
    assert is_uuid4(get(bundle, "id")) and get(bundle, "id") != original.envelope_id
    assert is_uuid4(get(header, "id")) and get(header, "id") != original.letters[0].identifier
    assert get(bundle, "entry")["resource"][0]["resourceType"] == ["MessageHeader"]  # MessageHeader first
    assert get(header, "eventCoding.code") == "acknowledgement-message"
    assert get(header, "response.identifier") == original.letters[0].identifier
    assert get(header, "response.code") == code
    assert get(header, "destination.endpoint") == "https://sor2.sum.dsdn.dk/#id=" + str(
        original.letters[0].sender.identifier
    )
    assert get(header, "source.endpoint") == "https://sor2.sum.dsdn.dk/#id=123456789012345"
    organizations = {get(x, "id"): x for x in found["Organization"]}
    receiver = organizations[get(header, "destination.receiver.reference").removeprefix("Organization/")]
    assert {(get(i, "system"), get(i, "value")) for i in [*receiver["identifier"]]} == {
        ("https://www.gs1.org/gln", original.letters[0].sender.ean),
        ("urn:oid:1.2.208.176.1.1", original.letters[0].sender.identifier),
    }
    sender = organizations[get(header, "sender.reference").removeprefix("Organization/")]
    assert get(sender, "name") == "Postkassen"
    (provenance,) = found["Provenance"]
    assert get(provenance, "activity.coding.code") == "acknowledgement"
    assert get(provenance, "target.reference") == f"MessageHeader/{get(header, 'id')}"
    assert get(provenance, "entity.what.reference") == f"MessageHeader/{original.letters[0].identifier}"
    if code == "ok":
        assert "OperationOutcome" not in found and "details" not in get(header, "response")
    else:
        (outcome,) = found["OperationOutcome"]
        assert get(header, "response.details.reference") == f"OperationOutcome/{get(outcome, 'id')}"
        assert get(outcome, "issue.severity") == "error"
        assert get(outcome, "issue.code") == ("transient" if code == "transient-error" else "invalid")
        assert get(outcome, "issue.details.text") == issue
    assert "Patient" not in found
    without_personal_data(data, original)


def test_acknowledgement_copies_medcoms_structure_and_profiles() -> None:
    fatal = fixture_fhir("Ack-fatal-error-*.xml")
    transient = fixture_fhir("Ack-transient-error-*.json")
    for sample, as_json in ((fatal, False), (transient, True)):
        ours = read_fhir(
            fhir_acknowledgement(
                TEK_K,
                code="fatal-error",
                issue="Ukendt modtager",
                issue_code="MSG_Receiver_Identifier_UNKNOWN",
                us_sor="123456789012345",
                us_name="Postkassen",
                now=NOW,
                as_json=as_json,
            )
        )
        assert profiles(ours) == profiles(sample)
        ours_paths, sample_paths = set(paths(ours)), set(paths(sample))
        extra = ours_paths - sample_paths
        assert extra == {"/entry/resource/OperationOutcome/issue/details/text"}, extra  # the issue in words
    ok = fixture_fhir("Ack-ok-*.xml")
    ours = read_fhir(fhir_acknowledgement(TEK_L, code="ok", issue=None, us_sor="1", us_name="P", now=NOW))
    assert profiles(ours) == profiles(ok)
    assert set(paths(ours)) <= set(paths(ok))


def test_acknowledgement_issue_codes_name_their_system() -> None:
    def coding(issue_code: str) -> Any:
        data = fhir_acknowledgement(
            TEK_K, code="fatal-error", issue="x", issue_code=issue_code, us_sor="1", us_name="P", now=NOW
        )
        return get(resources(read_fhir(data))["OperationOutcome"][0], "issue.details.coding")

    medcom = coding("MSG_Receiver_Identifier_UNKNOWN")
    assert (
        get(medcom, "system")
        == "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-acknowledgement-error-codes"
    )
    assert (
        get(coding("MSG_BAD_SYNTAX"), "system") == "http://terminology.hl7.org/CodeSystem/operation-outcome"
    )


def test_acknowledgement_answers_in_the_originals_format_unless_told() -> None:
    assert fhir_acknowledgement(TEK_K, code="ok", issue=None, us_sor="1", us_name="P", now=NOW).startswith(
        b"{"
    )
    assert fhir_acknowledgement(TEK_L, code="ok", issue=None, us_sor="1", us_name="P", now=NOW).startswith(
        b"<?xml"
    )


def test_a_duplicate_gets_the_same_acknowledgement_under_new_ids() -> None:
    """R-Tek-K and R-Tek-L carry one MessageHeader.id in two bundles: the same answer, new ids each time."""
    first, second = (
        read_fhir(
            fhir_acknowledgement(x, code="ok", issue=None, us_sor="1", us_name="P", now=NOW, as_json=True)
        )
        for x in (TEK_K, TEK_L)
    )
    headers = [resources(x)["MessageHeader"][0] for x in (first, second)]
    assert get(headers[0], "response") == get(headers[1], "response")
    assert get(first, "id") != get(second, "id") and get(headers[0], "id") != get(headers[1], "id")


def test_an_acknowledgement_is_never_acknowledged() -> None:
    with pytest.raises(ValueError, match="never acknowledged"):
        fhir_acknowledgement(ACK_OK, code="ok", issue=None, us_sor="1", us_name="P", now=NOW)


@pytest.mark.parametrize(
    ("original", "code", "issue", "match"),
    [
        (REF01, "ok", None, "XCTL"),
        (TEK_K, "ok", "but why", "no issue"),
        (TEK_K, "fatal-error", None, "issue"),
        (TEK_K, "maybe", None, "unknown response code"),
    ],
)
def test_acknowledgement_refuses_what_medcom_does_not_allow(
    original: Document, code: Any, issue: str | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fhir_acknowledgement(original, code=code, issue=issue, us_sor="1", us_name="P", now=NOW)


# XDIS91 ClinicalEmail


@pytest.mark.parametrize(
    ("name", "namespace", "expected"),
    [
        ("REF01", None, NS_2006),  # an XREF01's sender gets the current XDIS91
        ("DIS01", None, NS_2006),
        ("DIS91", None, NS_2006),  # an XDIS91 is answered in its own version
        ("REF01", NS_2005, NS_2005),  # or as told
    ],
)
def test_clinical_email_validates_and_references_the_original(
    name: str, namespace: str | None, expected: str
) -> None:
    original = ORIGINALS[name]
    letter = original.letters[0]
    text = "Kære læge,\nVi har modtaget henvisningen <&> tak.\r\n\nMed venlig hilsen\nUdvalget"
    data = clinical_email(
        original=original,
        letter_ref=None,
        us=US,
        to=letter.sender,
        cpr=str(letter.cpr),
        patient_name=letter.patient_name,
        subject="Svar på henvisning vedr. barn",
        text=text,
        envelope_id="E1",
        letter_id="L1",
        now=NOW,
        namespace=namespace,
    )
    root = valid(data)
    assert etree.QName(root).namespace == expected
    assert text_of(root, "ClinicalEmail/Letter/VersionCode") == (
        "XD9134L" if expected == NS_2006 else "XD9133L"
    )
    assert text_of(root, "ClinicalEmail/Letter/TypeCode") == "XDIS91"
    assert text_of(root, "ClinicalEmail/Letter/Authorisation/Time") == "12:05"
    assert text_of(root, "ClinicalEmail/Sender/EANIdentifier") == US.ean
    assert text_of(root, "ClinicalEmail/Sender/OrganisationName") == "Postkassen"
    assert text_of(root, "ClinicalEmail/Sender/DepartmentName") == "Børneudvalget"
    assert text_of(root, "ClinicalEmail/Receiver/EANIdentifier") == letter.sender.ean
    assert text_of(root, "ClinicalEmail/Receiver/Identifier") == letter.sender.identifier
    assert text_of(root, "ClinicalEmail/Patient/CivilRegistrationNumber") == letter.cpr
    body = formatted(find(root, "ClinicalEmail/ClinicalInformation/Text01"))
    reference = f"Vedr. jeres brev {letter.identifier} ({letter.kind}), kuvert {original.envelope_id}"
    assert reference in body.splitlines()[0 if expected == NS_2006 else 1]
    assert body.endswith(text.replace("\r\n", "\n"))
    if expected == NS_2006:
        assert text_of(root, "ClinicalEmail/AdditionalInformation/Subject") == "Svar på henvisning vedr. barn"
    else:
        assert body.startswith("Emne: Svar på henvisning vedr. barn\n")
    assert b"&lt;&amp;&gt;" in data and "Kære læge".encode("cp1252") in data


def test_clinical_email_splits_the_patients_name() -> None:
    letter = DIS91.letters[0]
    root = valid(
        clinical_email(
            original=DIS91,
            letter_ref=letter,
            us=US,
            to=letter.sender,
            cpr=str(letter.cpr),
            patient_name=letter.patient_name,
            subject="Svar",
            text="Tak",
            envelope_id="E1",
            letter_id="L1",
            now=NOW,
        )
    )
    assert text_of(root, "ClinicalEmail/Patient/PersonSurnameName") == "Mosebryggersen"
    assert text_of(root, "ClinicalEmail/Patient/PersonGivenName") == "Knut Odvar"


def test_clinical_email_without_an_original_and_with_long_or_odd_fields() -> None:
    to = Party(ean="5790001987244", name="Klinik for Ældresygdomme med et meget langt afdelingsnavn")
    root = valid(
        clinical_email(
            original=None,
            letter_ref=None,
            us=US,
            to=to,
            cpr="0101010101",
            patient_name="Ole",
            subject="Et emne " * 20,
            text="Linje\x0b med lodret tabulator",
            envelope_id=new_identifier(),
            letter_id=new_identifier(),
            now=NOW,
        )
    )
    assert text_of(root, "ClinicalEmail/Receiver/IdentifierCode") == "lokationsnummer"
    assert len(text_of(root, "ClinicalEmail/Receiver/OrganisationName")) == 35
    assert len(text_of(root, "ClinicalEmail/AdditionalInformation/Subject")) == 70
    assert formatted(find(root, "ClinicalEmail/ClinicalInformation/Text01")) == "Linje med lodret tabulator"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"cpr": "12345"}, "CPR"),
        ({"patient_name": None}, "surname"),
        ({"namespace": NS_2007}, "no ClinicalEmail"),
        ({"us": Party(ean="5790000000005")}, "organisation name"),
        ({"to": Party(identifier="079741", identifier_code="ydernummer")}, "location number"),
    ],
)
def test_clinical_email_refuses_what_the_schema_cannot_hold(changes: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {
        "original": REF01,
        "letter_ref": None,
        "us": US,
        "to": LAEGEHUSET,
        "cpr": "2406444917",
        "patient_name": "Ole Berggren",
        "subject": "Svar",
        "text": "Tak",
        "envelope_id": "E1",
        "letter_id": "L1",
        "now": NOW,
    }
    with pytest.raises(ValueError, match=match):
        clinical_email(**{**arguments, **changes})


# CareCommunication reply


@pytest.mark.parametrize("name", list(FHIR_ORIGINALS))
def test_care_communication_reply_reads_back(name: str) -> None:
    original = FHIR_ORIGINALS[name]
    previous = original.letters[0]
    text = "Tak for henvendelsen.\nVi vender tilbage <snarest> & inden fredag."
    data = care_communication_reply(
        original=original, us_sor="123456789012345", us_name="Postkassen", text=text, now=NOW
    )
    assert data.lstrip().startswith(b"{") == (original.format == "fhir-json")
    bundle = read_fhir(data)
    found = resources(bundle)
    (header,) = found["MessageHeader"]
    assert (
        is_uuid4(get(bundle, "id"))
        and is_uuid4(get(header, "id"))
        and get(header, "id") != previous.identifier
    )
    assert get(header, "eventCoding.code") == "care-communication-message"
    assert get(header, "destination.endpoint") == f"https://sor2.sum.dsdn.dk/#id={previous.sender.identifier}"
    (communication,) = found["Communication"]
    assert get(header, "focus.reference") == f"Communication/{get(communication, 'id')}"
    assert get(communication, "status") == "unknown"
    assert get(communication, "category.coding.code") == "regarding-referral"
    assert get(communication, "payload.contentString") == text
    payload_id = next(
        get(x, "valueIdentifier.value")
        for x in get(communication, "payload")["extension"]
        if get(x, "url").endswith("identifier-extension")
    )
    (provenance,) = found["Provenance"]
    assert get(provenance, "activity.coding.code") == "reply-message"
    revision, source = provenance["entity"]
    assert (get(revision, "role"), get(revision, "what.reference")) == (
        "revision",
        f"MessageHeader/{previous.identifier}",
    )
    assert (get(source, "role"), get(source, "what.identifier.value")) == ("source", payload_id)
    (patient,) = found["Patient"]
    assert get(communication, "subject.reference") == f"Patient/{get(patient, 'id')}"
    assert get(patient, "identifier.value") == previous.cpr
    system = "urn:oid:1.2.208.176.1.2" if str(previous.cpr).isdigit() else "urn:oid:1.2.208.176.1.6.1.1"
    assert get(patient, "identifier.system") == system
    assert get(patient, "name.family") == str(previous.patient_name).split()[-1]
    assert profiles(bundle) <= profiles(fixture_fhir("CareCommunication-new-*.xml"))


def test_care_communication_reply_copies_medcoms_structure() -> None:
    author = Author(name="Sara Sagsbehandler", role="Sagsbehandler", phone="70101010")
    ours = read_fhir(
        care_communication_reply(
            original=CC_NEW, us_sor="1", us_name="P", text="Svar", now=NOW, author=author, topic="Henvisning"
        )
    )
    extra = set(paths(ours)) - set(paths(fixture_fhir("CareCommunication-new-*.xml")))
    assert extra == {
        "/entry/resource/Provenance/entity/what/reference",  # the previous message, by MessageHeader
        "/entry/resource/Communication/topic",
        "/entry/resource/Communication/topic/text",
        "/entry/resource/PractitionerRole/code/text",  # the role in words: we have no SKS code for it
    }, extra


def test_care_communication_reply_with_author_and_thread() -> None:
    author = Author(name="Sara Sagsbehandler", role="Sagsbehandler", phone="70101010")
    thread = "urn:uuid:cefe0dee-13b5-4bec-a843-09b4d58e4fe6"
    bundle = read_fhir(
        care_communication_reply(
            original=TEK_K,
            us_sor="1",
            us_name="P",
            text="Svar",
            now=NOW,
            author=author,
            thread_identifier=thread,
        )
    )
    found = resources(bundle)
    communication = found["Communication"][0]
    assert get(communication, "identifier.value") == thread
    extensions = {get(x, "url").rsplit("/", 1)[-1]: x for x in get(communication, "payload")["extension"]}
    assert get(extensions["medcom-core-contact-extension"], "valueContactPoint.value") == "70101010"
    role = found["PractitionerRole"][0]
    assert get(extensions["medcom-core-practitioner-extension"], "valueReference.reference") == (
        f"PractitionerRole/{get(role, 'id')}"
    )
    assert get(role, "code.text") == "Sagsbehandler"
    practitioner = found["Practitioner"][0]
    assert get(role, "practitioner.reference") == f"Practitioner/{get(practitioner, 'id')}"
    assert (get(practitioner, "name.family"), get(practitioner, "name.given")) == ("Sagsbehandler", "Sara")


def test_care_communication_reply_to_an_oioxml_letter_names_it_as_medcom_does() -> None:
    bundle = read_fhir(
        care_communication_reply(original=REF01, us_sor="1", us_name="P", text="Svar", now=NOW)
    )
    revision = resources(bundle)["Provenance"][0]["entity"][0]
    assert get(revision, "what.identifier.value") == "Brv5678#5790000121526"


@pytest.mark.parametrize(
    ("original", "changes", "match"),
    [
        (ACK_OK, {}, "acknowledgement"),
        (TEK_K, {"category": "other"}, "topic"),
        (
            Document(
                **{**TEK_K.__dict__, "letters": (Letter(**{**TEK_K.letters[0].__dict__, "cpr": None}),)}
            ),
            {},
            "CPR",
        ),
    ],
)
def test_care_communication_reply_refuses(original: Document, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        care_communication_reply(original=original, us_sor="1", us_name="P", text="x", now=NOW, **changes)
