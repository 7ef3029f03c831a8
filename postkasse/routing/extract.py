"""Facts from a plain mail: CPR, name, address and receiver in the forms clinicians write them.

Handles "CPR: 010203-1234", "cpr-nr 0102031234", "Adresse: Skolevej 12, 8382 Hinnerup", an address over
two lines, "Navn: ..." and "Kommune: 0710". A text that is not labelled and has no dash counts as a CPR
only when its first six digits are a date, so order and phone numbers are not mistaken for one.
"""

from __future__ import annotations

import re
from typing import Protocol

from stdnum.dk import cpr as stdnum_cpr
from stdnum.exceptions import ValidationError

from postkasse.routing.facts import Address, Facts

_CPR_LABEL = r"(?:cpr(?:[\s.-]*(?:nr|nummer))?\.?|personnummer|personnr\.?)"
LABELLED_CPR = re.compile(rf"{_CPR_LABEL}\s*[:.]?\s*(\d{{6}}\s?-?\s?[0-9A-Za-z]{{4}})(?![0-9A-Za-z])", re.I)
DASHED_CPR = re.compile(r"(?<![\dA-Za-z-])(\d{6}-[0-9A-Z]{4})(?![\dA-Za-z])")
BARE_CPR = re.compile(r"(?<![\d+-])(\d{10})(?![\d])")

# Floor and side as Danes write them after the house number: "2. th.", "st. tv.", "1. sal", "2.mf", "kl.".
_FLOOR = r"(?:st|kl|kld|\d{1,2})\b\.?(?:[ \t]*sal\b\.?)?"
_SIDE = r"(?:th|tv|mf|\d{1,3})\b\.?"
_UNIT = rf"(?:[ \t]*,?[ \t]*{_FLOOR}(?:[ \t]*,?[ \t]*{_SIDE})?)?"
_STREET = (
    r"(?P<street>[A-Za-zÆØÅæøåÉéÜüÖöÄä][\w .'-]*?)\s+(?P<number>\d+(?:[ \t]?[A-Za-z](?![\w.]))?)"
    rf"{_UNIT}[^\n,]*"
)
_POSTAL = r"(?<!\d)(?P<postal>\d{4})\s+(?P<city>[A-Za-zÆØÅæøå][^\n,]*)"
_LABEL = r"(?:adresse|bopæl|adr\.)"
ADDRESS_ONE_LINE = re.compile(rf"^[ \t]*{_LABEL}\s*:?\s*{_STREET},[ \t]*{_POSTAL}", re.I | re.M)
ADDRESS_TWO_LINES = re.compile(
    rf"^[ \t]*(?:{_LABEL}[ \t]*:?\s*)?{_STREET}[ \t]*,?[ \t]*\r?\n[ \t]*{_POSTAL}", re.I | re.M
)
POSTAL_LABEL = re.compile(r"^[ \t]*post(?:nr|nummer)\.?\s*:?\s*(?P<postal>\d{4})\b", re.I | re.M)
NAME = re.compile(
    r"^[ \t]*(?:navn|barnets navn|patient|patientens navn)\s*:\s*(?P<name>[^\n\r]+?)\s*$", re.I | re.M
)
RECEIVER = re.compile(
    r"^[ \t]*(?:kommune|kommunekode|kommunenr\.?|modtager)\s*:\s*(?P<who>[^\n\r]+?)\s*$", re.I | re.M
)
URGENT = re.compile(r"\b(?:akut|haster|urgent)\b", re.I)


def _normalise_cpr(text: str) -> str:
    return re.sub(r"[\s-]", "", text).upper()


def _is_date(ten: str) -> bool:
    try:
        stdnum_cpr.get_birth_date(ten)
    except ValidationError:
        return False
    return True


def find_cprs(text: str) -> tuple[str, ...]:
    """Distinct CPR candidates in order of appearance, as ten characters without the dash."""
    found: dict[str, None] = {}
    for match in LABELLED_CPR.finditer(text):
        found[_normalise_cpr(match.group(1))] = None
    for match in DASHED_CPR.finditer(text):
        found[_normalise_cpr(match.group(1))] = None
    for match in BARE_CPR.finditer(text):
        if _is_date(match.group(1)):
            found[match.group(1)] = None
    return tuple(found)


def find_address(text: str) -> Address | None:
    match = ADDRESS_ONE_LINE.search(text) or ADDRESS_TWO_LINES.search(text)
    if match:
        number = re.sub(r"\s", "", match.group("number")).upper()
        return Address(match.group("street").strip(), number, match.group("postal"))
    postal = POSTAL_LABEL.search(text)
    return Address(None, None, postal.group("postal")) if postal else None


def find_receiver(text: str, names: dict[str, str] | None = None) -> str | None:
    """A four-digit municipality code named by the sender, by code or by name."""
    match = RECEIVER.search(text)
    if not match:
        return None
    who = match.group("who").strip()
    code = re.match(r"^(\d{3,4})\b", who)
    if code:
        return code.group(1).zfill(4)
    if names:
        key = normalise_name(who)
        return names.get(key)
    return None


def normalise_name(name: str) -> str:
    """A municipality or road name as a lookup key: lower case, single spaces, no 'kommune', no dots."""
    name = name.lower().replace(".", " ").replace("-", " ")
    name = re.sub(r"\bkommune\b", " ", name)
    return " ".join(name.split())


class Mail(Protocol):
    """A mail as the mailbox read it (`mailbox.content.Mail`): routing needs its headers, text and notes."""

    notes: list[str]

    def header(self, name: str) -> str | None: ...

    def text(self) -> str: ...


class MailExtractor:
    """Facts from any RFC 5322 mail, read from its subject and text body."""

    name = "mail"

    def __init__(self, municipality_names: dict[str, str] | None = None) -> None:
        self.municipality_names = municipality_names or {}

    def facts(self, mail: Mail) -> Facts:
        """The facts of a parsed mail; what could not be read is among its notes."""
        subject = mail.header("Subject") or ""
        body = mail.text()
        text = f"{subject}\n{body}"
        name = NAME.search(body)
        return Facts(
            cprs=find_cprs(text),
            name=name.group("name") if name else None,
            address=find_address(body),
            receiver_municipality=find_receiver(body, self.municipality_names),
            subject=subject or None,
            urgent=bool(URGENT.search(subject)) or (mail.header("Priority") or "").lower() == "urgent",
            source=self.name,
            notes=tuple(mail.notes),
        )
