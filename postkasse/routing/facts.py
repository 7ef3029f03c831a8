"""What a message says about the child and where it lives: the input to the routing policy.

A plain mail's facts come from `routing.extract`, a MedCom letter's from `routing.medcom`; both only read,
they decide nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postkasse.address import Address

__all__ = ["Address", "Facts"]


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
