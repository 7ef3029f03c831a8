"""CPR numbers: DDMMYY-SSSS. Birth date and sex, never a location, and never rejected on modulus 11.

Since 2007 not every issued number passes the old modulus-11 check, so the check is not used at all.
The 7th digit together with the two-digit year gives the century (python-stdnum implements the table).
A replacement number (erstatningspersonnummer) has letters in the serial part: recognised, not valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum

from stdnum.dk import cpr as stdnum_cpr
from stdnum.exceptions import ValidationError

SHAPE = re.compile(r"^(\d{6})-?(\d{4})$")
REPLACEMENT_SHAPE = re.compile(r"^(\d{6})-?([0-9A-Z]{4})$")


class Sex(Enum):
    FEMALE = "female"
    MALE = "male"


class InvalidCpr(ValueError):
    """Shaped like a CPR number but not one: the date does not exist or lies in the future."""


class ReplacementCpr(ValueError):
    """A replacement number with letters in the serial part; it identifies no one in the CPR register."""


@dataclass(frozen=True, order=True)
class Cpr:
    number: str  # ten digits, no dash

    @classmethod
    def parse(cls, text: str, today: date) -> Cpr:
        """The CPR in `text` (DDMMYYSSSS or DDMMYY-SSSS); raises InvalidCpr or ReplacementCpr."""
        text = text.strip().upper()
        match = SHAPE.match(text)
        if not match:
            if REPLACEMENT_SHAPE.match(text):
                raise ReplacementCpr("replacement number: letters in the serial part")
            raise InvalidCpr("not ten digits in the form DDMMYYSSSS or DDMMYY-SSSS")
        number = match.group(1) + match.group(2)
        try:
            born = stdnum_cpr.get_birth_date(number)
        except ValidationError:
            raise InvalidCpr("the first six digits are not a date") from None
        if born > today:
            raise InvalidCpr("the birth date lies in the future")
        return cls(number)

    @property
    def birth_date(self) -> date:
        born: date = stdnum_cpr.get_birth_date(self.number)
        return born

    @property
    def sex(self) -> Sex:
        return Sex.MALE if int(self.number[-1]) % 2 else Sex.FEMALE

    def age_on(self, day: date) -> int:
        """Whole years of age on `day`; a child born on 29 February turns a year older on 1 March."""
        born = self.birth_date
        return day.year - born.year - ((day.month, day.day) < (born.month, born.day))

    @property
    def formatted(self) -> str:
        return f"{self.number[:6]}-{self.number[6:]}"

    def __str__(self) -> str:
        return self.formatted
