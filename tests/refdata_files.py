"""Reference-data files for tests, built from the real samples in ../shared (never copied in)."""

from __future__ import annotations

import csv
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
REFDATA = SHARED / "refdata" / "raw"
POSTNORD = REFDATA / "dk-postals__postals.csv"


def roads_file(folder: Path) -> Path:
    """DAWA's CPR road register samples joined into road segments: `kommunekode;vejkode;vejnavn;postnr`."""
    with (REFDATA / "dawa_test__cpr_vej.csv").open(encoding="utf-8") as f:
        names = {(r["kommunekode"], r["vejkode"]): r["navn"] for r in csv.DictReader(f, delimiter=";")}
    segments = set()
    with (REFDATA / "dawa_test__cpr_postnr.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter=";"):
            name = names.get((r["kommunekode"], r["vejkode"]))
            if name:
                segments.add((r["kommunekode"], r["vejkode"], name, r["nr"]))
    path = folder / "roads.csv"
    lines = ["kommunekode;vejkode;vejnavn;postnr"] + [";".join(s) for s in sorted(segments)]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    return path


def registry_file(folder: Path, persons: list[tuple[str, str, str, str, str]]) -> Path:
    path = folder / "registry.csv"
    lines = ["cpr;kommunekode;vejnavn;husnr;postnr"] + [";".join(p) for p in persons]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
