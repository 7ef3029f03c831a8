"""Where a person lives according to the CPR register: the municipality code for a CPR number.

`LocalRegistry` answers from the extract imported with `postkasse refdata import registry`; a lookup
service against the CPR register itself can take its place by implementing `Registry`.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Connection, bindparam, select

from postkasse.store.schema import registry_persons


class Registry(Protocol):
    def municipality_of(self, cpr: str) -> str | None:
        """The municipality code the register holds for `cpr` (ten digits), or None if unknown."""
        ...


_LOOKUP = select(registry_persons.c.municipality).where(registry_persons.c.cpr == bindparam("cpr"))


class LocalRegistry:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def municipality_of(self, cpr: str) -> str | None:
        code: str | None = self.conn.execute(_LOOKUP, {"cpr": cpr}).scalar_one_or_none()
        return code
