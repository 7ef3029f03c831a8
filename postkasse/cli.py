"""The `postkasse` command: serve, worker, migrate, check-config, refdata, route, triage, deadlines, stats,
backup, restore, verify, token, user, queue."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from postkasse import __version__, config, logs
from postkasse.config import ConfigError, Settings

Command = Callable[[Settings, argparse.Namespace], int]


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse import metrics_dir

    starts_children = not settings.broker.url or settings.serve.processes > 1
    with metrics_dir.shared(starts_children and args.acceptor is None):
        from postkasse import embedded
        from postkasse.daemon import Daemon
        from postkasse.memory import tune_malloc

        if args.acceptor is not None:
            embedded.become_child(args.acceptor)
        tune_malloc()
        asyncio.run(Daemon(settings, config_path=args.config, serve_pid=args.acceptor).run())
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse import embedded, flows
    from postkasse.clock import SystemClock
    from postkasse.memory import tune_malloc
    from postkasse.retention.purge import Policy
    from postkasse.store import Store
    from postkasse.tasks import Actors
    from postkasse.workers import make_broker, start_worker

    if args.embedded is not None:
        embedded.become_child(args.embedded, embedded.PIPELINE_NICENESS)
    elif not settings.broker.url:
        print(
            "postkasse worker: broker.url is empty, so `serve` runs the workers itself; "
            "set broker.url (POSTKASSE_BROKER__URL=redis://...) to run them apart",
            file=sys.stderr,
        )
        return 2
    tune_malloc()
    store = Store(settings.database.url, pool_size=settings.broker.worker_threads + 4)
    broker = make_broker(settings)
    clock = SystemClock()
    pipeline = flows.build(settings, store, clock)
    actors = Actors(broker, pipeline, flows.periodic(pipeline, Policy.of(settings.retention)))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = start_worker(broker, settings.broker.worker_threads)
    background = (
        [] if args.embedded is None else embedded.duties(settings, store, clock, actors, args.embedded)
    )
    logs.get("postkasse.worker").info(
        "worker running", threads=settings.broker.worker_threads, embedded=args.embedded is not None
    )
    stop.wait()
    for duty in background:
        duty.stop()
    worker.stop()
    broker.close()
    store.dispose()
    return 0


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from postkasse.store import Store
    from postkasse.store.migrate import current, upgrade

    store = Store(settings.database.url)
    upgrade(store)
    print(f"database at revision {current(store)}")
    return 0


def cmd_check_config(settings: Settings, _: argparse.Namespace) -> int:
    from postkasse.routing.municipalities import Municipalities

    try:
        municipalities = Municipalities.load(settings.routing.municipalities_file)
    except ValueError as exc:
        print(f"postkasse check-config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.masked(), indent=2, ensure_ascii=False))
    units = sum(len(m.units) for m in municipalities.by_code.values())
    print(f"municipalities: {len(municipalities)}, units to forward to: {units}", file=sys.stderr)
    return 0


def cmd_refdata_import(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from postkasse.clock import SystemClock
    from postkasse.routing.refdata import RefdataError, import_file
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    store = Store(settings.database.url)
    upgrade(store)
    try:
        result = import_file(
            store, args.kind, Path(args.file), SystemClock().now(), _progress if sys.stderr.isatty() else None
        )
    except (RefdataError, OSError) as exc:
        print(
            f"postkasse refdata import {args.kind}: refused, the data in force is unchanged: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"imported {result.rows} {result.kind} rows at {result.imported_at.isoformat()}")
    return 0


def _progress(done: int, total: int) -> None:
    """A long import on a terminal shows how far it has come, on one line."""
    print(
        f"\r  {done:,} af {total:,} rækker skrevet ({100 * done // max(total, 1)} %)", end="", file=sys.stderr
    )
    if done >= total:
        print(file=sys.stderr)


def cmd_route(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from postkasse import flows
    from postkasse.clock import COPENHAGEN, SystemClock
    from postkasse.flows.route_medcom import document_of, looks_like_medcom
    from postkasse.mailbox import content
    from postkasse.medcom.document import MedcomError
    from postkasse.routing.explain import render, render_document
    from postkasse.routing.medcom import facts as medcom_facts
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    raw = Path(args.file).read_bytes()
    at = SystemClock().now()
    if args.on:
        at = datetime.fromisoformat(args.on).replace(hour=12, tzinfo=COPENHAGEN)
    store = Store(settings.database.url)
    upgrade(store)
    made = flows.parts(settings)
    channel = "http" if raw.lstrip()[:1] in (b"<", b"{") and looks_like_medcom(raw) else "smtp"
    document_bytes = document_of(channel, raw)
    with store.read() as conn:
        if document_bytes is None:
            facts = made.router.mail.facts(content.read(raw))
            decision = made.router.decide_facts(conn, facts, at)
            print(render(decision, facts, as_json=args.json))
            return 0
        try:
            document = made.medcom.read(document_bytes)
        except MedcomError as exc:
            print(f"postkasse route: MedCom would refuse it ({exc.refuse_code}): {exc.text}", file=sys.stderr)
            return 1
        if document.is_acknowledgement:
            kind = document.letters[0].kind
            print(
                json.dumps(
                    {
                        "kind": kind,
                        "format": document.format,
                        "envelope": document.envelope_id,
                        "acknowledgement": True,
                        "decision": None,
                    }
                )
                if args.json
                else f"{kind} er en kvittering: den sorteres ikke og besvares ikke."
            )
            return 0
        decided = []
        for letter in document.letters:
            found = medcom_facts(letter)
            decided.append((letter, made.router.decide_facts(conn, found, at), found))
    print(render_document(document, decided, as_json=args.json))
    return 0


def cmd_triage_list(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.committee.triage import waiting
    from postkasse.store import Store

    store = Store(settings.database.url)
    with store.read() as conn:
        items = waiting(conn)
    if args.json:
        print(json.dumps([item.as_json() for item in items], ensure_ascii=False))
        return 0
    for item in items:
        print(f"{item.referral_id}\t{item.received_at:%Y-%m-%d %H:%M}\t{item.reason}\t{item.sentence}")
    print(f"{len(items)} in triage", file=sys.stderr)
    return 0


def cmd_triage_assign(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.clock import SystemClock
    from postkasse.committee.referrals import TransitionError
    from postkasse.committee.triage import assign
    from postkasse.deadlines.rules import rulebook
    from postkasse.routing.municipalities import Municipalities
    from postkasse.store import Store, outbox

    if Municipalities.load(settings.routing.municipalities_file).get(args.municipality) is None:
        print(f"postkasse triage assign: {args.municipality} is not a municipality code", file=sys.stderr)
        return 2
    store = Store(settings.database.url)
    now = SystemClock().now()
    try:
        with store.write() as conn:
            follow = assign(
                conn,
                args.referral,
                args.municipality,
                args.note,
                now,
                f"ops:{args.operator}",
                rulebook(settings.deadlines),
            )
            # Due at once: the running daemon's redriver hands it to the workers within its interval.
            outbox.add_many(conn, [(kind, target, now) for kind, target in follow], now)
    except (TransitionError, LookupError, ValueError) as exc:
        print(f"postkasse triage assign: {exc}", file=sys.stderr)
        return 1
    print(f"referral {args.referral} is now in {args.municipality}'s queue")
    return 0


def cmd_deadlines_report(settings: Settings, args: argparse.Namespace) -> int:

    from postkasse.deadlines.assess import assess
    from postkasse.deadlines.report import render
    from postkasse.deadlines.rules import rulebook
    from postkasse.routing.municipalities import Municipalities
    from postkasse.store import Store

    at = _moment(args.at, "deadlines report")
    if at is None:
        return 2
    municipalities = Municipalities.load(settings.routing.municipalities_file)
    participating = [m.code for m in municipalities.by_code.values() if m.participating]
    store = Store(settings.database.url)
    with store.read() as conn:
        found = assess(conn, at, rulebook(settings.deadlines), participating)
    print(render(found, municipalities, as_json=args.json))
    return 0


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import date

    from postkasse.committee.stats import statistics
    from postkasse.routing.municipalities import Municipalities
    from postkasse.store import Store

    try:
        start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    except ValueError:
        print(
            f"postkasse stats: --from {args.start!r} and --to {args.end!r} must be days as YYYY-MM-DD",
            file=sys.stderr,
        )
        return 2
    if start > end:
        print(f"postkasse stats: --from {start} comes after --to {end}", file=sys.stderr)
        return 2
    municipalities = Municipalities.load(settings.routing.municipalities_file)
    store = Store(settings.database.url)
    try:
        with store.read() as conn:
            found = statistics(conn, start, end, municipalities)
    except ValueError as exc:
        print(f"postkasse stats: {exc}", file=sys.stderr)
        return 2
    finally:
        store.dispose()
    if args.format == "csv":
        sys.stdout.write(found.as_csv())
    else:
        print(json.dumps(found.as_json(), ensure_ascii=False, indent=2))
    return 0


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.clock import SystemClock
    from postkasse.flows.purge import run_purge
    from postkasse.retention.purge import KINDS, Policy
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    at = _moment(args.at, "purge") if args.at else SystemClock().now()
    if at is None:
        return 2
    store = Store(settings.database.url)
    upgrade(store)
    counts = run_purge(store, at, Policy.of(settings.retention), dry_run=args.dry_run)
    if counts is None:
        print("postkasse purge: another purge is running; nothing done", file=sys.stderr)
        return 1
    verb = "would remove" if args.dry_run else "removed"
    print(f"purge as of {at.isoformat()}: {verb}")
    for kind in KINDS:
        print(f"  {kind:<22} {counts.get(kind, 0)}")
    return 0


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from postkasse.store import Store
    from postkasse.store.backup import BackupError, backup

    store = Store(settings.database.url)
    try:
        written = backup(store, Path(args.out))
    except (BackupError, OSError) as exc:
        print(f"postkasse backup: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"backup written to {written}")
    return 0


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from postkasse.store import Store
    from postkasse.store.backup import BackupError, restore

    store = Store(settings.database.url)
    try:
        restore(Path(args.file), store)
    except (BackupError, OSError) as exc:
        print(f"postkasse restore: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"restored {args.file}; run `postkasse verify` before starting `serve`")
    return 0


def cmd_verify(settings: Settings, _: argparse.Namespace) -> int:
    from postkasse.store import Store
    from postkasse.store.backup import check

    store = Store(settings.database.url)
    try:
        result = check(store)
    finally:
        store.dispose()
    for problem in result.problems:
        print(f"problem: {problem}")
    counts = ", ".join(f"{what}: {n}" for what, n in result.checked.items())
    if result.problems:
        print(f"{len(result.problems)} problems ({counts} checked)", file=sys.stderr)
        return 1
    print(f"ok ({counts} checked)")
    return 0


def _moment(text: str, command: str) -> Any:
    """An `--at` time: ISO 8601, Danish time when it names no offset; None (said why) when unreadable."""
    from datetime import datetime

    from postkasse.clock import COPENHAGEN

    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        print(f"postkasse {command}: --at {text!r} is not an ISO 8601 time", file=sys.stderr)
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=COPENHAGEN)


def cmd_subject(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from postkasse.clock import SystemClock
    from postkasse.retention import subjects
    from postkasse.routing.cpr import Cpr
    from postkasse.routing.municipalities import Municipalities
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    try:
        cpr = Cpr.parse(args.cpr, SystemClock().now().date()).number
    except ValueError:
        print(f"postkasse subject {args.action}: --cpr is not a valid CPR number", file=sys.stderr)
        return 2
    store = Store(settings.database.url)
    upgrade(store)
    now = SystemClock().now()
    if args.action == "export":
        if not args.out:
            print("postkasse subject export: --out DIR is needed", file=sys.stderr)
            return 2
        municipalities = Municipalities.load(settings.routing.municipalities_file)
        with store.write() as conn:
            written = subjects.export(
                conn, cpr, Path(args.out), municipalities, args.operator, args.reason, now
            )
        print(f"exported {len(written)} referral(s) to {args.out}: {' '.join(written)}")
        return 0
    with store.read() as conn:
        found = subjects.find(conn, cpr)
    if not found.referral_ids:
        print("no referral about that person is kept")
        return 0
    if not args.yes:
        answer = input(f"erase the content of {len(found.referral_ids)} referral(s)? type yes: ")
        if answer.strip().lower() != "yes":
            print("nothing erased")
            return 1
    with store.write() as conn:
        erased = subjects.erase(conn, cpr, args.operator, args.reason, now)
    store.truncate_log()
    print(f"erased the content of {len(erased)} referral(s): {' '.join(erased)}")
    return 0


def cmd_status(settings: Settings, _: argparse.Namespace) -> int:
    from postkasse import flows
    from postkasse.clock import SystemClock
    from postkasse.flows.status import render
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    store = Store(settings.database.url)
    upgrade(store)
    parts = flows.parts(settings)
    print(render(store, SystemClock().now(), parts.rules, parts.municipalities))
    return 0


def cmd_token_new(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.clock import SystemClock
    from postkasse.committee import tokens
    from postkasse.routing.municipalities import Municipalities
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    scope = "ops" if args.ops else "sender" if args.sender else "committee"
    if (
        scope == "committee"
        and Municipalities.load(settings.routing.municipalities_file).get(args.municipality) is None
    ):
        print(f"postkasse token new: {args.municipality} is not a municipality code", file=sys.stderr)
        return 2
    store = Store(settings.database.url)
    upgrade(store)
    try:
        with store.write() as conn:
            token = tokens.create(
                conn, args.name, scope, args.municipality, SystemClock().now(), tuple(args.right or ())
            )
    except tokens.TokenError as exc:
        print(f"postkasse token new: {exc}", file=sys.stderr)
        return 1
    where = f" for municipality {args.municipality}" if args.municipality else ""
    print(f"{scope} token {args.name!r}{where}; shown this once, store it now:")
    print(token)
    return 0


def cmd_token_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.clock import SystemClock
    from postkasse.committee import tokens
    from postkasse.store import Store

    store = Store(settings.database.url)
    try:
        with store.write() as conn:
            tokens.revoke(conn, args.name, SystemClock().now())
    except tokens.TokenError as exc:
        print(f"postkasse token revoke: {exc}", file=sys.stderr)
        return 1
    print(f"token {args.name!r} revoked")
    return 0


def cmd_user_add(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.clock import SystemClock
    from postkasse.committee import users
    from postkasse.routing.municipalities import Municipalities
    from postkasse.store import Store
    from postkasse.store.migrate import upgrade

    role = "ops" if args.ops else "committee"
    if (
        role == "committee"
        and Municipalities.load(settings.routing.municipalities_file).get(args.municipality) is None
    ):
        print(f"postkasse user add: {args.municipality} is not a municipality code", file=sys.stderr)
        return 2
    store = Store(settings.database.url)
    upgrade(store)
    try:
        with store.write() as conn:
            password = users.add(conn, args.name, role, args.municipality, SystemClock().now())
    except users.UserError as exc:
        print(f"postkasse user add: {exc}", file=sys.stderr)
        return 1
    where = f" for municipality {args.municipality}" if args.municipality else " (operations)"
    print(f"user {args.name!r}{where}; the password is shown this once:")
    print(password)
    return 0


def cmd_user_password(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.committee import users
    from postkasse.store import Store

    try:
        with Store(settings.database.url).write() as conn:
            password = users.set_password(conn, args.name)
    except users.UserError as exc:
        print(f"postkasse user password: {exc}", file=sys.stderr)
        return 1
    print(f"a new password for {args.name!r}; the old one no longer works. Shown this once:")
    print(password)
    return 0


def cmd_user_disable(settings: Settings, args: argparse.Namespace) -> int:
    from postkasse.clock import SystemClock
    from postkasse.committee import users
    from postkasse.store import Store

    try:
        with Store(settings.database.url).write() as conn:
            users.disable(conn, args.name, SystemClock().now())
    except users.UserError as exc:
        print(f"postkasse user disable: {exc}", file=sys.stderr)
        return 1
    print(f"user {args.name!r} disabled; their sessions have ended")
    return 0


def cmd_user_list(settings: Settings, _: argparse.Namespace) -> int:
    from postkasse.committee import users
    from postkasse.store import Store

    with Store(settings.database.url).read() as conn:
        for name, role, municipality, active in users.listing(conn):
            print(f"{name:<24} {role:<10} {municipality or '-':<5} {'active' if active else 'disabled'}")
    return 0


def cmd_queue_pull(settings: Settings, args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from postkasse.committee.client import ApiClient, ApiClientError, pull_queue

    token = args.token or os.environ.get("POSTKASSE_TOKEN", "")
    if not token:
        print("postkasse queue pull: give --token or set POSTKASSE_TOKEN", file=sys.stderr)
        return 2
    url = args.url or f"http://{settings.http.host}:{settings.http.port}"
    try:
        result = pull_queue(ApiClient(url, token), args.municipality, Path(args.out))
    except ApiClientError as exc:
        print(f"postkasse queue pull: {exc}", file=sys.stderr)
        return 1
    for reference in result.pulled:
        print(reference)
    for failure in result.failed:
        print(f"postkasse queue pull: not fetched, left in the queue: {failure}", file=sys.stderr)
    print(f"{len(result.pulled)} referrals pulled into {args.out}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} referrals could not be fetched", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="postkasse", description=__doc__)
    top.add_argument(
        "--config", metavar="PATH", help=f"TOML configuration file (default: ${config.CONFIG_ENV})"
    )
    top.add_argument("--version", action="version", version=f"postkasse {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, Command, str]] = [
        ("serve", cmd_serve, "run the mailbox: SMTP, HTTP and (with no broker) the workers"),
        ("worker", cmd_worker, "run the workers against the Redis broker"),
        ("migrate", cmd_migrate, "bring the database schema up to date"),
        ("check-config", cmd_check_config, "print the effective configuration, secrets masked"),
    ]
    for name, func, text in commands:
        sub.add_parser(name, help=text, description=text).set_defaults(func=func)
    # How `serve` starts its own pipeline process (with no broker) and its further acceptors; not for people.
    sub.choices["worker"].add_argument("--embedded", type=int, metavar="SERVE_PID", help=argparse.SUPPRESS)
    sub.choices["serve"].add_argument("--acceptor", type=int, metavar="SERVE_PID", help=argparse.SUPPRESS)

    refdata = sub.add_parser("refdata", help="reference data").add_subparsers(dest="action", required=True)
    importer = refdata.add_parser("import", help="replace one kind of reference data with a file")
    importer.add_argument("kind", choices=["postnord", "roads", "registry"])
    importer.add_argument("file")
    importer.set_defaults(func=cmd_refdata_import)

    route = sub.add_parser("route", help="show where a message would go, and why, changing nothing")
    route.add_argument(
        "--explain",
        dest="file",
        metavar="FILE",
        required=True,
        help="a raw RFC 5322 message, or a MedCom document (OIOXML, FHIR XML or JSON)",
    )
    route.add_argument("--json", action="store_true", help="one JSON object for scripts")
    route.add_argument("--on", metavar="YYYY-MM-DD", help="decide as on this day (ages); default today")
    route.set_defaults(func=cmd_route)

    triage = sub.add_parser("triage", help="messages that could not be routed").add_subparsers(
        dest="action", required=True
    )
    listing = triage.add_parser("list", help="what waits in triage, oldest first, with the reason")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_triage_list)
    assigning = triage.add_parser("assign", help="send a triaged referral to a municipality's queue")
    assigning.add_argument("referral", type=int)
    assigning.add_argument("--municipality", required=True, metavar="CODE")
    assigning.add_argument("--note", required=True, help="why this municipality")
    assigning.add_argument(
        "--operator", required=True, help="who decides (recorded in the referral's events)"
    )
    assigning.set_defaults(func=cmd_triage_assign)

    deadlines = sub.add_parser("deadlines", help="daily emptying and handling deadlines").add_subparsers(
        dest="action", required=True
    )
    report = deadlines.add_parser(
        "report", help="each queue's emptying and every referral in warning or breach, as of a moment"
    )
    report.add_argument(
        "--at",
        required=True,
        metavar="ISO-8601-TIME",
        help="the moment, e.g. 2026-11-27T16:00+01:00 (without an offset: Danish time); nothing is changed",
    )
    report.add_argument("--json", action="store_true", help="one JSON object for scripts")
    report.set_defaults(func=cmd_deadlines_report)

    status = sub.add_parser(
        "status", help="every queue, triage, pipeline work, failed mail and the last checks"
    )
    status.set_defaults(func=cmd_status)

    purge = sub.add_parser(
        "purge", help="remove content whose retention period ([retention]) has run out; counts by kind"
    )
    purge.add_argument("--at", help="as of this ISO 8601 time (default: now)")
    purge.add_argument("--dry-run", action="store_true", help="count what would go; remove nothing")
    purge.set_defaults(func=cmd_purge)

    subject = sub.add_parser("subject", help="one person's data: export it (art. 15) or erase it (art. 17)")
    subject.add_argument("action", choices=["export", "erase"])
    subject.add_argument("--cpr", required=True)
    subject.add_argument("--reason", required=True, help="why; kept in the audit")
    subject.add_argument("--operator", required=True, help="who; kept in the audit")
    subject.add_argument("--out", help="export: the directory to write into")
    subject.add_argument("--yes", action="store_true", help="erase without asking")
    subject.set_defaults(func=cmd_subject)

    backing_up = sub.add_parser(
        "backup", help="a consistent copy of the store, safe while serve runs (SQLite file or pg_dump)"
    )
    backing_up.add_argument(
        "--out", required=True, metavar="PATH", help="the file, or a directory for a timestamped file"
    )
    backing_up.set_defaults(func=cmd_backup)
    restoring = sub.add_parser("restore", help="copy a backup into the configured store, which must be empty")
    restoring.add_argument("file")
    restoring.set_defaults(func=cmd_restore)
    sub.add_parser(
        "verify", help="check the store: schema at head, message hashes, referrals' and outbox rows' targets"
    ).set_defaults(func=cmd_verify)

    stats = sub.add_parser(
        "stats", help="the pilot's numbers per municipality and sender kind, for Danish days FROM to TO"
    )
    stats.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="the first day")
    stats.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="the last, inclusive")
    stats.add_argument("--format", choices=["json", "csv"], default="json")
    stats.set_defaults(func=cmd_stats)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    new = token.add_parser("new", help="create a token; it is printed once, alone on the last line")
    which = new.add_mutually_exclusive_group(required=True)
    which.add_argument("--municipality", metavar="CODE", help="a committee token for this municipality")
    which.add_argument("--ops", action="store_true", help="an operations token (triage, counts)")
    which.add_argument("--sender", action="store_true", help="a token for a system that submits messages")
    new.add_argument("--name", required=True)
    new.add_argument(
        "--right",
        action="append",
        choices=["subject_access"],
        help="an ops token's extra right: subject_access, to export a person's data (GET /api/v1/subjects)",
    )
    new.set_defaults(func=cmd_token_new)
    revoke = token.add_parser("revoke", help="end a token")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)

    user = sub.add_parser("user", help="web inbox users").add_subparsers(dest="action", required=True)
    adding = user.add_parser("add", help="a local user; the password is printed once, alone on the last line")
    adding.add_argument("name")
    role = adding.add_mutually_exclusive_group(required=True)
    role.add_argument("--municipality", metavar="CODE", help="a committee member of this municipality")
    role.add_argument("--ops", action="store_true", help="operations: triage, failed mail, counts")
    adding.set_defaults(func=cmd_user_add)
    password = user.add_parser("password", help="give a user a new generated password, printed once")
    password.add_argument("name")
    password.set_defaults(func=cmd_user_password)
    disabling = user.add_parser("disable", help="stop a user logging in and end their sessions")
    disabling.add_argument("name")
    disabling.set_defaults(func=cmd_user_disable)
    user.add_parser("list", help="every user and whether they are active").set_defaults(func=cmd_user_list)

    queue = sub.add_parser("queue", help="a committee's queue").add_subparsers(dest="action", required=True)
    pull = queue.add_parser(
        "pull", help="fetch and pull every new referral over the API, as a case system does"
    )
    pull.add_argument("--municipality", required=True, metavar="CODE")
    pull.add_argument("--out", required=True, metavar="DIR", help="writes REFERENCE.json and REFERENCE.eml")
    pull.add_argument("--token", help="the committee token (default: $POSTKASSE_TOKEN)")
    pull.add_argument("--url", help="the API's base URL (default: from http.host and http.port)")
    pull.set_defaults(func=cmd_queue_pull)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = config.load(args.config)
    except ConfigError as exc:
        print(f"postkasse: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log.level, settings.log.renders_json(sys.stderr.isatty()))
    result: int = args.func(settings, args)
    return result
