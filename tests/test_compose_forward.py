"""The committee forwards a referral to a municipal unit: a cover letter without CPR, the original message
byte for byte, the action plan as PDF when there is one."""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage, Message

import pytest

from postkasse.receipts import compose

REFERENCE = "PK-000123"
CPR = "010118-1234"
DUE = datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # 00:30 on 25 October in Copenhagen (summer time)
PLAN = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"

PLAIN = (
    b"From: Laege <laege@example.org>\r\nTo: postkasse@example.dk\r\nSubject: Henvisning\r\n"
    b"Message-ID: <a1@example.org>\r\n\r\nBarnet med CPR " + CPR.encode() + b" henvises.\r\n"
)
UTF8 = (
    b"From: =?utf-8?q?S=C3=B8ren?= <s@example.org>\r\nSubject: Henvisning\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + f"Søren Ærø, CPR {CPR}, bor på Åvej 1 i Næstved.\r\nÆØÅ æøå\r\n".encode()
)
LONG_LINE = b"From: a@example.org\r\nSubject: lang\r\n\r\n" + b"x" * 2000 + b"\r\n" + CPR.encode() + b"\r\n"
NUL_AND_LF = b"From: a@example.org\nSubject: nul\n\nf\xf8r\x00efter\nbare LF\rbare CR\n" + CPR.encode()


def forward(original: bytes = PLAIN, **overrides: object) -> EmailMessage:
    values: dict[str, object] = {
        "from_address": "postkasse@example.dk",
        "to": "ppr@sikker.naestved.dk",
        "reference": REFERENCE,
        "committee": "Koordinationsudvalget i Næstved",
        "unit": "PPR Næstved",
        "note": "Skolen har bedt om en hurtig vurdering.",
        "due": DUE,
        "original": original,
        "thread": [
            ("2026-10-20T08:00:00+00:00", "to_sender", "Har barnet været udredt før?"),
            ("2026-10-21T09:15:00+00:00", "from_sender", "Nej, aldrig."),
        ],
        "plan_pdf": None,
    }
    values.update(overrides)
    return compose.forward(**values)  # type: ignore[arg-type]


def relayed(mail: EmailMessage) -> EmailMessage:
    """The mail as the relay receives it (outgoing stores `as_bytes(policy=SMTP)`), parsed back."""
    parsed = email.message_from_bytes(mail.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def attachment(mail: EmailMessage, content_type: str) -> EmailMessage | None:
    found = [p for p in mail.iter_attachments() if p.get_content_type() == content_type]
    assert len(found) <= 1
    return found[0] if found else None


def original_bytes(part: Message) -> bytes:
    """The raw bytes of the message/rfc822 attachment; the parser hands back a sub-message whose body is
    the base64 text (it has no header lines: base64 has no colon), so decode that."""
    assert part["Content-Transfer-Encoding"] == "base64"
    payload = part.get_payload()
    if isinstance(payload, list):
        (inner,) = payload
        assert not inner.keys()
        payload = inner.get_payload()
    assert isinstance(payload, str)
    return base64.b64decode(payload)


def cover(mail: EmailMessage) -> str:
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize(
    "original", [PLAIN, UTF8, LONG_LINE, NUL_AND_LF], ids=["crlf", "utf8", "long", "nul"]
)
def test_the_original_survives_the_relay_byte_for_byte(original: bytes) -> None:
    mail = relayed(forward(original))
    part = attachment(mail, "message/rfc822")
    assert part is not None
    assert part.get_filename() == f"henvisning-{REFERENCE}.eml"
    assert part.get_param("name") == f"henvisning-{REFERENCE}.eml"
    assert original_bytes(part) == original


@pytest.mark.parametrize(
    "original", [PLAIN, UTF8, LONG_LINE, NUL_AND_LF], ids=["crlf", "utf8", "long", "nul"]
)
def test_the_mail_itself_is_fit_for_smtp(original: bytes) -> None:
    raw = forward(original, plan_pdf=PLAN).as_bytes(policy=email.policy.SMTP)
    assert b"\x00" not in raw
    lines = raw.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert max(len(line) for line in lines) <= 998


def test_the_plan_is_attached_only_when_given() -> None:
    assert attachment(relayed(forward()), "application/pdf") is None
    assert f"handleplan-{REFERENCE}.pdf" not in cover(relayed(forward()))
    mail = relayed(forward(plan_pdf=PLAN))
    part = attachment(mail, "application/pdf")
    assert part is not None
    assert part.get_filename() == f"handleplan-{REFERENCE}.pdf"
    assert part.get_content() == PLAN
    assert f"handleplan-{REFERENCE}.pdf" in cover(mail)
    assert attachment(mail, "message/rfc822") is not None


def test_subject_and_headers() -> None:
    mail = relayed(forward())
    # Python folds the long subject before the encoded word as "i \r\n =?utf-8?q?N=C3=A6stved?=", which
    # unfolds with two spaces (a stdlib quirk that committee_message shares); the words are what matter.
    subject = " ".join(mail["Subject"].split())
    assert subject == f"Videresendt henvisning [{REFERENCE}] fra Koordinationsudvalget i Næstved"
    assert mail["To"] == "ppr@sikker.naestved.dk"
    assert mail["Message-ID"].endswith("@example.dk>")
    # The committee's act, like committee_message: not an automatic mail.
    assert mail["Auto-Submitted"] is None
    assert mail["X-Auto-Response-Suppress"] is None


def test_the_cover_letter_says_what_the_unit_needs() -> None:
    text = cover(relayed(forward()))
    assert "PPR Næstved" in text
    assert REFERENCE in text
    assert "Skolen har bedt om en hurtig vurdering." in text
    assert "25-10-2026 kl. 00:30" in text  # the deadline in Copenhagen time, as the receipts write it
    assert "vedhæftet uændret" in text
    asked = text.index("Til afsender, 20-10-2026 kl. 10:00:")
    answered = text.index("Fra afsender, 21-10-2026 kl. 11:15:")
    assert asked < text.index("Har barnet været udredt før?") < answered < text.index("Nej, aldrig.")
    assert text.rstrip().endswith("hvis du svarer.")


def test_the_cover_letter_without_note_deadline_or_thread() -> None:
    text = cover(relayed(forward(note=None, due=None, thread=[])))
    assert "Bemærkning" not in text
    assert "senest" not in text
    assert "ikke været korrespondance" in text


@pytest.mark.parametrize(
    "original", [PLAIN, UTF8, LONG_LINE, NUL_AND_LF], ids=["crlf", "utf8", "long", "nul"]
)
def test_the_cover_letter_does_not_repeat_the_cpr(original: bytes) -> None:
    thread = [("2026-10-21T09:15:00+00:00", "from_sender", f"Det drejer sig om {CPR}, se vedhæftede.")]
    mail = relayed(forward(original, note=f"CPR {CPR.replace('-', '')} er tjekket.", thread=thread))
    text = cover(mail)
    assert CPR not in text and CPR.replace("-", "") not in text
    assert "Det drejer sig om [CPR-nr. udeladt], se vedhæftede." in text
    assert CPR.encode() in original
    part = attachment(mail, "message/rfc822")
    assert part is not None
    assert original_bytes(part) == original


def test_a_naive_thread_time_is_utc_and_an_unknown_direction_is_refused() -> None:
    text = cover(forward(thread=[("2026-01-05T12:00:00", "to_sender", "Hej")]))
    assert "Til afsender, 05-01-2026 kl. 13:00:" in text
    with pytest.raises(ValueError, match="direction"):
        forward(thread=[("2026-01-05T12:00:00+00:00", "sideways", "Hej")])


def test_a_recipient_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError, match="recipient"):
        forward(to="ppr@example.dk\r\nBcc: x@example.org")
