"""A postal address as a message gives it: shared by the formats that read it (medcom) and routing, which
decides the municipality from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Address:
    street: str | None  # the road name as written
    house_number: str | None
    postal_code: str | None  # four digits

    def describe(self) -> str:
        parts = [" ".join(p for p in (self.street, self.house_number) if p), self.postal_code or ""]
        return ", ".join(p for p in parts if p)
