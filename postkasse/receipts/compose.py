"""The mails postkasse writes: receipts (automatic) and committee messages (written by a person).

Receipts say where the message went and when it is due, in words a clinician understands, with a short
English line; they never carry a CPR number, a name or the original subject.
"""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from postkasse.clock import COPENHAGEN

ENGLISH = (
    "This is an automatic receipt from the central mailbox for children and young people: "
    "your message {reference} was received {received}."
)


def _local(moment: datetime) -> str:
    return moment.astimezone(COPENHAGEN).strftime("%d-%m-%Y kl. %H:%M")


def _base(from_address: str, to: str, subject: str, in_reply_to: str | None) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = from_address
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = format_datetime(datetime.now(COPENHAGEN))
    mail["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2] or "postkasse.localhost")
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
        mail["References"] = in_reply_to
    return mail


def receipt(
    *,
    from_address: str,
    to: str,
    reference: str,
    received_at: datetime,
    destination: str,
    deadline: datetime | None,
    repeated: bool,
    in_reply_to: str | None,
) -> EmailMessage:
    """`destination` is a finished Danish sentence: where the message went, or why it waits for sorting."""
    mail = _base(from_address, to, f"Kvittering for modtagelse [{reference}]", in_reply_to)
    mail["Auto-Submitted"] = "auto-replied"
    mail["X-Auto-Response-Suppress"] = "All"
    lines = [
        "Kvittering fra den fælles digitale postkasse for børn og unge i psykisk mistrivsel.",
        "",
        f"Vi har modtaget din besked {_local(received_at)}. Vores reference: {reference}.",
    ]
    if repeated:
        lines.append("Beskeden var allerede modtaget; den er ikke oprettet igen.")
    lines.append(destination)
    if deadline is not None:
        lines.append(f"Kommunen behandler henvendelsen senest {_local(deadline)}.")
    lines += [
        "",
        f"Skriv {reference} i emnefeltet, hvis du svarer eller skriver om samme barn.",
        "Denne kvittering er sendt automatisk.",
        "",
        ENGLISH.format(
            reference=reference, received=received_at.astimezone(COPENHAGEN).isoformat(timespec="minutes")
        ),
    ]
    mail.set_content("\n".join(lines) + "\n")
    return mail


def committee_message(
    *, from_address: str, to: str, reference: str, committee: str, text: str, in_reply_to: str | None
) -> EmailMessage:
    mail = _base(from_address, to, f"Besked fra {committee} [{reference}]", in_reply_to)
    footer = (
        f"\n\n-- \nSendt via den fælles digitale postkasse. Svar på denne mail og behold [{reference}] i "
        "emnefeltet, så kommer svaret med på sagen."
    )
    mail.set_content(text.rstrip() + footer + "\n")
    return mail
