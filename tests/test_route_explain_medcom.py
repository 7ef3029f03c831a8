"""`postkasse route --explain` on MedCom documents: the kind, format, envelope and each letter's identifier
next to the routing decision; a document attached to mail is read the same way; plain mail is unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from postkasse import cli
from tests.test_medcom_flow import MEDCOM, XSD, fixture

Explain = Callable[..., tuple[int, str, str]]  # (raw, *options) -> (exit code, stdout, stderr)
DECISION_KEYS = {"decision", "municipality", "reasons", "flags", "triage_reason", "explanation", "facts"}


@pytest.fixture
def explain(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Explain:
    """Runs `postkasse route --explain FILE --json` in-process against an empty store with MedCom's XSDs."""
    monkeypatch.setenv("POSTKASSE_DATABASE__URL", f"sqlite:///{tmp_path / 'pk.db'}")
    monkeypatch.setenv("POSTKASSE_MEDCOM__SCHEMA_DIR", str(XSD))

    def run(raw: bytes, *options: str) -> tuple[int, str, str]:
        path = tmp_path / "document"
        path.write_bytes(raw)
        capsys.readouterr()
        code = cli.main(["route", "--explain", str(path), "--on", "2026-11-23", *options])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize(
    ("name", "kind", "fmt", "envelope", "letter", "cpr"),
    [
        ("REF01_1.xml", "XREF01", "oioxml", "Kuv1234", "Brv5678", "2406444917"),
        ("DIS01_1.xml", "XDIS01", "oioxml", "KuvertNr012234", "BrevNr00129", "0108584947"),
        ("DIS91_1.xml", "XDIS91", "oioxml", "KuvertNr012234", "BrevNr00129", "1502824933"),
        (
            "Bundle-R-Tek-K",
            "CareCommunication",
            "fhir-json",
            "R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff",
            "559e4be0-e1f2-4371-969d-29bbbd5ca9d1",
            "2509479989",
        ),
        (
            "HospitalNotification-",
            "HospitalNotification",
            "fhir-xml",
            "a5e5b880-c087-4055-b9ec-99108695f81d",
            "b9b4818e-02de-4cc4-b418-d20cbc7b5404",
            "2509479989",
        ),
    ],
)
def test_a_medcom_document_is_explained_with_its_kind_and_letters(
    explain: Explain, name: str, kind: str, fmt: str, envelope: str, letter: str, cpr: str
) -> None:
    code, out, err = explain(fixture(name), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["kind"], result["format"], result["envelope"]) == (kind, fmt, envelope)
    (only,) = result["letters"]
    assert (only["identifier"], only["kind"]) == (letter, kind)
    assert set(only) >= DECISION_KEYS
    assert only["facts"]["cprs"] == [cpr]
    assert only["facts"]["source"] == "medcom"
    # The first letter's decision is also at the top, as for mail, so a script reading mail still works.
    assert {key: result[key] for key in DECISION_KEYS} == {key: only[key] for key in DECISION_KEYS}
    assert result["decision"] == "triage"  # nothing is imported into this store


def test_the_impossible_cpr_is_explained_as_invalid(explain: Explain) -> None:
    code, out, err = explain(fixture("korr_x9134.xml"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["kind"], result["triage_reason"]) == ("XDIS91", "invalid_cpr")
    assert result["facts"]["urgent"] is True  # høj_prioritet


def test_the_text_form_names_the_envelope_and_each_letter(explain: Explain) -> None:
    code, out, err = explain(fixture("REF01_1.xml"))
    assert code == 0, err
    assert out.startswith("MedCom oioxml, kuvert Kuv1234\n")
    assert "Brev Brv5678 (XREF01):" in out
    assert "CPR-numre:        2406444917" in out
    assert "Beslutning: triage (" in out


def test_a_document_attached_to_mail_is_explained_as_the_document(explain: Explain) -> None:
    mail = EmailMessage()
    mail["From"] = "laege@klinik.example"
    mail["Subject"] = "Henvisning"
    mail.set_content("Se vedhæftede.")
    mail.add_attachment(fixture("REF01_1.xml"), maintype="application", subtype="xml", filename="ref.xml")
    code, out, err = explain(mail.as_bytes(policy=policy.SMTP), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["kind"], result["envelope"]) == ("XREF01", "Kuv1234")
    assert [letter["identifier"] for letter in result["letters"]] == ["Brv5678"]


def test_a_document_medcom_would_refuse_is_said_so(explain: Explain) -> None:
    broken = fixture("REF01_1.xml").replace(b"<Priority>elektiv</Priority>", b"<Priority>hurtigst</Priority>")
    code, out, err = explain(broken, "--json")
    assert (code, out) == (1, "")
    assert "MedCom would refuse it (syntaksfejl)" in err


def test_plain_mail_is_explained_as_before(explain: Explain) -> None:
    code, out, err = explain(b"Subject: Henvisning\r\n\r\nCPR: 020317-4222\r\nPostnr: 4100\r\n", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == DECISION_KEYS  # no kind, format, envelope or letters
    assert (result["decision"], result["reasons"]) == ("triage", ["unknown_postal_code"])
    assert result["facts"]["cprs"] == ["0203174222"]


def test_every_sample_document_is_explained_or_refused_in_words(explain: Explain) -> None:
    """No sample makes the command crash; acknowledgements and receipts read as their kind."""
    samples = sorted(p for p in MEDCOM.glob("*/*") if p.suffix in (".xml", ".json"))
    assert len(samples) == 14
    for sample in samples:
        code, out, err = explain(sample.read_bytes(), "--json")
        assert code == 0, (sample.name, err)
        assert json.loads(out)["kind"], sample.name
