"""The 98 municipalities and their committees: configuration facts from config/municipalities.toml."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from postkasse.routing.extract import normalise_name


@dataclass(frozen=True)
class Unit:
    """A unit of the municipality a committee forwards referrals to (PPR, familieafdeling, sundhedspleje):
    `address` is its secure mail address; a unit without one cannot be sent anything."""

    id: str
    name: str
    address: str | None
    kind: str = ""


@dataclass(frozen=True)
class Municipality:
    code: str
    name: str
    region: str
    participating: bool
    notification_address: str | None
    units: tuple[Unit, ...] = ()

    def unit(self, unit_id: str) -> Unit | None:
        return next((u for u in self.units if u.id == unit_id), None)


class Municipalities:
    def __init__(self, items: list[Municipality], regions: dict[str, str]) -> None:
        self.by_code = {m.code: m for m in items}
        self.regions = regions
        self.by_name = {normalise_name(m.name): m.code for m in items}

    def get(self, code: str) -> Municipality | None:
        return self.by_code.get(code)

    def __len__(self) -> int:
        return len(self.by_code)

    @classmethod
    def load(cls, path: Path) -> Municipalities:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"municipalities file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        regions = {str(k): str(v) for k, v in data.get("regions", {}).items()}
        items = []
        for n, entry in enumerate(data.get("municipality", []), start=1):
            code = str(entry.get("code", ""))
            if not (len(code) == 4 and code.isdigit()):
                raise ValueError(f"{path}: municipality #{n}: code {code!r} is not four digits")
            region = str(entry.get("region", ""))
            if region not in regions:
                raise ValueError(f"{path}: municipality {code}: unknown region {region!r}")
            items.append(
                Municipality(
                    code,
                    str(entry["name"]),
                    region,
                    bool(entry.get("participating", True)),
                    entry.get("notification_address") or None,
                    _units(path, code, entry.get("unit", [])),
                )
            )
        if len({m.code for m in items}) != len(items):
            raise ValueError(f"{path}: a municipality code is listed twice")
        return cls(items, regions)


UNIT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _units(path: Path, code: str, entries: list[dict[str, object]]) -> tuple[Unit, ...]:
    """`[[municipality.unit]]` with `id`, `name`, `address` and optional `kind`, checked as they load."""
    units = []
    for n, entry in enumerate(entries, start=1):
        unit_id, name = str(entry.get("id", "")), str(entry.get("name", "")).strip()
        address = str(entry.get("address") or "").strip() or None
        where = f"{path}: municipality {code}: unit #{n}"
        if not UNIT_ID.match(unit_id):
            raise ValueError(f"{where}: id {unit_id!r} is not lower-case letters, digits, - or _")
        if not name:
            raise ValueError(f"{where}: the unit needs a name")
        if address is not None and not ADDRESS.match(address):
            raise ValueError(f"{where}: address {address!r} is not a mail address")
        units.append(Unit(unit_id, name, address, str(entry.get("kind", "")).strip()))
    if len({u.id for u in units}) != len(units):
        raise ValueError(f"{path}: municipality {code}: a unit id is listed twice")
    return tuple(units)
