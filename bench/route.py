"""Routing benchmark: decisions per second with the full PostNord table and a 1,000,000-person registry.

What it does, all with one seed so every run sees the same data:

1. Generates a registry extract of invented persons (mostly children born 2008-2026, with CPR numbers
   whose date part is valid) spread over the 98 municipalities, and an invented road file, into a temp
   directory; imports them and the real PostNord file (../shared/refdata/raw, read in place) with
   `postkasse.routing.refdata.import_file` into a fresh SQLite store. The import is timed.
2. Generates the facts of 100,000 messages: ~70% a CPR in the registry, ~15% a CPR not in it with a
   postal code (unique, ambiguous or unknown), ~10% a CPR not in it with a street address, ~5% no CPR,
   an invalid or replacement CPR, or two CPRs. Postal codes are the real ones from the imported table.
3. Times `decide(...)` over all of them in a fresh process that loads only what routing needs:
   * `store`: the production `StoreLookups` (Geography and `LocalRegistry` in memory: a sorted array of
     CPR integers with a parallel array of municipality indexes, one bisect a lookup); also one pass the
     way the route step builds its lookups, `Router.lookups(conn)` per message;
   * `dict`: the same policy with the registry in a Python dict, the baseline without the lookup cost.
   Every variant must reach the same decisions (a digest over all decisions is compared).
4. Peak memory: each decision process reports its own peak RSS (ru_maxrss); the benchmark process's own
   peak (generation + import) is reported separately.
5. Times `MailExtractor.facts` on generated raw mails, as information.

    .venv/bin/python bench/route.py                       # full size, print the results
    .venv/bin/python bench/route.py --record              # and write bench/RESULTS.md
    .venv/bin/python bench/route.py --persons 100000 --messages 20000   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import hashlib
import json
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from common import (  # bench/ is the script's folder, first on sys.path
    BenchError,
    command,
    cpu_ticks,
    current_rss_mb,
    machine,
    noise,
    peak_hwm_mb,
    record_section,
)
from sqlalchemy import Connection, select

from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.mailbox import content
from postkasse.routing.extract import MailExtractor
from postkasse.routing.facts import Address, Facts
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import AgeRange, Decision, Lookups, decide
from postkasse.routing.refdata import Geography, import_file
from postkasse.routing.registry import LocalRegistry
from postkasse.routing.router import Router, StoreLookups
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from postkasse.store.schema import postal_codes, registry_persons

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
POSTNORD = PROJECT.parent / "shared" / "refdata" / "raw" / "dk-postals__postals.csv"

SECTION_BEGIN = "<!-- bench/route.py: begin (replaced by --record) -->"
SECTION_END = "<!-- bench/route.py: end -->"

TARGET_RATE = 20_000  # decisions per second, one core, registry lookup included
TARGET_MB = 300  # peak RSS of the deciding process
TODAY = dt.date(2026, 11, 1)  # the Danish date the messages were received: fixed, so runs agree
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
AGES = AgeRange()
VARIANTS = ("store", "dict")

_STEMS = """Skole Kirke Mølle Bøge Ege Birke Ahorn Rose Linde Strand Skov Enge Nørre Søndre Vester Øster
Hav Sø Bakke Mark Kongens Dronning Prinsens Fyrre Hassel Kastanje Valmue Syren Hyld Tjørne Rønne Pile Elme
Gran Lærke Svane Stær Ørne Falke Ravne Bavne Holme Fjord Bro Torve Park Have Agre Toft Vænge Ringe"""
ROAD_STEMS = _STEMS.split()
ROAD_ENDINGS = ("vej", "gade", "allé", "stræde", "stien", "toften", "vænget", "parken", "bakken", "engen")
FIRST_NAMES = ("Emma", "Ida", "Clara", "Freja", "Alma", "Noah", "Oscar", "William", "Lucas", "Carl")
LAST_NAMES = ("Jensen", "Nielsen", "Hansen", "Pedersen", "Andersen", "Larsen", "Sørensen", "Rasmussen")


# --- measuring ----------------------------------------------------------------------------------


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


@contextlib.contextmanager
def load_meter(into: list[tuple[float, float]]) -> Iterator[None]:
    """Appends (steal share, CPUs kept busy by other processes) over the time the block ran (see `noise`)."""
    start = cpu_ticks()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    yield
    end = cpu_ticks()
    into.append(noise(start, end, time.perf_counter() - wall0, time.process_time() - cpu0))


# --- generating the data --------------------------------------------------------------------------


def cpr_of(born: dt.date, rng: random.Random) -> str:
    """A CPR number with a valid date part for `born`; the 7th digit encodes the century."""
    if not 1900 <= born.year <= 2036:
        raise BenchError(f"no CPR century digit for {born.year} is generated")
    # 4-9 with a two-digit year up to 36 is 2000-2036; 0-3 is 1900-1999 (python-stdnum's table).
    seventh = "456789"[int(rng.random() * 6)] if born.year >= 2000 else "0123"[int(rng.random() * 4)]
    serial = int(rng.random() * 1000)
    return f"{born.day:02d}{born.month:02d}{born.year % 100:02d}{seventh}{serial:03d}"


def random_date(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    span = last.toordinal() - first.toordinal() + 1
    return dt.date.fromordinal(first.toordinal() + int(rng.random() * span))


CHILD_BORN = (dt.date(2008, 1, 1), TODAY - dt.timedelta(days=1))


def child_cpr(rng: random.Random) -> str:
    return cpr_of(random_date(rng, *CHILD_BORN), rng)


@dataclass
class World:
    """What generation knows: postal codes by municipality, roads, and the persons in the registry."""

    codes: list[str]  # the 98 municipality codes
    weights: list[float]  # a population-like weight per municipality
    postals_of: dict[str, list[str]]  # municipality -> its postal codes in the PostNord table
    postal_munis: dict[str, frozenset[str]]  # postal code -> municipalities (from the store)
    city_of: dict[str, str]
    roads_of: dict[tuple[str, str], list[str]]  # (municipality, postal) -> road names
    road_list: list[tuple[str, str, str]]  # (municipality, postal, name)
    persons: list[tuple[str, str, str, str, str]]  # (cpr, municipality, street, number, postal)
    person_cprs: set[str]


def postnord_postals(munis: Municipalities) -> dict[str, list[str]]:
    """Municipality -> postal codes, read from the PostNord file in ../shared (street codes >= 1000)."""
    out: dict[str, set[str]] = defaultdict(set)
    lines = POSTNORD.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split(";")
    k, p = header.index("KOMMUNE_NR"), header.index("POSTNR")
    for line in lines[1:]:
        fields = line.split(";")
        code, postal = fields[k].strip().zfill(4), fields[p].strip().zfill(4)
        if code in munis.by_code and postal >= "1000":
            out[code].add(postal)
    return {code: sorted(out[code]) for code in munis.by_code}


def generate_roads(
    rng: random.Random, codes: list[str], weights: list[float], postals_of: dict[str, list[str]], n: int
) -> list[tuple[str, str, str, str]]:
    """Invented road segments (kommunekode, vejkode, vejnavn, postnr), spread like the population."""
    names = [stem + ending for stem in ROAD_STEMS for ending in ROAD_ENDINGS]
    next_code: dict[str, int] = defaultdict(lambda: 1)
    out = []
    while len(out) < n:
        code = rng.choices(codes, weights)[0]
        if not postals_of[code] or next_code[code] > 9999:
            continue
        road_code = next_code[code]
        next_code[code] += 1
        out.append((code, f"{road_code:04d}", rng.choice(names), rng.choice(postals_of[code])))
    return out


def generate_persons(
    rng: random.Random,
    n: int,
    codes: list[str],
    weights: list[float],
    postals_of: dict[str, list[str]],
    roads_of: dict[tuple[str, str], list[str]],
) -> list[tuple[str, str, str, str, str]]:
    """`n` distinct invented persons, 90% children born 2008-2026, the rest adults born 1950-1999."""
    seen: set[str] = set()
    persons = []
    municipality_draws = iter(rng.choices(codes, weights, k=n * 2))
    while len(persons) < n:
        if rng.random() < 0.9:
            cpr = child_cpr(rng)
        else:
            cpr = cpr_of(random_date(rng, dt.date(1950, 1, 1), dt.date(1999, 12, 31)), rng)
        if cpr in seen:
            continue
        seen.add(cpr)
        code = next(municipality_draws)
        postal = rng.choice(postals_of[code]) if postals_of[code] else ""
        roads = roads_of.get((code, postal))
        street = rng.choice(roads) if roads else ""
        number = str(rng.randrange(1, 200)) if street else ""
        persons.append((cpr, code, street, number, postal))
    return persons


def write_csv(path: Path, header: str, rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write(header + "\n")
        for start in range(0, len(rows), 50_000):
            f.write("".join(";".join(r) + "\n" for r in rows[start : start + 50_000]))
    return path


IN_REGISTRY = "CPR in registry"
POSTAL_ONLY = "not in registry, postal code"
STREET = "not in registry, street address"
OTHER = "no CPR / invalid / replacement / two CPRs"


def generate_facts(world: World, rng: random.Random, n: int) -> list[tuple[str, Facts]]:
    """The facts of `n` messages in the mix described in the module docstring, each with its kind."""
    unique = sorted(p for p, m in world.postal_munis.items() if len(m) == 1)
    ambiguous = sorted(p for p, m in world.postal_munis.items() if len(m) > 1)
    unknown = [f"{p:04d}" for p in range(1000, 10000) if f"{p:04d}" not in world.postal_munis]
    persons = world.persons

    def outsider() -> str:
        while True:
            cpr = child_cpr(rng)
            if cpr not in world.person_cprs:
                return cpr

    def one(r: float) -> Facts:
        if r < 0.70:  # a CPR in the registry, sometimes with the sender's address or municipality
            cpr, code, street, number, postal = rng.choice(persons)
            s = rng.random()
            if s < 0.65 or not postal:
                return Facts(cprs=(cpr,))
            if s < 0.80:
                return Facts(cprs=(cpr,), address=Address(street or None, number or None, postal))
            if s < 0.90:
                return Facts(cprs=(cpr,), address=Address(None, None, postal))
            if s < 0.95:
                return Facts(cprs=(cpr,), receiver_municipality=code)
            # an address in another municipality: the registry decides, flagged
            return Facts(cprs=(cpr,), address=Address(None, None, rng.choice(unique)))
        if r < 0.85:  # not in the registry, a postal code only: unique, ambiguous or unknown
            s = rng.random()
            postal = rng.choice(unique if s < 0.60 else ambiguous if s < 0.95 else unknown)
            return Facts(cprs=(outsider(),), address=Address(None, None, postal))
        if r < 0.95:  # not in the registry, a street address, sometimes the receiver municipality
            code, postal, street = rng.choice(world.road_list)
            if rng.random() < 0.25:
                street = "Ukendt Gyde"
            receiver = rng.choice((code, rng.choice(world.codes))) if rng.random() < 0.1 else None
            address = Address(street, str(rng.randrange(1, 200)), postal)
            return Facts(cprs=(outsider(),), address=address, receiver_municipality=receiver)
        s = rng.random()  # no CPR, an invalid (no such date, future) or replacement CPR, or two children
        if s < 0.4:
            return Facts()
        if s < 0.6:
            return Facts(cprs=(f"32{rng.randrange(1, 13):02d}15{rng.randrange(4000, 9999)}",))
        if s < 0.7:
            return Facts(cprs=(f"0101{rng.randrange(27, 36):02d}4{rng.randrange(100, 999)}",))
        if s < 0.8:
            return Facts(cprs=(f"{child_cpr(rng)[:6]}A{rng.randrange(100, 999)}",))
        first, second = rng.sample(persons, 2)
        return Facts(cprs=(first[0], second[0]))

    out: list[tuple[str, Facts]] = []
    for _ in range(n):
        r = rng.random()
        kind = IN_REGISTRY if r < 0.70 else POSTAL_ONLY if r < 0.85 else STREET if r < 0.95 else OTHER
        out.append((kind, one(r)))
    return out


def facts_to_json(facts: Facts) -> list[Any]:
    a = facts.address
    return [list(facts.cprs), facts.receiver_municipality, a and [a.street, a.house_number, a.postal_code]]


def facts_from_json(item: list[Any]) -> Facts:
    cprs, receiver, address = item
    return Facts(
        cprs=tuple(cprs), receiver_municipality=receiver, address=Address(*address) if address else None
    )


def mail_of(facts: Facts, n: int, world: World) -> bytes:
    """A plain referral mail carrying `facts`, in one of a few ways clinicians write them."""
    name = f"{FIRST_NAMES[n % len(FIRST_NAMES)]} {LAST_NAMES[n % len(LAST_NAMES)]}"
    lines = ["Kære kommune,", "", "Hermed henvisning vedrørende barnet nedenfor.", "", f"Navn: {name}"]
    for i, cpr in enumerate(facts.cprs):
        dashed = f"{cpr[:6]}-{cpr[6:]}"
        label = "Søskende CPR" if i else ("CPR", "CPR-nr.", "Personnummer")[n % 3]
        lines.append(f"{label}: {dashed if n % 2 else cpr}")
    a = facts.address
    if a and a.street:
        city = world.city_of.get(a.postal_code or "", "By")
        lines.append(f"Adresse: {a.street} {a.house_number}, {a.postal_code} {city}")
    elif a:
        lines.append(f"Postnr: {a.postal_code}")
    if facts.receiver_municipality:
        lines.append(f"Kommune: {facts.receiver_municipality}")
    lines += [
        "",
        "Barnet har brug for en koordineret indsats; ring gerne på 87 65 43 21.",
        "",
        "Mvh",
        "Lægen",
    ]
    message = EmailMessage()
    message["From"] = "laege@example.dk"
    message["To"] = "postkasse@example.dk"
    message["Subject"] = "AKUT: henvisning" if n % 10 == 0 else "Henvisning"
    message["Message-ID"] = f"<bench-{n}@example.dk>"
    message.set_content("\n".join(lines) + "\n")
    return message.as_bytes(policy=SMTP)


# --- the decision processes ------------------------------------------------------------------------


class DictRegistry:
    """The registry as a Python dict: the baseline that shows the policy's own cost."""

    def __init__(self, conn: Connection) -> None:
        self.by_cpr: dict[str, str] = {
            r.cpr: r.municipality
            for r in conn.execute(select(registry_persons.c.cpr, registry_persons.c.municipality))
        }

    def municipality_of(self, cpr: str) -> str | None:
        return self.by_cpr.get(cpr)


def decide_all(facts: Sequence[Facts], lookups: Lookups) -> tuple[float, float, str, Counter[str]]:
    """Decide every message; (wall seconds, CPU seconds, digest of all decisions, outcome counts).

    Decisions are folded into a digest and counts as they come, so they take no memory.
    """
    digest = hashlib.sha256()
    outcomes: Counter[str] = Counter()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for f in facts:
        d: Decision = decide(f, lookups, TODAY, AGES)
        key = f"{d.decision}:{d.municipality}:{d.triage_reason}:{d.reasons[-1] if d.reasons else ''}"
        digest.update(key.encode())
        outcomes[d.triage_reason or (d.reasons[-1] if d.reasons else d.decision)] += 1
    return time.perf_counter() - wall0, time.process_time() - cpu0, digest.hexdigest()[:16], outcomes


def decide_all_step(facts: Sequence[Facts], lookups_for: Callable[[], Lookups]) -> tuple[float, float, str]:
    """Like the route step: lookups built afresh for every message by `lookups_for`."""
    digest = hashlib.sha256()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for f in facts:
        d = decide(f, lookups_for(), TODAY, AGES)
        key = f"{d.decision}:{d.municipality}:{d.triage_reason}:{d.reasons[-1] if d.reasons else ''}"
        digest.update(key.encode())
    return time.perf_counter() - wall0, time.process_time() - cpu0, digest.hexdigest()[:16]


def child(variant: str, url: str, facts_path: Path, repeat: int, profile: bool) -> dict[str, Any]:
    """One decision process: load the store's reference data, the facts, decide, report."""
    result: dict[str, Any] = {"variant": variant, "rss_start_mb": current_rss_mb()}
    munis = Municipalities.load(DEFAULT_MUNICIPALITIES)
    store = Store(url)
    with store.read() as conn:
        t0 = time.perf_counter()
        geography = Geography.load(conn)
        registry: Any = LocalRegistry.load(conn) if variant == "store" else DictRegistry(conn)
        if variant == "store":
            result["registry_bytes"] = len(registry.cprs) * registry.cprs.itemsize + len(registry.indexes) * 2
        result["load_s"] = time.perf_counter() - t0
        result["rss_loaded_mb"] = current_rss_mb()
        facts = [facts_from_json(item) for item in json.loads(facts_path.read_text())]
        result["rss_with_facts_mb"] = current_rss_mb()
        lookups = StoreLookups(munis, geography, registry)
        runs, load, digests = [], [], set()
        for _ in range(repeat):
            with load_meter(load):
                wall, cpu, digest, outcomes = decide_all(facts, lookups)
            runs.append((wall, cpu))
            digests.add(digest)
        if len(digests) != 1:
            raise BenchError(f"{variant}: the repeats reached different decisions")
        result |= {"runs": runs, "load": load, "digest": digests.pop(), "outcomes": dict(outcomes)}
        router = Router(munis, AGES)

        if variant == "store":
            router.lookups(conn)  # the first call loads the reference data; time the steady state
            wall, cpu, digest = decide_all_step(facts, lambda: router.lookups(conn))
            if digest != result["digest"]:
                raise BenchError(f"{variant}: lookups built per message reached other decisions")
            result["step_run"] = (wall, cpu)
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            decide_all(facts, lookups)
            profiler.disable()
            stats = pstats.Stats(profiler, stream=sys.stderr)
            print(f"\n--- cProfile, variant {variant} ---", file=sys.stderr)
            stats.sort_stats("tottime").print_stats(18)
    result["peak_rss_mb"] = peak_hwm_mb()
    result["ru_maxrss_mb"] = peak_rss_mb()
    store.dispose()
    return result


def run_child(variant: str, url: str, facts_path: Path, repeat: int, profile: bool) -> dict[str, Any]:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--url", url]
    args += ["--facts", str(facts_path), "--repeat", str(repeat)] + (["--profile"] if profile else [])
    done = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"the {variant} decision process failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the benchmark ---------------------------------------------------------------------------------


@dataclass
class Results:
    args: argparse.Namespace
    machine: dict[str, str]
    import_s: dict[str, float]
    rows: dict[str, int]
    generate_s: float
    mix: dict[str, int]
    variants: dict[str, dict[str, Any]]
    extract: dict[str, float]
    parent_peak_mb: float
    db_mb: float

    def rate(self, variant: str) -> tuple[float, float]:
        """(median decisions/s by wall clock, by CPU time) over the repeats."""
        runs = self.variants[variant]["runs"]
        n = self.args.messages
        return statistics.median(n / w for w, _ in runs), statistics.median(n / c for _, c in runs)

    def micros(self, variant: str) -> float:
        return 1e6 / self.rate(variant)[0]


def bench(args: argparse.Namespace) -> Results:
    rng = random.Random(args.seed)
    munis = Municipalities.load(DEFAULT_MUNICIPALITIES)
    codes = sorted(munis.by_code)
    weights = [rng.lognormvariate(0, 1) for _ in codes]
    postals_of = postnord_postals(munis)
    work = Path(tempfile.mkdtemp(prefix="postkasse-route-bench-"))
    try:
        print(f"generating {args.persons:,} persons and {args.roads:,} road segments in {work}", flush=True)
        t0 = time.perf_counter()
        roads = generate_roads(rng, codes, weights, postals_of, args.roads)
        roads_of: dict[tuple[str, str], list[str]] = defaultdict(list)
        for code, _, name, postal in roads:
            roads_of[(code, postal)].append(name)
        persons = generate_persons(rng, args.persons, codes, weights, postals_of, roads_of)
        registry_path = write_csv(work / "registry.csv", "cpr;kommunekode;vejnavn;husnr;postnr", persons)
        roads_path = write_csv(work / "roads.csv", "kommunekode;vejkode;vejnavn;postnr", roads)
        generate_s = time.perf_counter() - t0

        db = work / "route.db"
        url = f"sqlite:///{db}"
        store = Store(url)
        upgrade(store)
        import_s, rows = {}, {}
        for kind, path in (("postnord", POSTNORD), ("roads", roads_path), ("registry", registry_path)):
            t0 = time.perf_counter()
            imported = import_file(store, kind, path, NOW)
            import_s[kind] = time.perf_counter() - t0
            rows[kind] = imported.rows
            print(f"imported {kind}: {imported.rows:,} rows in {import_s[kind]:.1f} s", flush=True)
        if rows["registry"] != args.persons:
            raise BenchError(f"the registry import holds {rows['registry']} persons, not {args.persons}")
        registry_path.unlink()
        with store.read() as conn:
            geography = Geography.load(conn)
            city_of = {r.postal_code: r.city for r in conn.execute(select(postal_codes))}
        store.dispose()

        world = World(
            codes,
            weights,
            postals_of,
            geography.postal,
            city_of,
            dict(roads_of),
            [(c, p, name) for c, _, name, p in roads],
            persons,
            {p[0] for p in persons},
        )
        kinds_and_facts = generate_facts(world, rng, args.messages)
        mix = Counter(kind for kind, _ in kinds_and_facts)
        facts = [f for _, f in kinds_and_facts]
        del kinds_and_facts
        facts_path = work / "facts.json"
        facts_path.write_text(json.dumps([facts_to_json(f) for f in facts]))

        extract = measure_extraction(facts[: args.mails], munis, world)

        variants = {}
        for variant in VARIANTS:
            print(f"deciding {args.messages:,} messages: {variant}", flush=True)
            variants[variant] = run_child(variant, url, facts_path, args.repeat, args.profile)
        digests = {v: r["digest"] for v, r in variants.items()}
        if len(set(digests.values())) != 1:
            raise BenchError(f"the variants reached different decisions: {digests}")
        return Results(
            args,
            machine(),
            import_s,
            rows,
            generate_s,
            dict(mix),
            variants,
            extract,
            peak_rss_mb(),
            db.stat().st_size / 2**20,
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def measure_extraction(facts: Sequence[Facts], munis: Municipalities, world: World) -> dict[str, float]:
    """Extraction from raw mail, timed; also how many mails gave back the CPRs and postal code put in."""
    mails = [mail_of(f, n, world) for n, f in enumerate(facts)]
    extractor = MailExtractor(munis.by_name)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    extracted = [extractor.facts(content.read(raw)) for raw in mails]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    same = sum(
        e.cprs == f.cprs
        and (e.address.postal_code if e.address else None) == (f.address.postal_code if f.address else None)
        and e.receiver_municipality == f.receiver_municipality
        for e, f in zip(extracted, facts, strict=True)
    )
    return {
        "mails": len(mails),
        "wall_s": wall,
        "cpu_s": cpu,
        "same": same,
        "bytes": statistics.mean(map(len, mails)),
    }


# --- reporting --------------------------------------------------------------------------------------

LABELS = {
    "store": "production `StoreLookups` (`LocalRegistry`: sorted int64 array + bisect)",
    "dict": "baseline: policy alone, registry in a Python dict",
}


def report_lines(res: Results, markdown: bool) -> list[str]:
    """The results as Markdown-ish lines, for the terminal and for bench/RESULTS.md."""
    a, m, v = res.args, res.machine, res.variants
    b = "**" if markdown else ""
    store = v["store"]
    store_rate, store_cpu_rate = res.rate("store")
    load = [x for r in v.values() for x in r["load"]]
    steal, other = [x[0] for x in load], [x[1] for x in load]
    lines = [
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}, "
        f"SQLite {m['sqlite']}; {m['date']}",
        f"- Data: {res.rows['registry']:,} invented persons (seed {a.seed}; 90% children born 2008-2026, "
        f"over the 98 municipalities), the full PostNord table ({res.rows['postnord']:,} rows, read "
        f"from ../shared/refdata/raw), {res.rows['roads']:,} invented road segments; "
        f"SQLite file {res.db_mb:.0f} MB",
        f"- Generation {res.generate_s:.1f} s; import with `refdata.import_file`: "
        + ", ".join(f"{k} {t:.1f} s" for k, t in res.import_s.items()),
        f"- Messages: {a.messages:,} facts: "
        + ", ".join(f"{n:,} {k}" for k, n in sorted(res.mix.items(), key=lambda kv: -kv[1])),
        "- Each variant runs in a fresh process that loads only the municipalities, the Geography and its "
        f"registry, then decides all messages {a.repeat} times on one thread; the rate is the median. "
        "Peak RSS is that process's VmHWM.",
        "",
        "| variant | decisions/s | per CPU-second | µs/decision | load | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        wall, cpu = res.rate(name)
        lines.append(
            f"| {LABELS[name]} | {b}{wall:,.0f}{b} | {cpu:,.0f} | {res.micros(name):.1f} | "
            f"{v[name]['load_s']:.1f} s | {b}{v[name]['peak_rss_mb']:.0f} MB{b} |"
        )
    lookup_us = res.micros("store") - res.micros("dict")
    rate_ok = store_rate >= TARGET_RATE
    mem_ok = store["peak_rss_mb"] < TARGET_MB
    lines += [
        "",
        f"- Target {TARGET_RATE:,} decisions/s on one core, registry lookup included: {store_rate:,.0f}/s "
        f"({store_cpu_rate:,.0f} per CPU-second): {b}{'met' if rate_ok else 'NOT MET'}{b}.",
        f"- Target peak memory under {TARGET_MB} MB: the deciding process peaked at "
        f"{store['peak_rss_mb']:.0f} MB: {b}{'met' if mem_ok else 'NOT MET'}{b} (RSS "
        f"{store['rss_loaded_mb']:.0f} MB with the reference data loaded, "
        f"{store['rss_with_facts_mb']:.0f} MB with the {a.messages:,} facts in memory).",
        (
            f"- The registry lookup takes {lookup_us:.0f} of the {res.micros('store'):.0f} µs per decision"
            if lookup_us > 0
            else "- The in-memory registry was no slower than a dict in this run (the difference is noise)"
        )
        + f"; the policy with a dict registry ran at {res.rate('dict')[0]:,.0f}/s and peaked at "
        f"{v['dict']['peak_rss_mb']:.0f} MB.",
        f"- The registry in memory: {store['registry_bytes'] / 2**20:.1f} MB of arrays for "
        f"{res.rows['registry']:,} persons, loaded with the Geography in {store['load_s']:.1f} s.",
        f"- As the route step builds its lookups, `Router.lookups(conn)` per message (reference data "
        "re-checked at most once a second, after the first load): "
        f"{a.messages / store['step_run'][0]:,.0f}/s, one pass.",
        f"- All variants reached the same decisions (digest {store['digest']}): "
        + ", ".join(f"{k} {n:,}" for k, n in sorted(store["outcomes"].items(), key=lambda kv: -kv[1])),
        f"- Extraction (information, not in the rates above): `MailExtractor.facts` on "
        f"{res.extract['mails']:,} generated plain mails of ~{res.extract['bytes']:.0f} bytes: "
        f"{res.extract['mails'] / res.extract['wall_s']:,.0f} mails/s "
        f"({res.extract['mails'] / res.extract['cpu_s']:,.0f} per CPU-second); "
        f"{res.extract['same']:,} gave back exactly the CPRs, postal code and municipality put in.",
        f"- The benchmark process itself (generation, and the import of {res.rows['registry']:,} persons "
        f"with `refdata.import_file`) peaked at {res.parent_peak_mb:,.0f} MB (ru_maxrss); that is the "
        "`refdata import` command's memory, not routing's.",
        f"- During the decision runs other processes kept {min(other):.1f}–{max(other):.1f} of the "
        f"{m['nproc']} CPUs busy and CPU steal was {min(steal):.0%}–{max(steal):.0%}; where that is high "
        "the per-CPU-second rate is the better single-core figure.",
    ]
    return lines


def record(res: Results, argv: Sequence[str]) -> None:
    """Replace this script's section of bench/RESULTS.md (or append it), keeping all other text."""
    lines = [command("route.py", argv), *report_lines(res, markdown=True)]
    record_section(SECTION_BEGIN, SECTION_END, "## Routing (bench/route.py)", lines)


# --- command line -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--persons", type=int, default=1_000_000, help="persons in the registry")
    parser.add_argument("--messages", type=int, default=100_000, help="messages to decide")
    parser.add_argument("--roads", type=int, default=50_000, help="invented road segments")
    parser.add_argument("--mails", type=int, default=10_000, help="raw mails for the extraction timing")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the messages per variant")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each variant (stderr)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory with the store")
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--facts", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.url, args.facts, args.repeat, args.profile)))
        return 0
    try:
        res = bench(args)
    except BenchError as exc:
        print(f"route benchmark failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(res, markdown=False)))
    if args.record:
        record(res, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
