"""Reference data: importers for PostNord's postal codes, road segments and a CPR registry extract,
and the in-memory geography the routing policy looks things up in.

An importer reads and checks the whole file first; a bad line refuses the file with its line number
and the data already in force stays. A good file replaces its kind whole, in one transaction.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select

from postkasse.routing.extract import normalise_name
from postkasse.store import Store
from postkasse.store.schema import postal_codes, refdata_imports, registry_persons, road_segments

BATCH = 10_000


class RefdataError(ValueError):
    """A reference-data file was refused; the message names the line and what is wrong."""


@dataclass(frozen=True)
class ImportResult:
    kind: str
    rows: int
    imported_at: datetime


def _digits(value: str, width: int, what: str) -> str:
    value = value.strip()
    if not value.isdigit() or len(value) > width:
        raise ValueError(f"{what} {value!r} is not a number of at most {width} digits")
    return value.zfill(width)


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """`;`-separated rows with a header, as (line number, row); a BOM and CRLF are tolerated."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RefdataError(f"{path.name}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=";")
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        raise RefdataError(f"{path.name}: line 1: missing column(s) {', '.join(missing)}")
    reader.fieldnames = header
    for row in reader:
        if None in row or any(row.get(c) is None for c in required):
            raise RefdataError(f"{path.name}: line {reader.line_num}: too few or too many fields")
        yield reader.line_num, row


def _parse(
    path: Path,
    required: tuple[str, ...],
    convert: Callable[[dict[str, str]], dict[str, Any]],
    key: Callable[[dict[str, Any]], tuple[str, ...]],
) -> list[dict[str, Any]]:
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    first_line: dict[tuple[str, ...], int] = {}
    for line, row in _rows(path, required):
        try:
            record = convert(row)
        except (ValueError, KeyError) as exc:
            raise RefdataError(f"{path.name}: line {line}: {exc}") from None
        k = key(record)
        if k in out and out[k] != record:
            raise RefdataError(f"{path.name}: line {line}: the same key as line {first_line[k]}, other data")
        out[k] = record
        first_line.setdefault(k, line)
    if not out:
        raise RefdataError(f"{path.name}: no data rows")
    return list(out.values())


def _postnord(row: dict[str, str]) -> dict[str, Any]:
    return {
        "postal_code": _digits(row["POSTNR"], 4, "postal code"),
        "municipality": _digits(row["KOMMUNE_NR"], 4, "municipality code"),
        "city": row["BYNAVN"].strip(),
    }


def _road(row: dict[str, str]) -> dict[str, Any]:
    name = row["vejnavn"].strip()
    if not name:
        raise ValueError("empty road name")
    return {
        "municipality": _digits(row["kommunekode"], 4, "municipality code"),
        "road_code": _digits(row["vejkode"], 4, "road code"),
        "postal_code": _digits(row["postnr"], 4, "postal code"),
        "road_name": name,
        "road_key": normalise_name(name),
    }


def _person(row: dict[str, str]) -> dict[str, Any]:
    cpr = row["cpr"].strip().replace("-", "")
    if len(cpr) != 10 or not cpr[:6].isdigit():
        raise ValueError(f"CPR {'*' * len(cpr)} is not ten characters starting with a date")
    postal = row["postnr"].strip()
    return {
        "cpr": cpr,
        "municipality": _digits(row["kommunekode"], 4, "municipality code"),
        "road_name": row["vejnavn"].strip() or None,
        "house_number": row["husnr"].strip() or None,
        "postal_code": _digits(postal, 4, "postal code") if postal else None,
    }


@dataclass(frozen=True)
class Kind:
    name: str
    table: Table
    required: tuple[str, ...]
    convert: Callable[[dict[str, str]], dict[str, Any]]
    key: Callable[[dict[str, Any]], tuple[str, ...]]


KINDS = {
    "postnord": Kind(
        "postnord",
        postal_codes,
        ("KOMMUNE_NR", "POSTNR", "BYNAVN"),
        _postnord,
        lambda r: (r["postal_code"], r["municipality"]),
    ),
    "roads": Kind(
        "roads",
        road_segments,
        ("kommunekode", "vejkode", "vejnavn", "postnr"),
        _road,
        lambda r: (r["municipality"], r["road_code"], r["postal_code"]),
    ),
    "registry": Kind(
        "registry",
        registry_persons,
        ("cpr", "kommunekode", "vejnavn", "husnr", "postnr"),
        _person,
        lambda r: (r["cpr"],),
    ),
}


def import_file(
    store: Store,
    kind_name: str,
    path: Path,
    now: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Check the whole file, then replace that kind of reference data with it; `progress(done, total)` is
    told after each batch written."""
    kind = KINDS[kind_name]
    records = _parse(path, kind.required, kind.convert, kind.key)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with store.write() as conn:
        conn.execute(delete(kind.table))
        for start in range(0, len(records), BATCH):
            conn.execute(insert(kind.table), records[start : start + BATCH])
            if progress is not None:
                progress(min(start + BATCH, len(records)), len(records))
        conn.execute(delete(refdata_imports).where(refdata_imports.c.kind == kind.name))
        conn.execute(
            insert(refdata_imports).values(
                kind=kind.name, imported_at=now, source=path.name, sha256=digest, rows=len(records)
            )
        )
    return ImportResult(kind.name, len(records), now)


def imports(conn: Connection) -> dict[str, tuple[datetime, str, int]]:
    rows = conn.execute(select(refdata_imports)).all()
    return {r.kind: (r.imported_at, r.source, r.rows) for r in rows}


class Geography:
    """Postal codes and road segments in memory: which municipalities a postal code or a street lies in."""

    def __init__(
        self, postal: dict[str, frozenset[str]], streets: dict[tuple[str, str], frozenset[str]]
    ) -> None:
        self.postal = postal
        self.streets = streets

    @classmethod
    def load(cls, conn: Connection) -> Geography:
        postal: dict[str, set[str]] = defaultdict(set)
        for row in conn.execute(select(postal_codes.c.postal_code, postal_codes.c.municipality)):
            postal[row.postal_code].add(row.municipality)
        streets: dict[tuple[str, str], set[str]] = defaultdict(set)
        for road in conn.execute(
            select(road_segments.c.postal_code, road_segments.c.road_key, road_segments.c.municipality)
        ):
            streets[(road.postal_code, road.road_key)].add(road.municipality)
        return cls(
            {k: frozenset(v) for k, v in postal.items()}, {k: frozenset(v) for k, v in streets.items()}
        )

    def postal_municipalities(self, postal_code: str) -> frozenset[str]:
        return self.postal.get(postal_code, frozenset())

    def street_municipalities(self, street: str, postal_code: str) -> frozenset[str]:
        return self.streets.get((postal_code, normalise_name(street)), frozenset())
