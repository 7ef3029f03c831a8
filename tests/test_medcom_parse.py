"""MedCom parsing: every shared sample is read and its facts asserted; hostile documents are refused at once.

The samples are read from ../shared/fixtures/medcom (never copied in). Hostile cases run in a daemon thread
with a generous bound, only so that a hang fails one test instead of stopping the run; speed is not asserted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from lxml import etree  # type: ignore[import-untyped]

from postkasse.medcom import parse as parse_module
from postkasse.medcom.document import Attachment, Letter, MedcomError, Party
from postkasse.medcom.parse import MAX_DEPTH, Limits, Schemas, parse
from postkasse.routing.facts import Address, Facts
from postkasse.routing.medcom import facts

MEDCOM = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "medcom"
NS_2005 = "http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/2005/08/07/"
NS_2006 = "http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/2006/07/01/"
FHIR = "http://hl7.org/fhir"
BOUND = 60.0  # seconds; a safety net only


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas(MEDCOM / "xsd")


def sample(name: str) -> bytes:
    folder = "oioxml" if (MEDCOM / "oioxml" / name).exists() else "fhir"
    return (MEDCOM / folder / name).read_bytes()


# Every sample: the envelope, then the letter with its text left out (text is checked by the snippets).

HILLEROD_SURGERY = Party(
    "5790000120420", "2001060", "sygehusafdelingsnummer", "HILLERØD SYGEHUS, KIRURGISK AFD. A"
)
HILLEROD_SURGERY_91 = replace(HILLEROD_SURGERY, ean="5790000120400")
GP_91 = Party("5790000128700", "291714", "ydernummer", "Lægehuset, Læge")
GRUSGRAVEN = Address("Grusgraven", "3", "3400")
ACK_SENDER = Party("5790001348120", "953741000016009", "sorkode", "Sender Organization")
ACK_RECEIVER = Party("5790000209354", "265161000016000", "sorkode", "Receiver Organization")
HERLEV_HEART = Party(
    "5790000209354", "265161000016000", "sorkode", "Hjerteafdelingen på Herlev og Gentofte hospital"
)
HERLEV_CARE = Party("5790001348120", "953741000016009", "sorkode", "Plejecenter Herlev")
SKEJBY = Party("5790001987244", "441211000016000", "sorkode", "Klinik for Ældresygdomme, AUH, Skejby")
AABENRAA = Party("5790001353308", "330461000016004", "sorkode", "Sundhedsplejen, Aabenraa kommune")
BRUNO = {
    "cpr": "2509479989",
    "patient_name": "Bruno Test Elmer",
    "address": Address("Testpark Allé", "48", "3400"),
}
R_TEK = "559e4be0-e1f2-4371-969d-29bbbd5ca9d1"
R_TEK_THREAD = "urn:uuid:69ab69e8-af33-4e93-9171-7906ad43c1ab"  # Communication.identifier, in both copies


def oioxml(envelope_id: str, sent: str, namespace: str) -> dict[str, Any]:
    return {
        "format": "oioxml",
        "envelope_id": envelope_id,
        "sent": sent,
        "acknowledgement_code": "minuspositivkvitt",
        "namespace": namespace,
    }


def fhir(fmt: str, bundle_id: str, sent: str) -> dict[str, Any]:
    return {
        "format": fmt,
        "envelope_id": bundle_id,
        "sent": sent,
        "acknowledgement_code": None,
        "namespace": FHIR,
    }


def receipt(kind: str, version: str, sender: str, receiver: str, letter: str, code: str | None) -> Letter:
    return Letter(
        kind=kind,
        identifier="BrevNr5678",
        version_code=version,
        sender=Party(ean=sender),
        receiver=Party(ean=receiver),
        answers_envelope="MEDREF01095",
        answers_letter=letter,
        response_code=code,
    )


def ack(header_id: str, answers: str, code: str) -> Letter:
    return Letter(
        kind="Acknowledgement",
        identifier=header_id,
        version_code=None,
        sender=ACK_SENDER,
        receiver=ACK_RECEIVER,
        event="acknowledgement-message",
        answers_letter=answers,
        response_code=code,
    )


def care(
    bundle_letter: str, sender: Party, receiver: Party, subject: str, thread: str, **patient: Any
) -> Letter:
    return Letter(
        kind="CareCommunication",
        identifier=bundle_letter,
        version_code=None,
        sender=sender,
        receiver=receiver,
        subject=subject,
        event="care-communication-message",
        thread=thread,
        **patient,
    )


EXPECTED: dict[str, tuple[dict[str, Any], Letter, tuple[str, ...]]] = {
    "REF01_1.xml": (
        oioxml("Kuv1234", "2005-01-15T12:02", NS_2005),
        Letter(
            kind="XREF01",
            identifier="Brv5678",
            version_code="XH0130R",
            status_code="nytbrev",
            sender=Party("5790000121526", "079741", "ydernummer", "Lægehuset"),
            receiver=Party(
                "5790000201389", "2001060", "sygehusafdelingsnummer", "Hillerød Sygehus, Medicinsk afd. B"
            ),
            cpr="2406444917",
            patient_name="Ole Berggren",
            address=Address("Park Alle", "48", "3400"),
            priority="elektiv",
            urgent=False,
        ),
        (
            "Klinisk begrundelse:\nHypertensionsudredning + behandling samt diætvejledning",
            "Supplerende oplysninger:\nIndkaldes fra sommerhus, Sommervej 10, Gilleleje",
            "Cave:\nFenoxymetylpenicillin (1994 Ringsted Sgh. med larynxødem)",
            "Aktuel medicin:\nTabl Triatec 5 mg",
        ),
    ),
    "DIS01_1.xml": (
        oioxml("KuvertNr012234", "1999-01-15T12:02", NS_2005),
        Letter(
            kind="XDIS01",
            identifier="BrevNr00129",
            version_code="XD0133L",
            status_code="rettetbrev",
            sender=HILLEROD_SURGERY,
            receiver=Party("5790000128686", "291714", "ydernummer", "Lægehuset"),
            cpr="0108584947",
            patient_name="Schwenlund Mosebryggersen",
            address=GRUSGRAVEN,
        ),
        (
            "Indlagt af vagtlæge. Egen læge har foretaget ambulant udredning.\nVægttab på 10 kg/ 2mdr",
            "14.01.1999",
        ),
    ),
    "DIS91_1.xml": (
        oioxml("KuvertNr012234", "1998-12-13T12:10", NS_2006),
        Letter(
            kind="XDIS91",
            identifier="BrevNr00129",
            version_code="XD9134L",
            status_code="nytbrev",
            sender=HILLEROD_SURGERY_91,
            receiver=GP_91,
            cpr="1502824933",
            patient_name="Knut Odvar Mosebryggersen",
            address=GRUSGRAVEN,
            subject="Forundersøgelse",
            priority="høj_prioritet",
            urgent=True,
        ),
        ('Sænkningsresultat\n\nResultaterne bedes fremsendt som et "korrespondancebrev".',),
    ),
    "korr_x9134.xml": (
        oioxml("KuvertNr012234", "1998-12-13T12:10", NS_2006),
        Letter(
            kind="XDIS91",
            identifier="BrevNr00129",
            version_code="XD9134L",
            status_code="nytbrev",
            sender=HILLEROD_SURGERY_91,
            receiver=GP_91,
            cpr="1522824933",  # 15/22: no such month, yet schema-valid; routing sends it to triage, not parse
            patient_name="Knut Odvar Mosebryggersen",
            address=GRUSGRAVEN,
            subject="Forundersøgelse",
            priority="høj_prioritet",
            urgent=True,
        ),
        (
            "Hej\n\n\n\n\n\nHej, jeg er fast bredde\n",
            'Resultaterne bedes\n\nfremsendt som et "korrespondancebrev".',
        ),
    ),
    "CTL01_1.xml": (
        oioxml("KuvertNr1234", "1999-11-11T18:50", NS_2005),
        receipt(
            "XCTL01", "XC0130Q", "DKKMDKMDNET", "5790000181872", "1111FRE01095", "ukendt_lokationsnummer"
        ),
        ("har ikke kunnet modtages.\nModtagerlokationsnummer har ikke kunnet identificeres.",),
    ),
    "CTL02_1.xml": (
        oioxml("KuvertNr1234", "1999-11-11T18:50", NS_2005),
        receipt("XCTL02", "XC0230Q", "5790000120420", "5790000181872", "1111MAN01095", "problem_med_version"),
        ("kan ikke modtage sygehushenvisninger.\nMed venlig hilsen\nIT-Hotline.",),
    ),
    "CTL03_1.xml": (
        oioxml("KuvertNr1234", "1999-11-11T18:50", NS_2005),
        receipt("XCTL03", "XC0330Q", "5790000120420", "5790000181872", "1111FRE01095", None),
        (),
    ),
    "Ack-ok-Bundle-a8c041b8.xml": (
        fhir("fhir-xml", "a8c041b8-c65a-4fde-a90f-962076918834", "2022-09-01T12:01:00Z"),
        ack("aba2d9bf-2c6c-47e8-bce4-7928bcd51019", "42cb9200-f421-4d08-8391-7d51a2503cb4", "ok"),
        (),
    ),
    "Ack-fatal-error-Bundle-bc9535ef.xml": (
        fhir("fhir-xml", "bc9535ef-ed94-4060-a928-7baddec7ee71", "2022-09-01T12:01:00Z"),
        ack("b879c81e-0607-4ccb-b358-24a72208e30d", "53128d9b-cede-4c7f-8904-809eab322d7d", "fatal-error"),
        ("MSG_VALUESET_VALUE_UNKNOWN",),
    ),
    "Ack-transient-error-Bundle-c9c2b2f6.json": (
        fhir("fhir-json", "c9c2b2f6-0807-11ed-861d-0242ac120002", "2022-09-01T12:01:00Z"),
        ack(
            "c9a0b728-0807-11ed-861d-0242ac120002", "53128d9b-cede-4c7f-8904-809eab322d7d", "transient-error"
        ),
        ("MSG_Mailbox_Out_Of_Operation",),
    ),
    "Bundle-R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff.json": (
        fhir(
            "fhir-json", "R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff", "2024-08-28T15:20:00+02:00"
        ),
        care(R_TEK, SKEJBY, AABENRAA, "telemedicine", R_TEK_THREAD, **BRUNO),
        ("de seneste undersøgelser udført på Bruno.\nPå forhånd tak.\nHilsen Michael",),
    ),
    "Bundle-R-Tek-L-dublicate-fa97e431-332f-4605-ad37-c259dc2b8637.xml": (
        fhir(
            "fhir-xml", "R-Tek-L-dublicate-fa97e431-332f-4605-ad37-c259dc2b8637", "2024-08-28T16:25:00+02:00"
        ),
        care(R_TEK, SKEJBY, AABENRAA, "telemedicine", R_TEK_THREAD, **BRUNO),
        ("de seneste undersøgelser udført på Bruno.\nPå forhånd tak.\nHilsen Michael",),
    ),
    "CareCommunication-new-Bundle-0d5b3c18.xml": (
        fhir("fhir-xml", "0d5b3c18-fab6-4d93-9d88-c9c8abf1f18c", "2024-06-01T13:55:00+02:00"),
        # The patient has only a replacement id (urn:oid:1.2.208.176.1.6.1.1, 0703921VJ4): no CPR.
        care(
            "025bdfdd-397b-43e2-9e8c-272664a6e471",
            HERLEV_HEART,
            HERLEV_CARE,
            "examination-results",
            "urn:uuid:cefe0dee-13b5-4bec-a843-09b4d58e4fe6",
            patient_name="Birgit Berggren",
        ),
        ("Hilsen Michael, sygeplejerske.",),
    ),
    "HospitalNotification-Bundle-a5e5b880.xml": (
        fhir("fhir-xml", "a5e5b880-c087-4055-b9ec-99108695f81d", "2022-12-07T12:00:01+02:00"),
        Letter(
            kind="HospitalNotification",
            identifier="b9b4818e-02de-4cc4-b418-d20cbc7b5404",
            version_code=None,
            sender=HERLEV_HEART,
            receiver=HERLEV_CARE,
            cpr="2509479989",  # reached through MessageHeader.focus → Encounter.subject
            patient_name="Elmer",
            event="hospital-notification-message",
        ),
        (),
    ),
}


def test_the_table_covers_every_sample() -> None:
    files = [p.name for folder in ("oioxml", "fhir") for p in (MEDCOM / folder).iterdir()]
    assert sorted(EXPECTED) == sorted(files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_yields_its_facts(name: str, schemas: Schemas) -> None:
    envelope, expected, snippets = EXPECTED[name]
    document = parse(sample(name), schemas=schemas)
    assert {key: getattr(document, key) for key in envelope} == envelope
    assert len(document.letters) == 1
    letter = document.letters[0]
    assert replace(letter, text="") == expected
    for snippet in snippets:
        assert snippet in letter.text
    if not snippets:
        assert letter.text == ""
    assert document.is_acknowledgement == (expected.kind in {"XCTL01", "XCTL02", "XCTL03", "Acknowledgement"})
    assert facts(letter) == Facts(
        cprs=(expected.cpr,) if expected.cpr else (),
        name=expected.patient_name,
        address=expected.address,
        receiver_municipality=None,
        subject=expected.subject,
        urgent=expected.urgent,
        source="medcom",
    )


@pytest.mark.parametrize("path", sorted((MEDCOM / "oioxml").iterdir()), ids=lambda p: p.name)
def test_oioxml_samples_validate_against_their_schema(path: Path, schemas: Schemas) -> None:
    tree = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
    schema = schemas.schema_for(etree.QName(tree.getroot()).namespace)
    assert schema is not None
    assert schema.validate(tree), schema.error_log
    assert parse(path.read_bytes()) == parse(path.read_bytes(), schemas=schemas)


def test_schemas_are_compiled_once_per_namespace(schemas: Schemas) -> None:
    assert schemas.schema_for(NS_2005) is schemas.schema_for(NS_2005)
    assert schemas.schema_for(NS_2005) is not schemas.schema_for(NS_2006)
    assert schemas.schema_for("http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/2099/01/01/") is None


def test_the_impossible_cpr_in_korr_x9134_is_read_not_refused(schemas: Schemas) -> None:
    letter = parse(sample("korr_x9134.xml"), schemas=schemas).letters[0]
    assert letter.cpr == "1522824933"
    assert facts(letter).cprs == ("1522824933",)


def test_r_tek_k_and_l_are_one_message_sent_twice() -> None:
    first = parse(sample("Bundle-R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff.json"))
    again = parse(sample("Bundle-R-Tek-L-dublicate-fa97e431-332f-4605-ad37-c259dc2b8637.xml"))
    assert first.letters[0].identifier == again.letters[0].identifier == R_TEK
    assert first.envelope_id != again.envelope_id
    assert (first.format, again.format) == ("fhir-json", "fhir-xml")
    assert first.letters == again.letters  # JSON and XML read alike


# Encodings -------------------------------------------------------------------------------------------


def test_windows_1252_bytes_are_read_as_declared(schemas: Schemas) -> None:
    data = sample("REF01_1.xml")
    assert data.startswith(b'<?xml version="1.0" encoding="windows-1252"?>')
    given = "<PersonGivenName>Åse Søren</PersonGivenName>".encode("cp1252")
    surname = "<PersonSurnameName>Ærø–Bæk</PersonSurnameName>".encode("cp1252")  # – is 0x96: not in Latin-1
    data = data.replace(b"<PersonGivenName>Ole</PersonGivenName>", given)
    data = data.replace(b"<PersonSurnameName>Berggren</PersonSurnameName>", surname, 1)
    assert b"\xc5se S\xf8ren" in data and b"\x96" in data
    letter = parse(data, schemas=schemas).letters[0]
    assert letter.patient_name == "Åse Søren Ærø–Bæk"
    assert letter.receiver.name == "Hillerød Sygehus, Medicinsk afd. B"


def test_iso_8859_1_and_utf_8_are_read_as_declared(schemas: Schemas) -> None:
    latin = sample("korr_x9134.xml")
    assert latin.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?>') and b"HILLER\xd8D" in latin
    assert parse(latin, schemas=schemas).letters[0].sender.name == "HILLERØD SYGEHUS, KIRURGISK AFD. A"
    utf8 = latin.decode("iso-8859-1").replace('encoding="ISO-8859-1"', 'encoding="UTF-8"').encode("utf-8")
    assert parse(utf8, schemas=schemas).letters[0] == parse(latin, schemas=schemas).letters[0]


def test_only_ascii_compatible_encodings_are_accepted(doctype_checks: str) -> None:
    """In UTF-7 or BOM-less UTF-16 a DOCTYPE hides from a byte scan, so such encodings are refused."""
    body = f"<!DOCTYPE Emessage [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>{EMESSAGE}&x;</Emessage>"
    hidden = b'<?xml version="1.0" encoding="UTF-7"?>' + body.replace("<", "+ADw-").encode("ascii")
    assert b"<!DOCTYPE" not in hidden and hidden.decode("utf-7").endswith(body)
    utf16 = f'<?xml version="1.0"?>{body}'.encode("utf-16-le")  # no byte order mark, starts with "<"
    assert utf16.startswith(b"<")
    others = (b'<?xml version="1.0" encoding="IBM037"?><a/>', b"<?xml version='1.0' encoding='x'?><a/>")
    for data in (hidden, utf16, *others):
        refusal = refused(data)
        assert refusal.refuse_code == "syntaksfejl"
        assert "UTF-8, windows-1252 eller ISO-8859-1" in refusal.text
    latin9 = sample("CTL03_1.xml").replace(b"windows-1252", b"ISO-8859-15")
    assert parse(latin9).letters[0].identifier == "BrevNr5678"


# More than the samples show ----------------------------------------------------------------------------


def test_a_receiver_named_by_kommunenummer_is_an_explicit_municipality(schemas: Schemas) -> None:
    data = sample("DIS91_1.xml").replace(
        b"<Identifier>291714</Identifier><IdentifierCode>ydernummer</IdentifierCode>",
        b"<Identifier>751</Identifier><IdentifierCode>kommunenummer</IdentifierCode>",
    )
    letter = parse(data, schemas=schemas).letters[0]
    assert letter.receiver.identifier_code == "kommunenummer"
    assert facts(letter).receiver_municipality == "0751"


def test_an_unknown_letter_is_read_generically(schemas: Schemas) -> None:
    text = sample("DIS91_1.xml").decode("cp1252").replace("ClinicalEmail>", "SomeFutureLetter>")
    text = re.sub(r"<StatisticalCode>XDIS91</StatisticalCode>", "", text)
    letter = parse(text.encode("cp1252")).letters[0]
    assert letter.kind == "XDIS91"  # from TypeCode, without StatisticalCode
    assert (letter.identifier, letter.version_code, letter.cpr) == ("BrevNr00129", "XD9134L", "1502824933")
    assert (letter.sender.identifier, letter.receiver.ean) == ("2001060", "5790000128700")
    text = re.sub(r"<TypeCode>XDIS91</TypeCode>", "", text)
    assert parse(text.encode("cp1252")).letters[0].kind == "SomeFutureLetter"
    with pytest.raises(MedcomError) as refusal:  # the schema does not know the letter
        parse(text.encode("cp1252"), schemas=schemas)
    assert refusal.value.refuse_code == "syntaksfejl"


def r_tek_k() -> dict[str, Any]:
    loaded = json.loads(sample("Bundle-R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff.json"))
    assert isinstance(loaded, dict)
    return loaded


def communication(bundle: dict[str, Any]) -> dict[str, Any]:
    found = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Communication"]
    resource = found[0]
    assert isinstance(resource, dict)
    return resource


def test_fhir_attachments_priority_topic_and_xhtml_text() -> None:
    bundle = r_tek_k()
    resource = communication(bundle)
    resource["priority"] = "asap"
    resource["topic"] = {"text": "Bekymring for barn"}
    resource["payload"] += [
        {"contentString": "<div><p>Første linje</p><p>Anden &amp; sidste</p></div>"},
        {
            "contentAttachment": {
                "contentType": "application/pdf",
                "title": "epikrise.pdf",
                "data": base64.b64encode(b"x" * 1000).decode(),
            }
        },
        {"contentAttachment": {"contentType": "image/png", "title": "foto.png", "size": 52000}},
    ]
    letter = parse(json.dumps(bundle).encode()).letters[0]
    assert (letter.priority, letter.urgent, letter.subject) == ("asap", True, "Bekymring for barn")
    assert letter.attachments == (
        Attachment("epikrise.pdf", "application/pdf", 1000),
        Attachment("foto.png", "image/png", 52000),
    )
    assert letter.text.endswith("Hilsen Michael\n\nFørste linje\nAnden & sidste")
    assert facts(letter).urgent


@pytest.mark.parametrize(
    ("change", "says", "letter_id"),
    [
        (lambda b: b.update(type="collection"), "message", R_TEK),
        (lambda b: b.pop("id"), "Bundle.id", R_TEK),
        (lambda b: b["entry"].reverse(), "MessageHeader", None),
        (lambda b: b["entry"][0]["resource"].pop("id"), "MessageHeader.id", None),
        (lambda b: b["entry"][0]["resource"].pop("eventCoding"), "eventCoding", R_TEK),
        (lambda b: b.update(entry=[]), "MessageHeader", None),
    ],
)
def test_fhir_without_the_message_structure_is_refused(
    change: Callable[[dict[str, Any]], object], says: str, letter_id: str | None
) -> None:
    bundle = r_tek_k()
    change(bundle)
    refusal = refused(json.dumps(bundle).encode())
    assert refusal.refuse_code == "syntaksfejl"
    assert says in refusal.text
    assert refusal.letter_id == letter_id
    assert refusal.envelope_id == bundle.get("id")


# Hostile documents -------------------------------------------------------------------------------------


def refused(data: bytes, **kwargs: Any) -> MedcomError:
    """The refusal of `data`, from a daemon thread so that a hang fails the test instead of the whole run."""
    outcome: list[object] = []

    def attempt() -> None:
        try:
            outcome.append(parse(data, **kwargs))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert outcome, f"parse did not return within {BOUND} s"
    assert isinstance(outcome[0], MedcomError), outcome[0]
    return outcome[0]


@pytest.fixture(params=["both-checks", "tree-check-alone"])
def doctype_checks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A DOCTYPE is refused by the byte scan of the prolog and again by the parsed tree's docinfo; with the
    scan switched off, the tree check must hold on its own (it covers encodings the scan cannot read)."""
    if request.param == "tree-check-alone":
        monkeypatch.setattr(parse_module, "_refuse_doctype_in_prolog", lambda data: None)
    return str(request.param)


LOL = '<!ENTITY lol "lol">' + "".join(
    f'<!ENTITY lol{i} "{("&lol;" if i == 1 else f"&lol{i - 1};") * 10}">' for i in range(1, 10)
)
EMESSAGE = f'<Emessage xmlns="{NS_2005}"><Envelope><Identifier>K1</Identifier></Envelope>'


@pytest.mark.parametrize(
    "document",
    [
        f'<?xml version="1.0"?><!DOCTYPE r [{LOL}]><r>&lol9;</r>',
        f'<?xml version="1.0"?><!DOCTYPE r [{LOL}]><r a="&lol9;"/>',
        f'<?xml version="1.0" encoding="cp1252"?><!DOCTYPE Emessage [{LOL}]>{EMESSAGE}&lol9;</Emessage>',
        f"<!-- a comment first --><?pi first?>\n<!DOCTYPE Emessage [{LOL}]>{EMESSAGE}&lol9;</Emessage>",
        f"<!DOCTYPE Emessage [<!ELEMENT Emessage ANY>]>{EMESSAGE}</Emessage>",
        f'<!DOCTYPE Emessage PUBLIC "-//x//y" "x.dtd">{EMESSAGE}</Emessage>',
    ],
    ids=[
        "billion-laughs",
        "billion-laughs-attribute",
        "in-emessage",
        "after-comment-and-pi",
        "internal",
        "public",
    ],
)
def test_any_doctype_is_refused(document: str, schemas: Schemas, doctype_checks: str) -> None:
    refusal = refused(document.encode(), schemas=schemas)
    assert refusal.refuse_code == "syntaksfejl"
    if doctype_checks == "both-checks":
        assert "DOCTYPE" in refusal.text  # refused before parsing; alone, libxml2 may stop a bomb first


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("MARKER-7f3a9c never to be read\n")
    return path


def entity_documents(uri: str) -> list[str]:
    """The ways a document can make a parser fetch `uri`: entity in text or attribute, parameter entity,
    external DTD, all inside an otherwise plausible Emessage."""
    patient = "<Patient><PersonGivenName>{}</PersonGivenName></Patient></Emessage>"
    return [
        f'<!DOCTYPE Emessage [<!ENTITY x SYSTEM "{uri}">]>{EMESSAGE}{patient.format("&x;")}',
        f'<!DOCTYPE Emessage [<!ENTITY x SYSTEM "{uri}">]>{EMESSAGE}<a b="&x;"/></Emessage>',
        f'<!DOCTYPE Emessage [<!ENTITY % x SYSTEM "{uri}"> %x;]>{EMESSAGE}</Emessage>',
        f'<!DOCTYPE Emessage SYSTEM "{uri}">{EMESSAGE}</Emessage>',
    ]


def test_an_external_entity_never_reads_the_file(secret: Path, schemas: Schemas, doctype_checks: str) -> None:
    for document in entity_documents(secret.as_uri()) + entity_documents(str(secret)):
        refusal = refused(document.encode(), schemas=schemas)
        assert refusal.refuse_code == "syntaksfejl"
        everything = (
            f"{refusal} {refusal.text!r} {refusal.envelope_id} {refusal.letter_id} {refusal.__cause__!r}"
        )
        assert "MARKER" not in everything


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_an_external_entity_never_opens_the_file(tmp_path: Path, doctype_checks: str) -> None:
    """Opening a named pipe for reading blocks until someone writes: if the parser tried, it would hang."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    try:
        for document in entity_documents(fifo.as_uri()):
            assert refused(document.encode()).refuse_code == "syntaksfejl"
    finally:  # frees a reader stuck in open() if the test failed
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local port that records whether anyone connected."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def nobody_connected(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


def test_an_external_entity_never_touches_the_network(listener: socket.socket, doctype_checks: str) -> None:
    port = listener.getsockname()[1]
    for document in entity_documents(f"http://127.0.0.1:{port}/x"):
        assert refused(document.encode()).refuse_code == "syntaksfejl"
    assert nobody_connected(listener)


def test_processing_instructions_are_dropped_unread(listener: socket.socket, schemas: Schemas) -> None:
    port = listener.getsockname()[1]
    data = sample("REF01_1.xml").replace(
        b"?>\n", f'?>\n<?xml-stylesheet type="text/xsl" href="http://127.0.0.1:{port}/x.xsl"?>\n'.encode(), 1
    )
    assert b"xml-stylesheet" in data
    assert parse(data, schemas=schemas) == parse(sample("REF01_1.xml"), schemas=schemas)
    assert nobody_connected(listener)


def test_too_deep_xml_is_refused() -> None:
    for depth in (MAX_DEPTH + 1, 250):
        nested = "<a>" * depth + "</a>" * depth
        refusal = refused(f"{EMESSAGE}{nested}</Emessage>".encode())
        assert refusal.refuse_code == "syntaksfejl"
        assert "niveauer" in refusal.text
    refusal = refused(f'<Bundle xmlns="{FHIR}">{"<entry>" * 100}{"</entry>" * 100}</Bundle>'.encode())
    assert "niveauer" in refusal.text


def test_deeper_than_libxml2_allows_is_refused() -> None:
    assert refused(b"<a>" * 300 + b"</a>" * 300).refuse_code == "syntaksfejl"  # libxml2 stops at 256


def test_too_big_is_refused_before_it_is_read() -> None:
    refusal = refused(sample("REF01_1.xml"), limits=Limits(max_bytes=1000))
    assert (refusal.refuse_code, refusal.reason) == ("ikke_specificeret", "too_large")
    assert "1000" in refusal.text
    assert refused(b" " * (10 * 1024 * 1024 + 1)).refuse_code == "ikke_specificeret"


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"hello", b"\x00\x01\x02", b"%PDF-1.4", b"<", b"<a>unclosed", b"<a></b>", b"{", b'{"a": }'],
)
def test_not_xml_nor_json_is_refused(data: bytes) -> None:
    refusal = refused(data)
    assert refusal.refuse_code == "syntaksfejl"
    assert refusal.text


@pytest.mark.parametrize(
    "name",
    ["REF01_1.xml", "CareCommunication-new-Bundle-0d5b3c18.xml", "Ack-transient-error-Bundle-c9c2b2f6.json"],
)
def test_a_truncated_document_is_refused(name: str) -> None:
    data = sample(name)
    assert refused(data[: len(data) // 2]).refuse_code == "syntaksfejl"


@pytest.mark.parametrize(
    "data",
    [
        b"<foo/>",
        f'<Patient xmlns="{FHIR}"><id value="x"/></Patient>'.encode(),
        b'<Bundle><type value="message"/></Bundle>',  # FHIR's name without FHIR's namespace
        b'{"resourceType": "Patient", "id": "x"}',
        b"[1, 2, 3]",
        b'"Bundle"',
    ],
)
def test_a_wrong_root_is_refused(data: bytes) -> None:
    assert refused(data).refuse_code == "syntaksfejl"


@pytest.mark.parametrize(
    "namespace",
    [
        b"http://rep.oio.dk/medcom.dk/xml/schemas/2013/09/02/",  # newer versions left sundcom.dk
        b"http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/2099/01/01/",
        b"http://rep.oio.dk/medcom.dk/xml/schemas/",
    ],
)
def test_a_medcom_version_without_its_schema_is_read_generically(namespace: bytes, schemas: Schemas) -> None:
    """Envelope, letter, patient and address are the same in every version: read them, validate where the
    schema is installed, and refuse only what cannot be read."""
    original = parse(sample("REF01_1.xml"), schemas=schemas)
    data = sample("REF01_1.xml").replace(NS_2005.encode(), namespace)
    read = parse(data, schemas=schemas)
    assert read.namespace == namespace.decode()
    assert read.letters == original.letters
    assert replace(read, namespace=original.namespace) == original
    no_letter = re.sub(rb"<HospitalReferral>.*</HospitalReferral>", b"", data, flags=re.S)
    assert refused(no_letter, schemas=schemas).refuse_code == "syntaksfejl"


def test_a_new_version_is_validated_when_its_schema_is_installed(tmp_path: Path) -> None:
    """A schema installed under its date is used only for the namespace it targets."""
    new = "http://rep.oio.dk/medcom.dk/xml/schemas/2013/09/02/"
    folder = tmp_path / "2013" / "09" / "02"
    folder.mkdir(parents=True)
    (folder / "EMessage.xsd").write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'targetNamespace="{new}" elementFormDefault="qualified">'
        '<xs:element name="Emessage"><xs:complexType><xs:sequence>'
        '<xs:element name="Envelope"/><xs:element name="HospitalReferral"/>'
        "</xs:sequence></xs:complexType></xs:element></xs:schema>"
    )
    installed = Schemas(tmp_path)
    data = sample("REF01_1.xml").replace(NS_2005.encode(), new.encode())
    assert parse(data, schemas=installed).letters[0].identifier == "Brv5678"
    extra = data.replace(b"</Emessage>", b"<Extra/></Emessage>")
    assert refused(extra, schemas=installed).reason == "schema_invalid"
    assert installed.schema_for(new.replace("medcom.dk", "sundcom.dk/medcom.dk")) is None  # not its target


def test_a_namespace_outside_medcom_is_refused(schemas: Schemas) -> None:
    foreign = refused(b'<Emessage xmlns="urn:not-medcom"><Envelope/></Emessage>')
    assert (foreign.refuse_code, foreign.reason) == ("problem_med_version", "unknown_namespace")
    assert refused(b"<Emessage><Envelope/></Emessage>").refuse_code == "problem_med_version"
    lookalike = sample("REF01_1.xml").replace(b"http://rep.oio.dk/", b"http://rep.oio.dk.example/")
    assert refused(lookalike, schemas=schemas).refuse_code == "problem_med_version"


def test_a_schema_invalid_document_is_refused_with_a_sentence(schemas: Schemas) -> None:
    data = sample("REF01_1.xml").replace(b"<Priority>elektiv</Priority>", b"<Priority>hurtigst</Priority>")
    line = data[: data.index(b"hurtigst")].count(b"\n") + 1
    refusal = refused(data, schemas=schemas)
    assert (refusal.refuse_code, refusal.envelope_id, refusal.letter_id) == (
        "syntaksfejl",
        "Kuv1234",
        "Brv5678",
    )
    assert f"linje {line}" in refusal.text
    assert "AdditionalInformation/Priority" in refusal.text and "ENUMERATION" in refusal.text
    assert "hurtigst" not in refusal.text and "elektiv" not in refusal.text  # no value, not even the set
    assert "{http" not in refusal.text
    assert parse(data).letters[0].priority == "hurtigst"  # without schemas the letter is still read


def test_a_missing_element_is_named(schemas: Schemas) -> None:
    data = sample("CTL03_1.xml").replace(b"<VersionCode>XC0330Q</VersionCode>", b"")
    refusal = refused(data, schemas=schemas)
    assert refusal.refuse_code == "syntaksfejl"
    assert "VersionCode" in refusal.text
    assert refusal.letter_id == "BrevNr5678"


def test_oioxml_without_identifiers_is_refused() -> None:
    no_letter_id = sample("CTL03_1.xml").replace(b"<Identifier>BrevNr5678</Identifier>", b"")
    refusal = refused(no_letter_id)
    assert (refusal.refuse_code, refusal.envelope_id) == ("syntaksfejl", "KuvertNr1234")
    assert (
        refused(f'<Emessage xmlns="{NS_2005}"><Envelope/></Emessage>'.encode()).refuse_code == "syntaksfejl"
    )
    assert refused(f"{EMESSAGE}</Emessage>".encode()).refuse_code == "syntaksfejl"  # no letters


def nested_in_r_tek_k(levels: int) -> bytes:
    """The R-Tek-K bundle with `levels` nested arrays under one more key: the deepest is levels + 1 deep."""
    text = json.dumps(r_tek_k())
    return f'{text[:-1]}, "x": {"[" * levels}{"]" * levels}}}'.encode()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "niveauer"),
        (b"[" * 1_000_000, "niveauer"),
        (b'{"resourceType": "Bundle", "entry": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "niveauer"),
        (nested_in_r_tek_k(MAX_DEPTH), "niveauer"),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "niveauer"),
        (b'{"resourceType": "Bundle", "n": 1' + b"0" * 100_000 + b"}", "gyldig JSON"),
    ],
    ids=["arrays", "unclosed", "in-bundle", "just-too-deep", "objects", "huge-integer"],
)
def test_a_json_bomb_is_refused(data: bytes, says: str) -> None:
    refusal = refused(data)
    assert refusal.refuse_code == "syntaksfejl"
    assert says in refusal.text


def test_nesting_up_to_the_bound_is_read() -> None:
    assert parse(nested_in_r_tek_k(MAX_DEPTH - 1)).letters[0].identifier == R_TEK
    xml = sample("Bundle-R-Tek-L-dublicate-fa97e431-332f-4605-ad37-c259dc2b8637.xml")
    levels = MAX_DEPTH - 1  # under Bundle
    deep = xml.replace(
        b'<type value="message"/>', b'<type value="message"/>' + b"<x>" * levels + b"</x>" * levels
    )
    assert parse(deep).letters[0].identifier == R_TEK
    assert (
        refused(deep.replace(b"<x>", b"<x><x>", 1).replace(b"</x>", b"</x></x>", 1)).refuse_code
        == "syntaksfejl"
    )


def test_schema_includes_stay_inside_the_schema_directory(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    outside = tmp_path / "outside.xsd"
    outside.write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
    folder = tmp_path / "xsd" / "2005" / "08" / "07"
    folder.mkdir(parents=True)
    for location in ("../../../../outside.xsd", outside.as_uri(), f"http://127.0.0.1:{port}/x.xsd"):
        (folder / "EMessage.xsd").write_text(
            '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
            f'<xs:include schemaLocation="{location}"/></xs:schema>'
        )
        with pytest.raises(etree.XMLSchemaParseError):
            Schemas(tmp_path / "xsd").schema_for(NS_2005)
    assert nobody_connected(listener)
