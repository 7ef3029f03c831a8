"""Hostile and heavy MedCom documents against a real `postkasse serve` on SQLite: each hostile document is
refused with its named reason while the daemon's peak memory stays under 300 MB; eight large documents
posted at once are each accepted (202) or told to come back (503 with Retry-After), never a 500, and each
accepted one is routed; a schema error over an invalid CPR reaches neither the answer nor the log."""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from postkasse.store import Store
from tests.helpers import send, stored_id
from tests.servers import Daemon
from tests.sink import Sink
from tests.test_medcom_bounds import HOSTILE, INVALID_CPR
from tests.test_medcom_e2e import (
    GP,
    answers_when_done,
    attached_document,
    call,
    mail_with,
    mailed_answer,
    referrals_of,
    relay,  # noqa: F401  (a fixture)
    submit,
    world,  # noqa: F401  (a fixture)
)
from tests.test_medcom_flow import fixture
from tests.test_thread_e2e import new_token

pytestmark = pytest.mark.slow

PEAK_LIMIT = 300 * 2**20


def peak_rss(daemon: Daemon) -> int:
    """The serve process's high-water mark of resident memory (VmHWM), in bytes."""
    assert daemon.proc is not None
    status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def content_type(document: bytes) -> str:
    return "application/fhir+json" if document.lstrip()[:1] in (b"{", b"[") else "application/xml"


def post_hostile_documents(daemon: Daemon, store: Store) -> int:
    """Post every hostile document; each is refused with its named reason and becomes no referral.
    Returns serve's peak RSS afterwards."""
    epj = new_token(daemon, "--sender", "--name", "epj")
    for name, (build, reason) in sorted(HOSTILE.items()):
        document = build()
        message_id = submit(daemon, epj, document, content_type(document))
        del document
        (item,) = answers_when_done(daemon, epj, message_id)
        answer = call(daemon, "GET", item["url"], epj)
        if item["kind"] == "refusal":  # JSON: MedCom's code and the named reason
            refusal = answer.json()
            assert (refusal["code"], refusal["reason"]) == (item["code"], reason), (name, refusal)
        else:  # an Emessage gets MedCom's negative receipt
            assert (item["kind"], item["code"]) == ("XCTL02", "ikke_specificeret"), name
            assert b"<RefuseCode>ikke_specificeret</RefuseCode>" in answer.body
        assert referrals_of(store, message_id) == []
    assert daemon.running
    peak = peak_rss(daemon)
    return peak


def test_hostile_documents_are_refused_by_name_and_the_daemon_stays_under_300_mb(
    world: tuple[Daemon, Store],  # noqa: F811
    figures: Callable[[str], None],
) -> None:
    peak = post_hostile_documents(*world)
    figures(
        f"{len(HOSTILE)} hostile documents of ~10 MiB, each refused by name: peak RSS {peak / 2**20:.0f} MiB"
    )
    assert peak < PEAK_LIMIT


def large_care_communication(megabytes: int) -> bytes:
    """R-Tek-K as a new message (new Bundle.id, MessageHeader.id and conversation) with a PDF attachment of
    `megabytes`: a valid document whose size, not its node count, is large."""
    bundle = json.loads(fixture("Bundle-R-Tek-K"))
    bundle["id"] = str(uuid.uuid4())
    resources = [entry["resource"] for entry in bundle["entry"]]
    header = next(r for r in resources if r["resourceType"] == "MessageHeader")
    header["id"] = str(uuid.uuid4())
    communication = next(r for r in resources if r["resourceType"] == "Communication")
    communication["identifier"][0]["value"] = f"urn:uuid:{uuid.uuid4()}"  # a conversation of its own
    pdf = base64.b64encode(b"%PDF-1.4\n" + bytes(megabytes * 2**20)).decode()
    communication["payload"].append(
        {"contentAttachment": {"contentType": "application/pdf", "title": "bilag.pdf", "data": pdf}}
    )
    return json.dumps(bundle).encode()


def post(daemon: Daemon, token: str, document: bytes) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}/api/v1/messages", data=document, method="POST"
    )
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/fhir+json")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_eight_large_documents_at_once_are_accepted_or_deferred_never_failed(
    world: tuple[Daemon, Store],  # noqa: F811
    figures: Callable[[str], None],
) -> None:
    daemon, store = world
    epj = new_token(daemon, "--sender", "--name", "epj")
    documents = [large_care_communication(6) for _ in range(8)]
    replies: list[tuple[int, Message, bytes]] = []
    lock = threading.Lock()

    def one(document: bytes) -> None:
        reply = post(daemon, epj, document)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=one, args=(d,)) for d in documents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert len(replies) == len(documents)
    statuses = sorted(status for status, _, _ in replies)
    figures(f"8 documents of {len(documents[0]) / 2**20:.1f} MiB at once: {statuses}")
    assert set(statuses) <= {202, 503}, [(s, b[:300]) for s, _, b in replies]
    accepted: list[int] = []
    for status, headers, body in replies:
        answer: dict[str, Any] = json.loads(body)
        if status == 503:
            assert answer["code"] == "store_unavailable"
            assert int(headers["Retry-After"]) > 0
        else:
            accepted.append(answer["message"])
    assert accepted
    for message_id in accepted:
        (item,) = answers_when_done(daemon, epj, message_id)
        assert (item["kind"], item["code"]) == ("Acknowledgement", "ok")
        (referral,) = referrals_of(store, message_id)
        assert referral.letter_id
    assert "database is locked" not in daemon.log()


def test_an_invalid_cpr_is_named_by_its_element_never_by_its_digits(
    world: tuple[Daemon, Store],  # noqa: F811
    relay: Sink,  # noqa: F811
) -> None:
    """The schema refuses "010215 4123" (a space); the XCTL02 mailed back, the answer stored and the log
    say which element and which rule, and hold no part of the number."""
    daemon, store = world
    document = re.sub(
        rb"<CivilRegistrationNumber>\d+</CivilRegistrationNumber>",
        b"<CivilRegistrationNumber>" + INVALID_CPR + b"</CivilRegistrationNumber>",
        fixture("REF01_1.xml"),
    )
    code, reply = send(daemon.smtp_port, mail_with(document, "ref01-cpr@klinik.example"), sender=GP)
    assert code == 250, reply
    answer = mailed_answer(relay, store, 1)
    receipt = attached_document(answer, "XCTL02")
    (refusal,) = receipt.letters
    assert (refusal.kind, refusal.response_code) == ("XCTL02", "syntaksfejl")
    assert "CivilRegistrationNumber" in refusal.text and "PATTERN" in refusal.text
    (attachment,) = answer.mail.iter_attachments()
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    digits = re.compile(rb"010215|4123")
    for seen in (payload, answer.raw, daemon.log().encode()):
        assert not digits.search(seen), digits.search(seen)
    assert referrals_of(store, stored_id(reply)) == []
