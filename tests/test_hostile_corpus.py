"""The hostile corpus against a real `postkasse serve`, on both stores: SMTP clients that misbehave, mail
that is broken in every way MIME allows, and MedCom documents built to hurt a parser.

What a user relies on, whatever arrives: every case gets an answer that names its reason (an SMTP reply with
its text, or an HTTP status with a JSON `code`); every message postkasse acknowledged ends in a committee's
queue or in triage (or, for a MedCom document, with its answer); no step of the pipeline fails for good; every
read of what was stored answers; and the daemon's memory stays bounded. The figures are printed."""

from __future__ import annotations

import json
import re
import smtplib
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from postkasse.store import Store
from postkasse.store.schema import medcom_answers, messages, outbox, referrals
from tests import hostile_documents, hostile_mime, hostile_smtp
from tests.helpers import RCPT
from tests.servers import Daemon, wait_until
from tests.sink import Sink
from tests.test_medcom_e2e import (
    XSD,
    call,
    relay,  # noqa: F401  (a fixture)
)
from tests.test_medcom_hostile_e2e import peak_rss
from tests.test_routing_e2e import prepare
from tests.test_thread_e2e import new_token

pytestmark = pytest.mark.slow

MIME_CASES = 700
PEAK_LIMIT_MB = 300
REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


@dataclass
class Tally:
    """What the corpus did: cases by family, answers by code, and every case that broke a promise."""

    cases: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    broken: list[str] = field(default_factory=list)

    def answered(self, family: str, code: str) -> None:
        self.cases[family] += 1
        self.answers[f"{family} {code}"] += 1

    def fail(self, family: str, name: str, why: str) -> None:
        self.cases[family] += 1
        self.broken.append(f"{family} {name}: {why}")


class Conversation:
    """A raw SMTP client that reads whole replies (multi-line included) and keeps them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.replies: list[tuple[int, bytes]] = []

    def reply(self) -> tuple[int, bytes] | None:
        """One reply, or None when the server closed the connection."""
        text = b""
        while True:
            line = self.file.readline()
            if not line:
                return None
            match = REPLY.match(line.rstrip(b"\r\n"))
            if match is None:
                raise AssertionError(f"not an SMTP reply line: {line[:80]!r}")
            text += match.group(3) + b" "
            if match.group(2) == b" ":
                found = (int(match.group(1)), text.strip())
                self.replies.append(found)
                return found

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _code(code: int, text: bytes) -> str:
    """The reply code with its enhanced status code, when it has one: what the figures count."""
    enhanced = re.match(rb"\d\.\d{1,3}\.\d{1,3}", text)
    return f"{code} {enhanced.group(0).decode()}" if enhanced else str(code)


def _named(code: int, text: bytes) -> bool:
    """A reply that says why: a code and a sentence."""
    return 200 <= code < 600 and len(text) >= 2


def run_smtp_case(port: int, case: hostile_smtp.SmtpCase) -> tuple[str, str | None]:
    """Play the case; the final reply code, or why the server's answers broke the protocol."""
    talk = Conversation(port)
    try:
        greeting = talk.reply()
        if greeting is None or greeting[0] != 220:
            return "", f"greeting {greeting}"
        if case.pipelined:
            talk.sock.sendall(case.writes[0] + b"QUIT\r\n")
            while talk.reply() is not None:
                pass
        else:
            expect_body = False
            for write in case.writes:
                is_body = (write.endswith(b".\r\n") and write.count(b"\r\n") > 1) or write == b".\r\n"
                if is_body and not expect_body:
                    continue  # DATA was refused: the body is not sent
                talk.sock.sendall(write)
                answer = talk.reply()
                if answer is None:
                    break
                expect_body = answer[0] == 354
                if answer[0] == 421:
                    break
            else:
                talk.sock.sendall(b"QUIT\r\n")
                talk.reply()
        if not talk.replies[1:]:
            return "", "no reply to the first command"
        bad = [r for r in talk.replies if not _named(*r)]
        if bad:
            return "", f"replies without a reason: {bad[:3]}"
        return _code(*talk.replies[-1]), None
    except (OSError, AssertionError) as exc:
        return "", f"{type(exc).__name__}: {exc}"
    finally:
        talk.close()


def run_mime_case(port: int, case: hostile_mime.MimeCase) -> tuple[str, str | None]:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo()
            client.mail("laege@klinik.example")
            client.rcpt(RCPT)
            code, text = client.data(case.raw)
    except smtplib.SMTPResponseException as exc:
        code, text = exc.smtp_code, exc.smtp_error
    except (OSError, smtplib.SMTPException) as exc:
        return "", f"{type(exc).__name__}: {exc}"
    if not _named(code, text):
        return "", f"reply without a reason: {code} {text!r}"
    return _code(code, text), None


def run_document_case(
    daemon: Daemon, token: str, case: hostile_documents.DocumentCase
) -> tuple[str, str | None]:
    try:
        reply = call(daemon, "POST", "/api/v1/messages", token, case.body, case.content_type)
    except OSError as exc:
        return "", f"{type(exc).__name__}: {exc}"
    if reply.status == 202:
        return "202", None
    if reply.status >= 500 and reply.status != 503:
        return "", f"HTTP {reply.status}"
    try:
        problem = json.loads(reply.body)
    except ValueError:
        return "", f"HTTP {reply.status} without JSON"
    if not problem.get("code") or not problem.get("detail"):
        return "", f"HTTP {reply.status} without code and sentence: {problem}"
    return f"{reply.status} {problem['code']}", None


def pending_work(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).where(outbox.c.state == "pending")).scalar_one())


def stuck_messages(store: Store) -> list[str]:
    """Acknowledged messages that are nowhere a person looks, and steps that failed for good."""
    with store.read() as conn:
        failed = conn.execute(select(outbox.c.kind, outbox.c.target_id).where(outbox.c.state != "done")).all()
        nowhere = conn.execute(
            select(messages.c.id, messages.c.channel)
            .outerjoin(referrals, referrals.c.message_id == messages.c.id)
            .outerjoin(medcom_answers, medcom_answers.c.message_id == messages.c.id)
            .where(referrals.c.id.is_(None), medcom_answers.c.id.is_(None))
        ).all()
    return [f"outbox {kind} on {target} not done" for kind, target in failed] + [
        f"message {mid} ({channel}) in no queue, no triage, no answer" for mid, channel in nowhere
    ]


def failed_reads(daemon: Daemon, store: Store, ops: str) -> tuple[int, list[str]]:
    """Read everything a person can read: each referral, its raw message, every queue page, triage."""
    with store.read() as conn:
        rows = conn.execute(select(referrals.c.id, referrals.c.municipality)).all()
    tokens = {
        code: new_token(daemon, "--municipality", code, "--name", f"udvalg-{code}")
        for code in sorted({m for _, m in rows if m})
    }
    reads, broken = 0, []
    paths: list[tuple[str, str]] = [("/api/v1/triage", ops)]
    for code, token in tokens.items():
        paths += [(f"/api/v1/municipalities/{code}/referrals?state=new&limit=200", token)]
    for referral_id, code in rows:
        if code:
            paths += [(f"/api/v1/referrals/{referral_id}", tokens[code])]
            paths += [(f"/api/v1/referrals/{referral_id}/raw", tokens[code])]
    for path, token in paths:
        reads += 1
        reply = call(daemon, "GET", path, token)
        if reply.status != 200:
            broken.append(f"GET {path}: {reply.status}")
    return reads, broken


def test_the_hostile_corpus_is_answered_and_nothing_is_lost(
    daemon_factory: type[Daemon],
    tmp_path: Path,
    database_url: str,
    relay: Sink,  # noqa: F811
    figures: Callable[[str], None],
) -> None:
    store = prepare(tmp_path, database_url)
    daemon = daemon_factory(
        tmp_path,
        database_url,
        outbound={"host": "127.0.0.1", "port": relay.port, "tls": "none", "from_address": RCPT},
        medcom={"schema_dir": XSD},
        receipts={"max_per_sender_per_hour": 100_000},
    )
    daemon.start()
    epj = new_token(daemon, "--sender", "--name", "epj")
    ops = new_token(daemon, "--ops", "--name", "drift")
    tally = Tally()

    for smtp_case in hostile_smtp.cases():
        code, why = run_smtp_case(daemon.smtp_port, smtp_case)
        tally.fail("smtp", smtp_case.name, why) if why else tally.answered("smtp", code)
    peaks = {"smtp": peak_rss(daemon) / 2**20}
    for mime_case in hostile_mime.cases(MIME_CASES):
        code, why = run_mime_case(daemon.smtp_port, mime_case)
        tally.fail("mime", mime_case.name, why) if why else tally.answered("mime", code)
    peaks["mime"] = peak_rss(daemon) / 2**20
    for document in hostile_documents.cases():
        code, why = run_document_case(daemon, epj, document)
        tally.fail("document", document.name, why) if why else tally.answered("document", code)

    wait_until(
        lambda: pending_work(store) == 0, 600, f"the pipeline to finish; log tail:\n{daemon.log()[-3000:]}"
    )
    stuck = stuck_messages(store)
    reads, broken_reads = failed_reads(daemon, store, ops)
    peak = peaks["documents"] = peak_rss(daemon) / 2**20
    with store.read() as conn:
        stored = conn.execute(select(func.count()).select_from(messages)).scalar_one()
        in_triage = conn.execute(select(func.count()).where(referrals.c.municipality.is_(None))).scalar_one()
    store.dispose()

    figures(
        f"hostile corpus on {database_url.split(':')[0]}: cases {sum(tally.cases.values())} "
        f"({dict(tally.cases)}), stored {stored}, in triage {in_triage}, stuck messages: {len(stuck)}, "
        f"reads {reads}, failed reads: {len(broken_reads)}, peak memory {peak:.0f} MB "
        f"(after each part: {', '.join(f'{k} {v:.0f}' for k, v in peaks.items())})"
    )
    figures(f"answers: {dict(sorted(tally.answers.items()))}")
    assert sum(tally.cases.values()) >= 1000
    assert tally.broken == [], "\n".join(tally.broken)
    assert stuck == [], "\n".join(
        stuck + [line for line in daemon.log().splitlines() if "failed for good" in line][:20]
    )
    assert broken_reads == [], "\n".join(broken_reads)
    assert peak < PEAK_LIMIT_MB, f"peak memory {peak:.0f} MB"
    assert "Traceback" not in daemon.log()
