"""MedCom with real processes: documents in over HTTP (a sender's token) and as mail attachments over SMTP,
routed by `postkasse serve`, and answered by the channel they came in on: FHIR acknowledgements fetched from
the API, OIOXML receipts mailed to a real relay, both read back with our parser and MedCom's schemas."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from postkasse.committee import referrals
from postkasse.medcom.document import Document, Letter
from postkasse.medcom.parse import Schemas, parse
from postkasse.store import Store
from postkasse.store.schema import medcom_letters, messages, outbox, outgoing_mail
from postkasse.store.schema import referrals as referrals_table
from tests.helpers import RCPT, send, stored_id
from tests.servers import Daemon, wait_until
from tests.sink import Delivered, Sink
from tests.test_medcom_flow import XSD, fixture
from tests.test_routing_e2e import prepare
from tests.test_thread_e2e import new_token

pytestmark = pytest.mark.slow

R_TEK = "559e4be0-e1f2-4371-969d-29bbbd5ca9d1"  # the MessageHeader.id both R-Tek bundles carry
R_TEK_K = "R-Tek-K-dublicate-5de12884-eae7-4fd3-ba4a-d8b56be4baff"
R_TEK_L = "R-Tek-L-dublicate-fa97e431-332f-4605-ad37-c259dc2b8637"
GP = "laege@klinik.example"
SCHEMAS = Schemas(XSD)
SMTP_POLICY = policy.SMTP  # CRLF line ends: smtplib sends bytes as they are


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        assert self.content_type == "application/json", (self.content_type, self.body[:200])
        return json.loads(self.body)


def call(
    daemon: Daemon, method: str, path: str, token: str, body: bytes | None = None, content_type: str = ""
) -> Reply:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return Reply(response.status, response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers.get_content_type(), exc.read())


@pytest.fixture
def relay() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


@pytest.fixture
def world(daemon_factory: type[Daemon], tmp_path: Path, relay: Sink) -> Iterator[tuple[Daemon, Store]]:
    """`postkasse serve` with MedCom's schemas, the relay as its outbound, and reference data imported."""
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    store = prepare(tmp_path, database_url)
    daemon = daemon_factory(
        tmp_path,
        database_url,
        outbound={"host": "127.0.0.1", "port": relay.port, "tls": "none", "from_address": RCPT},
        medcom={"schema_dir": XSD},
    )
    daemon.start()
    yield daemon, store
    store.dispose()


def submit(daemon: Daemon, token: str, document: bytes, content_type: str) -> int:
    """POST /api/v1/messages; 202 with the message id and where its answers will be."""
    reply = call(daemon, "POST", "/api/v1/messages", token, document, content_type)
    assert reply.status == 202, reply
    accepted = reply.json()
    assert accepted["status"] == "accepted"
    assert accepted["answers"] == f"/api/v1/messages/{accepted['message']}/answers"
    message_id: int = accepted["message"]
    return message_id


def answers_when_done(daemon: Daemon, token: str, message_id: int) -> list[dict[str, Any]]:
    """Poll the message's answers until the daemon has read and routed it."""
    path = f"/api/v1/messages/{message_id}/answers"
    found: dict[str, Any] = {}

    def done() -> bool:
        reply = call(daemon, "GET", path, token)
        assert reply.status == 200, reply
        found.update(reply.json())
        return bool(found["status"] == "done")

    wait_until(done, 60, f"message {message_id} to be answered; log:\n{daemon.log()}")
    assert found["message"] == message_id
    items: list[dict[str, Any]] = found["answers"]
    return items


def fetch(daemon: Daemon, token: str, item: dict[str, Any]) -> tuple[Reply, Document]:
    reply = call(daemon, "GET", item["url"], token)
    assert reply.status == 200, reply
    assert reply.content_type == item["content_type"]
    return reply, parse(reply.body, schemas=SCHEMAS)


def idle(store: Store) -> bool:
    """Nothing left for the pipeline: every outbox row is done (none pending, none failed)."""
    with store.read() as conn:
        states: dict[str, int] = dict(
            conn.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state)).all()
        )
    return set(states) <= {"done"}


def referrals_of(store: Store, *message_ids: int) -> list[Any]:
    with store.read() as conn:
        return list(
            conn.execute(
                select(referrals_table)
                .where(referrals_table.c.message_id.in_(message_ids))
                .order_by(referrals_table.c.id)
            ).all()
        )


def without_ids(letter: Letter) -> Letter:
    """An acknowledgement's content, leaving out its own MessageHeader.id (new for every answer)."""
    return replace(letter, identifier="")


def test_fhir_over_http_is_acknowledged_and_its_duplicate_shown_once(
    world: tuple[Daemon, Store], relay: Sink
) -> None:
    daemon, store = world
    epj = new_token(daemon, "--sender", "--name", "epj")

    first = submit(daemon, epj, fixture("Bundle-R-Tek-K"), "application/fhir+json")
    (item,) = answers_when_done(daemon, epj, first)
    assert (item["message"], item["kind"], item["code"], item["content_type"]) == (
        first,
        "Acknowledgement",
        "ok",
        "application/fhir+json",
    )
    reply, ack = fetch(daemon, epj, item)
    assert reply.body.lstrip().startswith(b"{")
    (letter,) = ack.letters
    assert (ack.format, letter.kind, letter.answers_letter, letter.response_code) == (
        "fhir-json",
        "Acknowledgement",
        R_TEK,
        "ok",
    )
    assert ack.envelope_id != R_TEK_K and letter.identifier != R_TEK
    assert letter.receiver.identifier == "441211000016000"  # back to the sender's SOR id
    (referral,) = referrals_of(store, first)

    second = submit(daemon, epj, fixture("Bundle-R-Tek-L"), "application/fhir+xml")
    assert second != first
    (again,) = answers_when_done(daemon, epj, second)
    assert (again["kind"], again["code"], again["content_type"]) == (
        "Acknowledgement",
        "ok",
        "application/fhir+xml",
    )
    reply, ack_again = fetch(daemon, epj, again)
    assert reply.body.lstrip().startswith(b"<")
    (letter_again,) = ack_again.letters
    assert (letter_again.answers_letter, letter_again.response_code) == (R_TEK, "ok")
    assert without_ids(letter_again) == without_ids(letter)  # the same answer as the first time
    assert ack_again.envelope_id not in (ack.envelope_id, R_TEK_L)  # with a new Bundle.id
    assert letter_again.identifier != letter.identifier  # and a new MessageHeader.id

    # Shown once: the second copy made no referral and is recorded as the first one's duplicate.
    assert referrals_of(store, first, second) == [referral]
    with store.read() as conn:
        events = [e.action for e in referrals.events(conn, referral.id)]
        copies = conn.execute(
            select(
                medcom_letters.c.id,
                medcom_letters.c.message_id,
                medcom_letters.c.referral_id,
                medcom_letters.c.duplicate_of,
            )
            .where(medcom_letters.c.letter_id == R_TEK)
            .order_by(medcom_letters.c.id)
        ).all()
    assert events == ["triaged", "duplicate_received"]
    assert [tuple(c) for c in copies] == [
        (copies[0].id, first, referral.id, None),
        (copies[1].id, second, referral.id, copies[0].id),
    ]
    # The patient (an adult at a made-up address in 3400) is not in the registry: the one referral waits
    # in triage, and operations see it there once.
    assert (referral.state, referral.triage_reason) == ("triage", "ambiguous_postal_code")
    ops = new_token(daemon, "--ops", "--name", "drift")
    triage = call(daemon, "GET", "/api/v1/triage", ops).json()["referrals"]
    assert [(t["id"], t["reason"]) for t in triage] == [(referral.id, "ambiguous_postal_code")]

    # The sender's inbox holds both acknowledgements, oldest first.
    inbox = call(daemon, "GET", "/api/v1/answers", epj).json()
    assert [i["id"] for i in inbox["items"]] == [item["id"], again["id"]]
    assert inbox["next_cursor"] is None
    assert relay.mails() == []  # answers to an HTTP sender are fetched, never mailed

    # Only a sender's token submits; another sender sees nothing of this one's.
    committee = new_token(daemon, "--municipality", "0710", "--name", "favrskov")
    for token in (committee, ops):
        refused = call(
            daemon, "POST", "/api/v1/messages", token, fixture("Bundle-R-Tek-K"), "application/fhir+json"
        )
        assert (refused.status, refused.json()["code"]) == (403, "forbidden")
    other = new_token(daemon, "--sender", "--name", "andet-system")
    for path in (f"/api/v1/messages/{first}/answers", item["url"], again["url"]):
        hidden = call(daemon, "GET", path, other)
        assert (hidden.status, hidden.json()["code"]) == (404, "not_found"), path
    assert call(daemon, "GET", "/api/v1/answers", other).json()["items"] == []
    anonymous = call(
        daemon, "POST", "/api/v1/messages", "", fixture("Bundle-R-Tek-K"), "application/fhir+json"
    )
    assert (anonymous.status, anonymous.json()["code"]) == (401, "unauthorized")

    # What cannot be a MedCom document is refused at the door, and nothing is stored for it.
    plain = call(daemon, "POST", "/api/v1/messages", epj, b"Hej, se henvisningen", "text/plain")
    assert (plain.status, plain.json()["code"]) == (415, "unsupported_media_type")
    for empty in (b"", b" \r\n"):
        nothing = call(daemon, "POST", "/api/v1/messages", epj, empty, "application/fhir+json")
        assert (nothing.status, nothing.json()["code"]) == (422, "invalid_request")
    wait_until(lambda: idle(store), 60, "the pipeline to finish")
    assert referrals_of(store, first, second) == [referral]
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(referrals_table)).scalar_one() == 1
        assert conn.execute(select(messages.c.id).order_by(messages.c.id)).scalars().all() == [first, second]


def test_an_impossible_cpr_sent_over_http_waits_in_triage(world: tuple[Daemon, Store]) -> None:
    daemon, store = world
    epj = new_token(daemon, "--sender", "--name", "epj")
    ops = new_token(daemon, "--ops", "--name", "drift")
    message_id = submit(daemon, epj, fixture("korr_x9134.xml"), "application/xml")
    assert answers_when_done(daemon, epj, message_id) == []  # minuspositivkvitt: no receipt asked for
    (referral,) = referrals_of(store, message_id)
    assert (referral.state, referral.triage_reason, referral.cpr) == ("triage", "invalid_cpr", None)
    (waiting,) = call(daemon, "GET", "/api/v1/triage", ops).json()["referrals"]
    assert (waiting["id"], waiting["reason"]) == (referral.id, "invalid_cpr")
    assert "1522824933" not in json.dumps(waiting)  # the reason, never the contents


def mail_with(document: bytes, message_id: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = f"Lægehuset <{GP}>"
    mail["To"] = RCPT
    mail["Subject"] = "Henvisning"
    mail["Message-ID"] = f"<{message_id}>"
    mail.set_content("Henvisningen er vedhæftet som OIOXML.")
    mail.add_attachment(document, maintype="application", subtype="xml", filename="ref01.xml")
    return mail.as_bytes(policy=SMTP_POLICY)


def mailed_answer(relay: Sink, store: Store, count: int) -> Delivered:
    """The `count`th mail at the relay, once the pipeline has nothing more to send."""
    wait_until(lambda: len(relay.mails()) >= count, 60, f"{count} mails at the relay")
    wait_until(lambda: idle(store), 60, "the pipeline to finish")
    mails = relay.mails()
    assert len(mails) == count, [d.mail["Subject"] for d in mails]
    return mails[-1]


def attached_document(delivered: Delivered, kind: str) -> Document:
    """The one attachment of an answer mail, which must validate against MedCom's schemas."""
    (attachment,) = delivered.mail.iter_attachments()
    assert (attachment.get_filename(), attachment.get_content_type()) == (f"{kind}.xml", "application/xml")
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return parse(payload, schemas=SCHEMAS)


def test_oioxml_by_mail_is_answered_by_mail(world: tuple[Daemon, Store], relay: Sink) -> None:
    daemon, store = world
    document = fixture("REF01_1.xml").replace(b"minuspositivkvitt", b"pluspositivkvitt")
    assert b"pluspositivkvitt" in document
    code, reply = send(daemon.smtp_port, mail_with(document, "ref01-1@klinik.example"), sender=GP)
    assert code == 250, reply
    message_id = stored_id(reply)

    answer = mailed_answer(relay, store, 1)
    assert (answer.envelope_sender, answer.recipients) == ("", (GP,))  # null sender: nothing answers it
    assert answer.mail["In-Reply-To"] == "<ref01-1@klinik.example>"
    assert answer.mail["Auto-Submitted"] == "auto-replied"
    receipt = attached_document(answer, "XCTL03")
    (letter,) = receipt.letters
    assert (letter.kind, letter.answers_envelope, letter.response_code) == ("XCTL03", "Kuv1234", None)
    assert letter.receiver.ean == "5790000121526"  # back to the GP's location number
    assert b"2406444917" not in answer.raw and b"Berggren" not in answer.raw  # a receipt names no patient

    (referral,) = referrals_of(store, message_id)
    assert (referral.letter_id, referral.cpr, referral.sender_kind) == ("Brv5678", "2406444917", "gp")
    with store.read() as conn:
        kinds = conn.execute(select(outgoing_mail.c.kind, outgoing_mail.c.state)).all()
    assert [tuple(k) for k in kinds] == [
        ("medcom_answer", "sent")
    ]  # the receipt is MedCom's, not the human one

    broken = document.replace(b"<Priority>elektiv</Priority>", b"<Priority>hurtigst</Priority>")
    assert broken != document
    code, reply = send(daemon.smtp_port, mail_with(broken, "ref01-2@klinik.example"), sender=GP)
    assert code == 250, reply
    refused = mailed_answer(relay, store, 2)
    assert refused.recipients == (GP,)
    assert refused.mail["In-Reply-To"] == "<ref01-2@klinik.example>"
    negative = attached_document(refused, "XCTL02")
    (refusal,) = negative.letters
    assert (refusal.kind, refusal.answers_envelope, refusal.response_code) == (
        "XCTL02",
        "Kuv1234",
        "syntaksfejl",
    )
    assert referrals_of(store, stored_id(reply)) == []


def test_the_committee_and_an_http_sender_correspond_as_medcom(
    world: tuple[Daemon, Store], relay: Sink
) -> None:
    """A referral that came as OIOXML over HTTP: the committee's question reaches the sender's inbox as an
    XDIS91 ClinicalEmail, and the sender's XDIS91 naming the reference joins the referral's thread."""
    daemon, store = world
    epj = new_token(daemon, "--sender", "--name", "epj")
    ops = new_token(daemon, "--ops", "--name", "drift")
    favrskov = new_token(daemon, "--municipality", "0710", "--name", "favrskov")
    message_id = submit(daemon, epj, fixture("REF01_1.xml"), "application/xml")
    assert answers_when_done(daemon, epj, message_id) == []
    (referral,) = referrals_of(store, message_id)
    assert referral.state == "triage"
    assign = {"municipality": "0710", "note": "Familien bor i Hinnerup ifølge lægen."}
    assigned = call(
        daemon,
        "POST",
        f"/api/v1/triage/{referral.id}/assign",
        ops,
        json.dumps(assign).encode(),
        "application/json",
    )
    assert assigned.status == 200, assigned
    question = {"text": "Hvad har skolen allerede gjort?"}
    asked = call(
        daemon,
        "POST",
        f"/api/v1/referrals/{referral.id}/messages",
        favrskov,
        json.dumps(question).encode(),
        "application/json",
    )
    assert (asked.status, asked.json()["reference"]) == (202, f"PK-{referral.id:06d}")

    (item,) = call(daemon, "GET", "/api/v1/answers", epj).json()["items"]
    assert (item["message"], item["kind"], item["content_type"]) == (message_id, "XDIS91", "application/xml")
    _, written = fetch(daemon, epj, item)  # validates against the XDIS91 schema
    (letter,) = written.letters
    assert (letter.kind, letter.receiver.identifier, letter.receiver.identifier_code) == (
        "XDIS91",
        "079741",
        "ydernummer",
    )
    assert (letter.cpr, letter.subject) == (
        "2406444917",
        f"Svar fra koordinationsudvalget [PK-{referral.id:06d}]",
    )
    assert "Hvad har skolen allerede gjort?" in letter.text

    reply = fixture("DIS91_1.xml").replace(
        b"<Subject>Forunders\xf8gelse</Subject>", f"<Subject>Svar PK-{referral.id:06d}</Subject>".encode()
    )
    assert reply != fixture("DIS91_1.xml")
    replied = submit(daemon, epj, reply, "application/xml")
    answers_when_done(daemon, epj, replied)
    assert referrals_of(store, replied) == []  # no new referral: it joins the thread
    detail = call(daemon, "GET", f"/api/v1/referrals/{referral.id}", favrskov).json()
    assert [entry["direction"] for entry in detail["thread"]] == ["to_sender", "from_sender"]
    assert "Afdeling A har modtaget" in detail["thread"][1]["text"]
    assert detail["unread_reply"] is True
    wait_until(lambda: idle(store), 60, "the pipeline to finish")
    assert relay.mails() == []  # all of it by the channel the referral came in on


def billion_laughs() -> bytes:
    """Nine levels of entities, each ten of the one below: 10**9 copies of "hahaha" if ever expanded."""
    entities = b'<!ENTITY l0 "hahaha">' + b"".join(
        b'<!ENTITY l%d "%s">' % (level, b"&l%d;" % (level - 1) * 10) for level in range(1, 10)
    )
    return b'<?xml version="1.0"?><!DOCTYPE Emessage [' + entities + b"]><Emessage>&l9;</Emessage>"


EXTERNAL = (
    b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]><Emessage>&x;</Emessage>'
)


def test_hostile_documents_and_acknowledgements_over_http(world: tuple[Daemon, Store]) -> None:
    """A billion laughs and an external entity are refused in words, reading nothing; an acknowledgement
    sent to us is recorded and never acknowledged."""
    daemon, store = world
    epj = new_token(daemon, "--sender", "--name", "epj")
    for hostile in (billion_laughs(), EXTERNAL):
        message_id = submit(daemon, epj, hostile, "application/xml")
        (item,) = answers_when_done(daemon, epj, message_id)
        assert (item["kind"], item["code"], item["content_type"]) == (
            "refusal",
            "syntaksfejl",
            "application/json",
        )
        refusal = call(daemon, "GET", item["url"], epj)
        assert refusal.json()["code"] == "syntaksfejl"
        assert b"root:" not in refusal.body and b"hahaha" not in refusal.body
        assert referrals_of(store, message_id) == []
    acknowledgement = submit(daemon, epj, fixture("Ack-ok-"), "application/fhir+xml")
    assert answers_when_done(daemon, epj, acknowledgement) == []
    assert referrals_of(store, acknowledgement) == []
    assert daemon.running
