"""Pipeline benchmark: CPU per message from a stored message to its composed receipt, in-process, on SQLite.

Written for issue 12 (parse each message once), to be run before and after the move of the steps into
`postkasse/flows/`. Everything it takes from the pipeline's wiring is in `pipeline_under_test` below, which
uses `postkasse.flows` where it exists and `postkasse.steps` otherwise, so the same script measures both.

What it does, all with one seed so every run sees the same messages:

1. A fresh SQLite store in a temp directory, upgraded, with the real PostNord table and DAWA's road samples
   (../shared/refdata, read in place, as the tests do) and the demo registry (config/demo-registry.csv)
   imported with `refdata.import_file`.
2. N messages: ~65% mail referrals with a CPR in the registry and an address (routed to a municipality's
   queue), ~15% without a CPR (triage), ~15% with a CPR and a PDF attachment, ~5% MedCom XREF01 referrals
   over the http channel (../shared/fixtures/medcom, each with its own envelope and letter identifier,
   asking for a positive receipt). Senders come from a pool of 400 clinics; every mail has its own
   Message-ID, so nothing is a duplicate.
3. Each message is stored with `store.messages.save` (not timed), then its steps are run by hand in this
   process as the broker would hand them on: the first step's outbox row, then every row a step dispatches,
   except `send` rows, which stay pending (no relay). `time.process_time` is read around one message's
   steps; logging is set up as `serve` does it (JSON, INFO), written to a file in the temp directory.
   A FixedClock moves 20 s per message.
4. Reference lines from the same run: the `parse` step alone (the first step of each message, inside the
   timing above), and a bare `email.message_from_bytes` of the same raw messages (stdlib only, independent
   of postkasse's code: compare it across machines before comparing the pipeline's figures).

Each repetition is a fresh store and a fresh pipeline; the figures recorded are the median over the
repetitions of each repetition's median and p90.

    .venv/bin/python bench/pipeline.py                      # 2,000 messages, 3 repetitions, print
    .venv/bin/python bench/pipeline.py --record             # and write bench/RESULTS.md
    .venv/bin/python bench/pipeline.py --messages 300 --repeat 1   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import email
import importlib
import importlib.util
import inspect
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from common import (  # bench/ is the script's folder, first on sys.path
    PROJECT,
    BenchError,
    code_version,
    command,
    cpu_ticks,
    machine_line,
    noise,
    record_section,
)
from sqlalchemy import text

# --- the code under test: the only names this script takes from postkasse ------------------------
# Stable edges (kept by issue 12): the store, its migration, the reference-data import, settings, the
# clock and the log set-up. The pipeline itself is reached only through `pipeline_under_test`.
from postkasse import logs
from postkasse.clock import FixedClock
from postkasse.config import Settings
from postkasse.routing.refdata import import_file
from postkasse.store import Received, Store
from postkasse.store import messages as stored_messages
from postkasse.store.migrate import upgrade
from tests.refdata_files import POSTNORD, SHARED, roads_file

FIRST_KIND = "parse"  # the first step's kind name; stored outbox rows carry it, so it never changes
SKIPPED_KIND = "send"  # talks to the relay: left pending


def pipeline_under_test(settings: Settings, store: Store, clock: FixedClock) -> tuple[Any, str, str]:
    """(pipeline, first step's kind, the module that built it): `postkasse.flows.build` after the refactor
    of issue 12, `postkasse.steps.build` before it. The pipeline is used only through
    `run(outbox_id, dispatch)`, where `dispatch` gets the follow-up rows, each with `outbox_id` and `kind`;
    since issue 18 `run` also takes the row's kind, as each step's actor hands it on, and is given it."""
    name = "postkasse.flows" if importlib.util.find_spec("postkasse.flows") else "postkasse.steps"
    wiring = importlib.import_module(name)
    return wiring.build(settings, store, clock), getattr(wiring, "FIRST_STEP", FIRST_KIND), name


# --- the messages --------------------------------------------------------------------------------

MEDCOM = SHARED / "fixtures" / "medcom"
XSD = MEDCOM / "xsd"
REGISTRY = PROJECT / "config" / "demo-registry.csv"
OUR_EAN = "5790000000000"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TICK = timedelta(seconds=20)
MIX = (("registry", 65), ("no_cpr", 15), ("attachment", 15), ("medcom", 5))
TOWNS = {"8382": "Hinnerup", "8000": "Aarhus C", "8450": "Hammel", "1060": "København K", "4100": "Ringsted"}
SENTENCES = (
    "Vi henviser hermed barnet til vurdering hos PPR.",
    "Forældrene er informeret og ønsker henvisningen.",
    "Barnet har gennem længere tid haft svært ved at koncentrere sig i skolen.",
    "Der er talevanskeligheder, og sproget er forsinket i forhold til alderen.",
    "Skolen har beskrevet uro i klassen og konflikter i frikvartererne.",
    "Tidligere undersøgelser er vedlagt, hvor det var muligt.",
    "Kontakt gerne undertegnede, hvis der er spørgsmål.",
)


@dataclass(frozen=True)
class Message:
    kind: str
    channel: str
    sender: str
    raw: bytes


def persons() -> list[tuple[str, str, str, str]]:
    """(cpr, road, house number, postal code) of the demo registry."""
    rows = REGISTRY.read_text(encoding="utf-8").splitlines()[1:]
    return [(cpr, road, number, postal) for cpr, _, road, number, postal in (r.split(";") for r in rows if r)]


def letter_text(rng: random.Random) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 12)))


def mail(rng: random.Random, n: int, kind: str, people: Sequence[tuple[str, str, str, str]]) -> Message:
    clinic = rng.randrange(400)
    sender = f"laege{clinic}@klinik{clinic}.example"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Lægehuset {clinic} <{sender}>"
    msg["To"] = "postkasse@localhost"
    msg["Subject"] = "Henvisning til PPR"
    msg["Message-ID"] = f"<{n}.{uuid.UUID(int=rng.getrandbits(128))}@klinik{clinic}.example>"
    msg["Date"] = "Mon, 23 Nov 2026 09:00:00 +0100"
    if kind == "no_cpr":
        body = f"Vedr. en dreng i {rng.randint(0, 9)}. klasse, ingen CPR.\n\n{letter_text(rng)}\n"
    else:
        cpr, road, number, postal = rng.choice(people)
        body = (
            f"CPR: {cpr[:6]}-{cpr[6:]}\nAdresse: {road} {number}, {postal} {TOWNS.get(postal, '')}\n\n"
            f"{letter_text(rng)}\n\nMed venlig hilsen\nLægehuset {clinic}\n"
        )
    msg.set_content(body)
    if kind == "attachment":
        pdf = b"%PDF-1.4\n" + rng.randbytes(rng.randint(20_000, 120_000)) + b"\n%%EOF\n"
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="udtalelse.pdf")
    return Message(kind, "smtp", sender, msg.as_bytes())


def medcom(n: int) -> Message:
    (path,) = MEDCOM.glob("oioxml/REF01_1.xml")
    raw = (
        path.read_bytes()
        .replace(b"minuspositivkvitt", b"pluspositivkvitt")
        .replace(b"Kuv1234", f"K{n:07d}".encode())
        .replace(b"Brv5678", f"B{n:07d}".encode())
    )
    return Message("medcom", "http", "api:epj", raw)


def messages(count: int, seed: int) -> list[Message]:
    rng = random.Random(seed)
    people = persons()
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    return [
        medcom(n) if kind == "medcom" else mail(rng, n, kind, people)
        for n, kind in enumerate(rng.choices(kinds, weights, k=count))
    ]


# --- one repetition ------------------------------------------------------------------------------


@dataclass
class Run:
    """One repetition's figures; CPU and wall times in seconds."""

    cpu: list[float] = field(default_factory=list)  # per message, all its steps
    parse_cpu: list[float] = field(default_factory=list)  # per message, its first step alone
    wall_s: float = 0.0  # all messages' steps, saving excluded
    steps: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    outcome: dict[str, int] = field(default_factory=dict)
    log_lines: int = 0
    log_warnings: int = 0
    load: tuple[float, float] = (0.0, 0.0)  # (steal share, CPUs other processes kept busy)
    bare: float = 0.0  # CPU seconds per message of the stdlib parse, right after the steps
    module: str = ""


def prepare(folder: Path) -> Store:
    store = Store(f"sqlite:///{folder / 'pipeline.db'}")
    upgrade(store)
    import_file(store, "postnord", POSTNORD, T0)
    import_file(store, "roads", roads_file(folder), T0)
    import_file(store, "registry", REGISTRY, T0)
    return store


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Logs as `serve` writes them (JSON, INFO, CPR masked), into `path` instead of stderr."""
    logs.setup("INFO", json=True)
    handler = logging.getLogger().handlers[0]
    with path.open("w", encoding="utf-8") as out:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)
        try:
            yield
        finally:
            handler.setStream(sys.stderr)


def drain(pipeline: Any, first: tuple[int, str], steps: Counter[str]) -> tuple[float, float]:
    """Run the message's steps as the broker hands them on, depth first; `send` rows stay pending.
    Returns the CPU seconds of all its steps and of the first step alone."""
    todo = [first]

    def dispatch(follow: Sequence[Any]) -> None:
        todo.extend((n.outbox_id, n.kind) for n in follow if n.kind != SKIPPED_KIND)

    hinted = "kind" in inspect.signature(pipeline.run).parameters  # the actors name the step (issue 18)
    start = time.process_time()
    first_done = start
    while todo:
        outbox_id, kind = todo.pop()
        steps[kind] += 1
        if hinted:
            pipeline.run(outbox_id, dispatch, kind)
        else:
            pipeline.run(outbox_id, dispatch)
        if (outbox_id, kind) == first:
            first_done = time.process_time()
    return time.process_time() - start, first_done - start


def outcome(store: Store) -> dict[str, int]:
    """What the run left in the store, read with plain SQL so it does not depend on the code's layout."""
    queries = {
        "referrals in a queue": "SELECT count(*) FROM referrals WHERE state = 'new'",
        "referrals in triage": "SELECT count(*) FROM referrals WHERE state = 'triage'",
        "referrals": "SELECT count(*) FROM referrals",
        "send rows pending": "SELECT count(*) FROM outbox WHERE kind = 'send' AND state = 'pending'",
        "other rows pending": "SELECT count(*) FROM outbox WHERE kind != 'send' AND state = 'pending'",
        "rows failed": "SELECT count(*) FROM outbox WHERE state = 'failed'",
        "MedCom answers": "SELECT count(*) FROM medcom_answers",
    }
    with store.read() as conn:
        return {name: int(conn.execute(text(sql)).scalar_one()) for name, sql in queries.items()}


def run_once(batch: Sequence[Message], folder: Path) -> Run:
    log_file = folder / "pipeline.log"
    with log_to(log_file):
        store = prepare(folder)
        clock = FixedClock(T0)
        settings = Settings(medcom={"schema_dir": XSD, "ean": OUR_EAN})
        pipeline, first_kind, module = pipeline_under_test(settings, store, clock)
        res = Run(module=module)
        logged_before = log_file.stat().st_size  # the migration's and the imports' lines are not counted
        ticks0, own0, wall0 = cpu_ticks(), time.process_time(), time.perf_counter()
        for msg in batch:
            item = Received(
                msg.channel, msg.sender, ("postkasse@localhost",), "127.0.0.1:1", True, clock.now(), msg.raw
            )
            with store.write() as conn:
                (saved,) = stored_messages.save(conn, [item], first_kind, clock.now() + timedelta(minutes=5))
            w0 = time.perf_counter()
            cpu, parse_cpu = drain(pipeline, (saved.outbox_id, saved.kind), res.steps)
            res.wall_s += time.perf_counter() - w0
            res.cpu.append(cpu)
            res.parse_cpu.append(parse_cpu)
            res.by_kind.setdefault(msg.kind, []).append(cpu)
            clock.advance(TICK)
        res.load = noise(ticks0, cpu_ticks(), time.perf_counter() - wall0, time.process_time() - own0)
    with log_file.open("rb") as f:
        f.seek(logged_before)
        lines = f.read().decode("utf-8").splitlines()
    res.log_lines = len(lines)
    res.log_warnings = sum(json.loads(line).get("level") in ("warning", "error") for line in lines)
    res.outcome = outcome(store)
    store.dispose()
    res.bare = bare_parse(batch)
    return res


def bare_parse(batch: Sequence[Message], passes: int = 3) -> float:
    """CPU seconds per message of `email.message_from_bytes` (compat32) and a walk over its parts, the
    fastest of `passes`: the stdlib alone, to compare machines."""
    best = float("inf")
    for _ in range(passes):
        c0 = time.process_time()
        for msg in batch:
            for part in email.message_from_bytes(msg.raw).walk():
                part.get_content_type()
        best = min(best, time.process_time() - c0)
    return best / len(batch)


# --- reporting -----------------------------------------------------------------------------------

STAGES = {
    "postkasse.steps": "before",
    "postkasse.flows": "after",
}  # issue 12's refactor: each keeps its section


def section(module: str) -> tuple[str, str, str]:
    """(begin marker, end marker, heading) of the section for the code that built the pipeline, so the run
    after the refactor is recorded beside the one before it, not over it."""
    stage = STAGES[module]
    return (
        f"<!-- bench/pipeline.py {stage}: begin (replaced by --record) -->",
        f"<!-- bench/pipeline.py {stage}: end -->",
        f"## Pipeline CPU per message (issue 12, {stage} the flows/ refactor)",
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def p90(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def report_lines(runs: Sequence[Run], args: argparse.Namespace, markdown: bool) -> list[str]:
    b = "**" if markdown else ""
    n = args.messages
    first = runs[0]
    mix = Counter(k for k, v in first.by_kind.items() for _ in v)
    med = statistics.median(statistics.median(r.cpu) for r in runs)
    tail = statistics.median(p90(r.cpu) for r in runs)
    parse_med = statistics.median(statistics.median(r.parse_cpu) for r in runs)
    bare = statistics.median(r.bare for r in runs)
    ratio = statistics.median(statistics.median(r.cpu) / r.bare for r in runs)
    lines = [
        f"- Machine: {machine_line()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Code: {code_version()}; pipeline built by `{first.module}.build`",
        f"- Messages: {n:,} (seed {args.seed}): "
        + ", ".join(f"{mix[k]:,} {k}" for k, _ in MIX)
        + "; mail referrals from 400 clinics with the demo registry's CPRs and addresses, attachments "
        "a 20–120 KB PDF, MedCom XREF01 (REF01_1.xml with its own identifiers, positive receipt wanted) "
        "over http",
        "- Each message stored with `store.messages.save` (not timed), then its steps run in this process as "
        "the broker hands them on, `send` rows left pending; `time.process_time` around one message's steps. "
        "SQLite in a temp dir, FixedClock, logs as `serve` writes them (JSON, INFO) to a file. "
        f"{len(runs)} repetitions, each a fresh store and pipeline; the figures are the median over them.",
        "",
        "| repetition | CPU ms/msg median | p90 | mean | parse step median | bare parse | median ÷ bare "
        "| total CPU | total wall | others' load | steal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {ms(statistics.median(r.cpu))} | {ms(p90(r.cpu))} | {ms(statistics.mean(r.cpu))} | "
            f"{ms(statistics.median(r.parse_cpu))} | {ms(r.bare)} | "
            f"{statistics.median(r.cpu) / r.bare:.0f} | {sum(r.cpu):.2f} s | {r.wall_s:.2f} s | "
            f"{r.load[1]:.1f} CPUs | {r.load[0]:.0%} |"
        )
    by_kind = {k: statistics.median(statistics.median(r.by_kind[k]) for r in runs) for k in first.by_kind}
    lines += [
        "",
        f"- CPU per message through parse -> route -> receipt: median {b}{ms(med)} ms{b}, "
        f"p90 {b}{ms(tail)} ms{b}.",
        "- By kind of message (median CPU ms): "
        + ", ".join(f"{k} {ms(by_kind[k])}" for k, _ in MIX if k in by_kind),
        f"- Reference, same run: the `parse` step alone {ms(parse_med)} ms per message (median); "
        f"bare `email.message_from_bytes` + walk of the same {n:,} messages (stdlib only, fastest of 3 "
        f"passes, right after each repetition) {b}{ms(bare)} ms{b} per message. Compare the bare parse "
        f"first when comparing machines or runs; the pipeline's median was {ratio:.0f}× it.",
        "- Steps run: " + ", ".join(f"{k} {v:,}" for k, v in first.steps.most_common()),
        "- Left in the store: " + ", ".join(f"{k} {v:,}" for k, v in first.outcome.items()),
        f"- Log lines written: {first.log_lines:,} ({first.log_warnings:,} warnings or errors).",
        "- The total CPU includes the first message's load of the reference data; total wall is the steps' "
        "alone, saving excluded. CPU time is not immune to other processes on a shared machine (caches, "
        "SMT siblings, steal), and the bare parse, the fastest of 3 short passes, hides most of that: "
        "compare before and after from runs at similar load (the others' load column), best back to back.",
    ]
    return lines


def check(runs: Sequence[Run], n: int) -> None:
    """A run that lost or failed work gives no figure."""
    for r in runs:
        if r.outcome["referrals"] != n or r.outcome["rows failed"] or r.outcome["other rows pending"]:
            raise BenchError(f"the pipeline did not finish every message cleanly: {r.outcome}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2_000, help="messages per repetition")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, each on a fresh store")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--keep", action="store_true", help="keep the temp directories (store and log)")
    parser.add_argument("--record", action="store_true", help="write the result into bench/RESULTS.md")
    args = parser.parse_args(argv)
    batch = messages(args.messages, args.seed)
    runs = []
    for i in range(args.repeat):
        folder = Path(tempfile.mkdtemp(prefix="pk-bench-pipeline-"))
        try:
            runs.append(run_once(batch, folder))
        finally:
            if args.keep:
                print(f"kept {folder}", file=sys.stderr)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        print(f"repetition {i + 1}: median {ms(statistics.median(runs[-1].cpu))} ms/msg", file=sys.stderr)
    try:
        check(runs, args.messages)
    except BenchError as exc:
        print(f"pipeline benchmark failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(runs, args, markdown=False)))
    if args.record:
        lines = [command("pipeline.py", argv), *report_lines(runs, args, markdown=True)]
        record_section(*section(runs[0].module), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
