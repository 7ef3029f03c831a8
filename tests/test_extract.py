"""Facts from mail in the forms clinicians write them."""

from __future__ import annotations

import pytest

from postkasse.routing.extract import MailExtractor, find_address, find_cprs, find_receiver
from postkasse.routing.facts import Address


@pytest.mark.parametrize(
    ("text", "cprs"),
    [
        ("CPR: 010203-1234", ("0102031234",)),
        ("cpr-nr 0102031234", ("0102031234",)),
        ("CPR nr. 010203 1234", ("0102031234",)),
        ("Personnummer: 010203-1234", ("0102031234",)),
        ("Barnet, 010203-1234, går i 3. klasse", ("0102031234",)),
        ("cpr 0102031234 og igen 010203-1234", ("0102031234",)),  # the same child twice is one
        ("CPR: 010203-1234 og søster CPR: 020405-4321", ("0102031234", "0204054321")),
        ("Tlf. 86123456, sag 9988776655", ()),  # no label, no dash, not a date: not a CPR
        ("CPR: 310203-1234", ("3102031234",)),  # labelled but impossible: kept, so it is refused
        ("CPR: 010203-12AB", ("01020312AB",)),
        ("EAN 5790000123456", ()),
        ("", ()),
    ],
)
def test_cpr_forms(text: str, cprs: tuple[str, ...]) -> None:
    assert find_cprs(text) == cprs


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Adresse: Skolevej 12, 8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("adresse:Skolevej 12 B, 8382 Hinnerup", Address("Skolevej", "12B", "8382")),
        ("Bopæl: Store Torv 3, 8000 Aarhus C", Address("Store Torv", "3", "8000")),
        ("Barnet bor:\nSøndergade 4B\n8000 Aarhus C\n", Address("Søndergade", "4B", "8000")),
        ("Adresse: Skolevej 12\n8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("Postnr: 4100", Address(None, None, "4100")),
        ("Ingen adresse her", None),
    ],
)
def test_address_forms(text: str, address: Address | None) -> None:
    assert find_address(text) == address


def test_receiver_by_code_or_name() -> None:
    names = {"favrskov": "0710"}
    assert find_receiver("Kommune: 710", names) == "0710"
    assert find_receiver("Kommune: Favrskov Kommune", names) == "0710"
    assert find_receiver("Kommune: Atlantis", names) is None
    assert find_receiver("Ingen kommune angivet", names) is None


def test_mail_in_latin1_with_html_only_body() -> None:
    raw = (
        b"Subject: =?iso-8859-1?q?AKUT_henvisning?=\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
        b"<p>Navn: S\xf8ren Hansen<br>CPR: 010215-4123</p><p>Adresse: S\xf8ndergade 4, 8000 Aarhus C</p>\r\n"
    )
    facts = MailExtractor().extract(raw)
    assert facts.cprs == ("0102154123",)
    assert facts.name == "Søren Hansen"
    assert facts.address == Address("Søndergade", "4", "8000")
    assert facts.urgent


def test_subject_cpr_counts_and_a_second_child_in_the_body_makes_two() -> None:
    raw = b"Subject: Henvisning 010215-4123\r\n\r\nSoester: 020317-4222\r\n"
    assert MailExtractor().extract(raw).cprs == ("0102154123", "0203174222")
