"""Where a person lives according to the CPR register: the municipality code for a CPR number.

`LocalRegistry` answers from the extract imported with `postkasse refdata import registry`, held in memory
as a sorted array of CPR numbers and a parallel array of municipality indexes: 9 bytes a person (about
9 MB for a million) and one binary search a lookup, so routing never waits on the database per message.
A lookup service against the CPR register itself can take its place by implementing `Registry`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Protocol

from sqlalchemy import Connection, select

from postkasse.store.schema import registry_persons


class Registry(Protocol):
    def municipality_of(self, cpr: str) -> str | None:
        """The municipality code the register holds for `cpr` (ten characters), or None if unknown."""
        ...


class LocalRegistry:
    def __init__(
        self, cprs: array[int], indexes: array[int], codes: list[str], other: dict[str, str]
    ) -> None:
        self.cprs = cprs  # sorted, the ten-digit numbers as integers
        self.indexes = indexes  # for each, the position of its municipality code in `codes`
        self.codes = codes
        self.other = other  # anything not ten digits, such as a replacement number

    def __len__(self) -> int:
        return len(self.cprs) + len(self.other)

    @classmethod
    def load(cls, conn: Connection) -> LocalRegistry:
        cprs: array[int] = array("q")
        indexes: array[int] = array("H")
        codes: list[str] = []
        index_of: dict[str, int] = {}
        other: dict[str, str] = {}
        query = select(registry_persons.c.cpr, registry_persons.c.municipality).order_by(
            registry_persons.c.cpr
        )
        # Per statement: Connection.execution_options() would change the caller's connection for good.
        for cpr, code in conn.execute(query, execution_options={"yield_per": 20_000}):
            if not (len(cpr) == 10 and cpr.isdigit()):
                other[cpr] = code
                continue
            if code not in index_of:
                index_of[code] = len(codes)
                codes.append(code)
            cprs.append(int(cpr))  # ten-digit strings sort as their numbers do
            indexes.append(index_of[code])
        return cls(cprs, indexes, codes, other)

    def municipality_of(self, cpr: str) -> str | None:
        if not (len(cpr) == 10 and cpr.isdigit()):
            return self.other.get(cpr)
        number = int(cpr)
        i = bisect_left(self.cprs, number)
        if i < len(self.cprs) and self.cprs[i] == number:
            return self.codes[self.indexes[i]]
        return None
