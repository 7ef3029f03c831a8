"""Facts from mail in the forms clinicians write them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest

from postkasse.clock import SystemClock
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.mailbox import content
from postkasse.routing.extract import MailExtractor, find_address, find_cprs, find_receiver
from postkasse.routing.facts import Address
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import BY_STREET, decide
from postkasse.routing.refdata import Geography, import_file
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from tests.refdata_files import POSTNORD, roads_file


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
        ("Adresse: Skolevej 5B, 2. th., 8382 Hinnerup", Address("Skolevej", "5B", "8382")),
        ("Adresse: Skolevej 5 B, st. tv., 8382 Hinnerup", Address("Skolevej", "5B", "8382")),
        ("Adresse: Skolevej 12, 1. sal, 8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("Adresse: Skolevej 12 2.mf, 8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("Adresse: Skolevej 12, kl., 8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("adresse: skolevej 12, 2. tv., 8382 hinnerup", Address("skolevej", "12", "8382")),
        ("Adresse:\nSkolevej 12, 2. tv.\n8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("Adresse:\nSkolevej 12, 2. tv., 8382 Hinnerup", Address("Skolevej", "12", "8382")),
        ("Bopæl:\n  Skolevej 5b st th\n  8382 Hinnerup\n", Address("Skolevej", "5B", "8382")),
        ("Adresse: Skolevej 12, tlf. 86121234 Hinnerup", None),  # a phone number is no postal code
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
    facts = MailExtractor().facts(content.read(raw))
    assert facts.cprs == ("0102154123",)
    assert facts.name == "Søren Hansen"
    assert facts.address == Address("Søndergade", "4", "8000")
    assert facts.urgent


def test_subject_cpr_counts_and_a_second_child_in_the_body_makes_two() -> None:
    raw = b"Subject: Henvisning 010215-4123\r\n\r\nSoester: 020317-4222\r\n"
    assert MailExtractor().facts(content.read(raw)).cprs == ("0102154123", "0203174222")


@dataclass
class StreetLookups:
    """The real postal codes and roads; nobody is in the registry, so the street has to decide."""

    municipalities: Municipalities
    geography: Geography

    def registry_municipality(self, cpr: str) -> str | None:
        return None

    def postal_municipalities(self, postal_code: str) -> frozenset[str]:
        return self.geography.postal_municipalities(postal_code)

    def street_municipalities(self, street: str, postal_code: str) -> frozenset[str]:
        return self.geography.street_municipalities(street, postal_code)


@pytest.fixture(scope="module")
def real_geography(tmp_path_factory: pytest.TempPathFactory) -> Geography:
    folder = tmp_path_factory.mktemp("refdata")
    store = Store(f"sqlite:///{folder / 'pk.db'}")
    upgrade(store)
    now = SystemClock().now()
    import_file(store, "postnord", POSTNORD, now)
    import_file(store, "roads", roads_file(folder), now)
    with store.read() as conn:
        geography = Geography.load(conn)
    store.dispose()
    return geography


@pytest.mark.parametrize(
    "address",
    [
        "Adresse: Søtoftevej 5B, 2. th., 4100 Ringsted",
        "Adresse: Søtoftevej 5, st. tv., 4100 Ringsted",
        "Adresse: Søtoftevej 5, 1. sal, 4100 Ringsted",
        "Adresse: Søtoftevej 5, 2.mf, 4100 Ringsted",
        "adresse: søtoftevej 5, 2. th., 4100 ringsted",
        "Adresse:\nSøtoftevej 5, 2. tv.\n4100 Ringsted",
    ],
)
def test_the_street_decides_for_an_address_with_floor_and_side(
    real_geography: Geography, address: str
) -> None:
    """4100 Ringsted lies in more than one municipality: only the road can say which."""
    body = f"CPR: 020317-4222\n{address}\n".replace("\n", "\r\n")
    facts = MailExtractor().facts(content.read(f"Subject: Henvisning\r\n\r\n{body}".encode()))
    lookups = StreetLookups(Municipalities.load(DEFAULT_MUNICIPALITIES), real_geography)
    decision = decide(facts, lookups, date(2026, 11, 23))
    assert (decision.decision, decision.municipality) == ("routed", "0316")
    assert BY_STREET in decision.reasons
