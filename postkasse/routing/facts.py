"""What a message says about the child and where it lives: the input to the routing policy.

Each format (plain mail now; MedCom OIOXML and FHIR later) has an extractor that turns a stored
message into Facts. Extractors only read; they decide nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Address:
    street: str | None  # the road name as written
    house_number: str | None
    postal_code: str | None  # four digits

    def describe(self) -> str:
        parts = [" ".join(p for p in (self.street, self.house_number) if p), self.postal_code or ""]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Facts:
    """Everything routing may use, as found in the message. CPR candidates are kept as written."""

    cprs: tuple[str, ...] = ()  # distinct CPR-shaped texts, normalised to ten characters
    name: str | None = None
    address: Address | None = None
    receiver_municipality: str | None = None  # four digits, when the sender named the municipality
    subject: str | None = None
    urgent: bool = False
    source: str = "mail"
    notes: tuple[str, ...] = field(default=())


class Extractor(Protocol):
    """Reads one format. `accepts` says whether the raw message is of that format."""

    name: str

    def accepts(self, raw: bytes) -> bool: ...

    def extract(self, raw: bytes) -> Facts: ...
