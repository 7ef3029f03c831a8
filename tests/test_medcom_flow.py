"""MedCom documents through the real pipeline: routed like mail, answered as MedCom prescribes, duplicates
shown once and answered alike, broken documents refused with the right code, nothing lost."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import select

from postkasse import flows
from postkasse.clock import FixedClock
from postkasse.committee import correspondence, referrals
from postkasse.config import Settings
from postkasse.flows.route import RouteMessage
from postkasse.medcom.document import Document
from postkasse.medcom.parse import Schemas, parse
from postkasse.pipeline import Pipeline
from postkasse.store import Received, Store
from postkasse.store import messages as stored_messages
from postkasse.store.schema import medcom_answers, medcom_letters, messages, outbox, outgoing_mail, thread
from postkasse.store.schema import referrals as referrals_table
from tests.refdata_files import SHARED

MEDCOM = SHARED / "fixtures" / "medcom"
XSD = MEDCOM / "xsd"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
US = "5790000000000"


def fixture(name: str) -> bytes:
    found = list(MEDCOM.glob(f"*/{name}*"))
    assert len(found) == 1, name
    return found[0].read_bytes()


class Flow:
    """The pipeline as `serve` builds it, run to the end by hand (no relay: `send` rows wait)."""

    def __init__(self, store: Store, **medcom: Any) -> None:
        self.store = store
        self.clock = FixedClock(T0)
        self.settings = Settings(medcom={"schema_dir": XSD, "ean": US, **medcom})
        self.pipeline: Pipeline = flows.build(self.settings, store, self.clock)

    def submit(self, raw: bytes, channel: str = "http", sender: str = "api:epj") -> int:
        item = Received(channel, sender, ("postkasse@localhost",), "127.0.0.1:1", True, self.clock.now(), raw)
        with self.store.write() as conn:
            (saved,) = stored_messages.save(conn, [item], flows.FIRST_STEP, T0 + timedelta(minutes=5))
        self.drain()
        self.clock.advance(timedelta(minutes=1))
        return saved.message_id

    def drain(self) -> None:
        while True:
            with self.store.read() as conn:
                pending = (
                    conn.execute(
                        select(outbox.c.id).where(outbox.c.state == "pending", outbox.c.kind != "send")
                    )
                    .scalars()
                    .all()
                )
            if not pending:
                return
            for outbox_id in pending:
                self.pipeline.run(outbox_id, lambda _: None)

    def answers(self, message_id: int) -> list[Any]:
        with self.store.read() as conn:
            return list(
                conn.execute(
                    select(medcom_answers)
                    .where(medcom_answers.c.message_id == message_id)
                    .order_by(medcom_answers.c.id)
                ).all()
            )

    def referrals(self, message_id: int) -> list[Any]:
        with self.store.read() as conn:
            return list(
                conn.execute(
                    select(referrals_table)
                    .where(referrals_table.c.message_id == message_id)
                    .order_by(referrals_table.c.id)
                ).all()
            )


@pytest.fixture
def flow(store: Store) -> Iterator[Flow]:
    yield Flow(store)


def read_back(body: bytes) -> Document:
    """Our answers parse back with our own reader, and OIOXML ones validate against MedCom's XSDs."""
    return parse(body, schemas=Schemas(XSD))


def test_an_oioxml_referral_becomes_a_referral_with_a_positive_receipt(flow: Flow) -> None:
    raw = fixture("REF01_1.xml").replace(b"minuspositivkvitt", b"pluspositivkvitt")
    message_id = flow.submit(raw)
    (referral,) = flow.referrals(message_id)
    assert (referral.letter_id, referral.cpr, referral.patient_name) == (
        "Brv5678",
        "2406444917",
        "Ole Berggren",
    )
    assert referral.sender_kind == "gp"  # ydernummer
    assert "outside_target_age" in referral.flags  # an adult: the sample is not about a child
    (answer,) = flow.answers(message_id)
    assert (answer.kind, answer.code, answer.recipient) == ("XCTL03", "ok", "api:epj")
    receipt = read_back(answer.body)
    (letter,) = receipt.letters
    assert (letter.kind, letter.answers_envelope, letter.receiver.ean) == (
        "XCTL03",
        "Kuv1234",
        "5790000121526",
    )
    assert b"2406444917" not in answer.body and b"Berggren" not in answer.body


def test_no_positive_receipt_unless_asked(flow: Flow) -> None:
    message_id = flow.submit(fixture("REF01_1.xml"))
    assert len(flow.referrals(message_id)) == 1
    assert flow.answers(message_id) == []


def test_an_impossible_cpr_goes_to_triage(flow: Flow) -> None:
    message_id = flow.submit(fixture("korr_x9134.xml"))
    (referral,) = flow.referrals(message_id)
    assert (referral.state, referral.triage_reason) == ("triage", "invalid_cpr")
    assert referral.urgent  # høj_prioritet


def test_the_fhir_duplicate_pair_is_one_referral_and_two_identical_acknowledgements(flow: Flow) -> None:
    first = flow.submit(fixture("Bundle-R-Tek-K"))
    second = flow.submit(fixture("Bundle-R-Tek-L"))
    assert len(flow.referrals(first)) == 1
    assert flow.referrals(second) == []
    (one,), (two,) = flow.answers(first), flow.answers(second)
    assert (one.code, two.code) == ("ok", "ok")
    assert (one.content_type, two.content_type) == ("application/fhir+json", "application/fhir+xml")
    acks = [read_back(a.body) for a in (one, two)]
    assert [a.letters[0].answers_letter for a in acks] == ["559e4be0-e1f2-4371-969d-29bbbd5ca9d1"] * 2
    assert [a.letters[0].response_code for a in acks] == ["ok", "ok"]
    assert acks[0].envelope_id != acks[1].envelope_id
    with flow.store.read() as conn:
        (referral,) = flow.referrals(first)
        events = [e.action for e in referrals.events(conn, referral.id)]
        rows = conn.execute(select(medcom_letters).order_by(medcom_letters.c.id)).all()
    assert events == ["triaged", "duplicate_received"]
    assert rows[1].duplicate_of == rows[0].id and rows[1].referral_id == referral.id


def test_a_reused_envelope_with_a_new_letter_is_refused(flow: Flow) -> None:
    original = fixture("DIS91_1.xml")
    flow.submit(original)
    reused = original.replace(
        b"<Identifier>BrevNr00129</Identifier>", b"<Identifier>BrevNr00130</Identifier>"
    )
    message_id = flow.submit(reused)
    assert flow.referrals(message_id) == []
    (answer,) = flow.answers(message_id)
    assert answer.kind == "XCTL02"
    refusal = read_back(answer.body).letters[0]
    assert (refusal.kind, refusal.answers_envelope, refusal.response_code) == (
        "XCTL02",
        "KuvertNr012234",
        "ikke_specificeret",
    )


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ((b"<Priority>elektiv</Priority>", b"<Priority>hurtigst</Priority>"), "syntaksfejl"),
        ((b"http://rep.oio.dk/", b"http://example.org/"), "problem_med_version"),
    ],
    ids=["schema error", "not a medcom namespace"],
)
def test_a_broken_oioxml_document_gets_a_negative_receipt_and_is_kept(
    flow: Flow, change: tuple[bytes, bytes], code: str
) -> None:
    raw = fixture("REF01_1.xml").replace(*change)
    message_id = flow.submit(raw)
    assert flow.referrals(message_id) == []
    (answer,) = flow.answers(message_id)
    assert (answer.kind, answer.code) == ("XCTL02", code)
    refusal = read_back(answer.body).letters[0]
    assert (refusal.answers_envelope, refusal.response_code) == ("Kuv1234", code)
    with flow.store.read() as conn:
        kept = conn.execute(select(messages.c.raw).where(messages.c.id == message_id))
        assert kept.scalar_one() == raw


def test_a_newer_oioxml_version_is_read_and_routed_like_a_known_one(flow: Flow) -> None:
    """A version whose schema is not installed (newer ones dropped sundcom.dk) has the same envelope,
    letter and patient: it becomes a referral like the known one, not a problem_med_version refusal."""
    known = flow.submit(fixture("REF01_1.xml"))
    newer = (
        fixture("REF01_1.xml")
        .replace(
            b"http://rep.oio.dk/sundcom.dk/medcom.dk/xml/schemas/2005/08/07/",
            b"http://rep.oio.dk/medcom.dk/xml/schemas/2013/09/02/",
        )
        .replace(b"Kuv1234", b"Kuv1235")
        .replace(b"Brv5678", b"Brv5679")
    )
    message_id = flow.submit(newer)
    assert flow.answers(message_id) == []  # minuspositivkvitt, and nothing to refuse
    (first,) = flow.referrals(known)
    (second,) = flow.referrals(message_id)
    assert second.letter_id == "Brv5679"
    routed = ("state", "municipality", "triage_reason", "cpr", "patient_name", "sender_kind")
    assert [getattr(second, c) for c in routed] == [getattr(first, c) for c in routed]


def test_a_prepared_document_is_routed_without_parsing_inside_the_write(flow: Flow) -> None:
    """prepare() parses in a read transaction; the route step's write then takes its result, so it parses
    nothing (given bytes that are no document at all, it still routes the stored one)."""
    route = flow.pipeline.step(RouteMessage)
    assert route.medcom is not None
    item = Received("http", "api:epj", (), "127.0.0.1:1", True, flow.clock.now(), fixture("REF01_1.xml"))
    with flow.store.write() as conn:
        (saved,) = stored_messages.save(conn, [item], "parked", T0 + timedelta(hours=1))
    route.medcom.prepare(flow.store, saved.message_id)
    with flow.store.write() as conn:
        message = conn.execute(select(messages).where(messages.c.id == saved.message_id)).one()
        route.medcom.route(conn, message, b"not a document", flow.clock.now(), route.router)
    (referral,) = flow.referrals(saved.message_id)
    assert (referral.letter_id, referral.cpr) == ("Brv5678", "2406444917")
    with flow.store.write() as conn:  # taken once: a second route parses what it is given
        assert route.medcom.route(conn, message, b"not a document", flow.clock.now(), route.router) == []
    (refusal,) = [a for a in flow.answers(saved.message_id) if a.kind == "refusal"]
    assert refusal.code == "syntaksfejl"


def test_a_hostile_document_is_refused_in_words(flow: Flow) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b"<Emessage>&b;</Emessage>"
    )
    message_id = flow.submit(bomb)
    (answer,) = flow.answers(message_id)
    assert (answer.kind, answer.code, answer.content_type) == ("refusal", "syntaksfejl", "application/json")
    assert flow.referrals(message_id) == []


def test_a_letter_to_someone_else_is_refused(store: Store) -> None:
    flow = Flow(store, receivers=[US])
    message_id = flow.submit(fixture("REF01_1.xml"))
    assert flow.referrals(message_id) == []
    (answer,) = flow.answers(message_id)
    refusal = read_back(answer.body).letters[0]
    assert (refusal.response_code, refusal.answers_letter) == ("problem_med_modtagerID", "Brv5678")


def test_a_kommunenummer_receiver_routes_to_that_municipality(flow: Flow) -> None:
    indent = b"\n            "
    hospital = (
        b"<Identifier>2001060</Identifier>"
        + indent
        + b"<IdentifierCode>sygehusafdelingsnummer</IdentifierCode>"
    )
    municipality = (
        b"<Identifier>710</Identifier>" + indent + b"<IdentifierCode>kommunenummer</IdentifierCode>"
    )
    raw = fixture("REF01_1.xml").replace(hospital, municipality)
    assert municipality in raw
    (referral,) = flow.referrals(flow.submit(raw))
    assert (referral.state, referral.municipality) == ("new", "0710")
    assert "decided_by_receiver" in referral.reasons


def mail_with(document: bytes, filename: str, content_type: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = "laege@klinik.example"
    mail["To"] = "postkasse@localhost"
    mail["Subject"] = "Henvisning"
    mail["Message-ID"] = "<medcom-1@klinik.example>"
    mail.set_content("Se vedhæftede henvisning.")
    maintype, _, subtype = content_type.partition("/")
    mail.add_attachment(document, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes()


def test_a_document_attached_to_mail_is_answered_by_mail(flow: Flow) -> None:
    raw = fixture("REF01_1.xml").replace(b"minuspositivkvitt", b"pluspositivkvitt")
    message_id = flow.submit(mail_with(raw, "ref01.xml", "application/xml"), "smtp", "laege@klinik.example")
    assert len(flow.referrals(message_id)) == 1
    with flow.store.read() as conn:
        mails = conn.execute(select(outgoing_mail).order_by(outgoing_mail.c.id)).all()
    assert [(m.kind, m.recipient) for m in mails] == [
        ("medcom_answer", "laege@klinik.example")
    ]  # no mail receipt
    answer = message_from_bytes(mails[0].raw, policy=policy.default)
    assert answer["In-Reply-To"] == "<medcom-1@klinik.example>"
    assert isinstance(answer, EmailMessage)
    (attached,) = answer.iter_attachments()
    assert attached.get_filename() == "XCTL03.xml"
    document = attached.get_payload(decode=True)
    assert isinstance(document, bytes)
    assert read_back(document).letters[0].kind == "XCTL03"


def test_the_committee_answers_a_medcom_sender_as_medcom(flow: Flow) -> None:
    oioxml = flow.submit(fixture("REF01_1.xml"))
    fhir = flow.submit(fixture("Bundle-R-Tek-K"))
    route = flow.pipeline.steps["route"]
    assert isinstance(route, RouteMessage) and route.medcom is not None
    with flow.store.write() as conn:
        for message_id in (oioxml, fhir):
            (referral,) = flow.referrals(message_id)
            correspondence.write_to_sender(
                conn,
                referral.id,
                "Vi har brug for skolens vurdering.",
                "favrskov",
                "pk@x",
                T0,
                "udvalget",
                route.medcom,
            )
    (xdis91,) = [a for a in flow.answers(oioxml) if a.kind == "XDIS91"]
    letter = read_back(xdis91.body).letters[0]
    assert (letter.kind, letter.receiver.identifier, letter.cpr) == ("XDIS91", "079741", "2406444917")
    assert "skolens vurdering" in letter.text
    (reply,) = [a for a in flow.answers(fhir) if a.kind == "CareCommunication"]
    answer = read_back(reply.body).letters[0]
    assert answer.kind == "CareCommunication"
    assert answer.thread == parse(fixture("Bundle-R-Tek-K")).letters[0].thread  # the same conversation
    assert xdis91.recipient == reply.recipient == "api:epj"
    with flow.store.read() as conn:
        assert len(conn.execute(select(thread)).all()) == 2


def test_the_committee_writes_to_a_medcom_sender_by_mail_as_a_person_not_a_receipt(flow: Flow) -> None:
    """A committee's letter is a person writing (it may be answered), not an automatic MedCom answer."""
    raw = mail_with(fixture("REF01_1.xml"), "ref01.xml", "application/xml")
    (referral,) = flow.referrals(flow.submit(raw, "smtp", "laege@klinik.example"))
    route = flow.pipeline.steps["route"]
    assert isinstance(route, RouteMessage) and route.medcom is not None
    with flow.store.write() as conn:
        correspondence.write_to_sender(
            conn,
            referral.id,
            "Vi har brug for skolens vurdering.",
            "favrskov",
            "pk@x",
            T0,
            "udvalget",
            route.medcom,
        )
    with flow.store.read() as conn:
        last = conn.execute(select(outgoing_mail).order_by(outgoing_mail.c.id.desc()).limit(1)).one()
    assert (last.kind, last.recipient) == ("committee_message", "laege@klinik.example")
    letter = message_from_bytes(last.raw, policy=policy.default)
    assert isinstance(letter, EmailMessage)
    assert [part.get_filename() for part in letter.iter_attachments()] == ["XDIS91.xml"]


def test_a_medcom_reply_naming_our_reference_joins_the_thread(flow: Flow) -> None:
    (referral,) = flow.referrals(flow.submit(fixture("REF01_1.xml")))
    reply = fixture("DIS91_1.xml").replace(
        b"<Subject>Forunders\xf8gelse</Subject>", f"<Subject>Svar PK-{referral.id:06d}</Subject>".encode()
    )
    message_id = flow.submit(reply)
    assert flow.referrals(message_id) == []
    with flow.store.read() as conn:
        (entry,) = conn.execute(select(thread)).all()
        assert conn.execute(
            select(referrals_table.c.unread_reply).where(referrals_table.c.id == referral.id)
        ).scalar_one()
    assert entry.direction == "from_sender" and "Afdeling A har modtaget" in entry.text


def continued(original: bytes, text: str) -> bytes:
    """The sender's next message in the same MedCom conversation: new Bundle.id and MessageHeader.id, the
    same Communication.identifier, and no reference of ours in it."""
    bundle = json.loads(original)
    bundle["id"] = str(uuid.uuid4())
    header = bundle["entry"][0]["resource"]
    header["id"] = str(uuid.uuid4())
    bundle["entry"][0]["fullUrl"] = f"https://medcomfhir.dk/ig/carecommunication/MessageHeader/{header['id']}"
    (communication,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Communication"
    ]
    communication["payload"][0]["contentString"] = text
    return json.dumps(bundle).encode()


def test_a_care_communication_continuing_the_thread_joins_the_referral(flow: Flow) -> None:
    original = fixture("Bundle-R-Tek-K")
    (referral,) = flow.referrals(flow.submit(original))
    message_id = flow.submit(continued(original, "Skolen er nu orienteret."))
    assert flow.referrals(message_id) == []
    with flow.store.read() as conn:
        (entry,) = conn.execute(select(thread)).all()
    assert (entry.referral_id, entry.direction, entry.text) == (
        referral.id,
        "from_sender",
        "Skolen er nu orienteret.",
    )
    (ack,) = flow.answers(message_id)
    assert read_back(ack.body).letters[0].response_code == "ok"


def test_the_same_thread_from_another_sender_is_a_referral_of_its_own(flow: Flow) -> None:
    original = fixture("Bundle-R-Tek-K")
    flow.submit(original)
    message_id = flow.submit(continued(original, "Ny henvendelse."), sender="api:another-epj")
    assert len(flow.referrals(message_id)) == 1
    with flow.store.read() as conn:
        assert conn.execute(select(thread)).all() == []
