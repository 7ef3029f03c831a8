"""The 98 municipalities and their committees: configuration facts from config/municipalities.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from postkasse.routing.extract import normalise_name


@dataclass(frozen=True)
class Municipality:
    code: str
    name: str
    region: str
    participating: bool
    notification_address: str | None


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
                )
            )
        if len({m.code for m in items}) != len(items):
            raise ValueError(f"{path}: a municipality code is listed twice")
        return cls(items, regions)
