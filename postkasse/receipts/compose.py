"""The mails postkasse writes: receipts (automatic), committee messages and forwards (written by a person).

Receipts say where the message went and when it is due, in words a clinician understands, with a short
English line; they never carry a CPR number, a name or the original subject. The values taken from the
incoming mail, its Message-ID and its sender's address, are cleaned first: a line break, a NUL or another
control character in them must not break the header (or fail the mail for good).
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from functools import lru_cache

from postkasse.clock import COPENHAGEN

ENGLISH = (
    "This is an automatic receipt from the central mailbox for children and young people: "
    "your message {reference} was received {received}."
)


# RFC 5322 msg-id: printable ASCII but "<", ">" and space, in angle brackets; room left on a 998-octet line.
_MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>")
# Control characters (C0, DEL, C1), white space and the characters that end an address in a header.
_NOT_IN_ADDRESS = re.compile(r"[\x00-\x20\x7f-\x9f<>(),;\"\\\s]")


def message_id(value: str | None) -> str | None:
    """The first well-formed message id in a header value from incoming mail, for In-Reply-To; None if
    it has none. Control characters are dropped first, so a NUL inside an id does not hide it."""
    found = _MESSAGE_ID.search(re.sub(r"[\x00-\x1f\x7f]", "", value or ""))
    return found.group() if found else None


def address(value: str | None) -> str | None:
    """An envelope address from incoming mail, if it is one a mail can be sent to: local@domain, nothing
    that could end a header or a command (line breaks, NUL, spaces, brackets)."""
    candidate = (value or "").strip()
    if candidate.startswith("<") and candidate.endswith(">"):
        candidate = candidate[1:-1]
    local, at, domain = candidate.rpartition("@")
    if not (local and at and domain) or _NOT_IN_ADDRESS.search(candidate):
        return None
    return candidate


class _Headers(HeaderRegistry):
    """The standard header classes, each made once: the standard registry makes a new class for every
    header set, a fifth of the CPU a receipt costs to write (issue 18)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


POLICY = policy.default.clone(header_factory=_Headers())  # the default policy, with the registry above


@lru_cache(maxsize=64)
def _header(name: str, value: str) -> BaseHeader:
    """A header whose value repeats from mail to mail (our own address, the auto-reply markers), parsed
    once; a header is immutable, so one can be set on any number of mails."""
    header: BaseHeader = POLICY.header_factory(name, value)
    return header


def _local(moment: datetime) -> str:
    return moment.astimezone(COPENHAGEN).strftime("%d-%m-%Y kl. %H:%M")


def _base(from_address: str, to: str, subject: str, in_reply_to: str | None) -> EmailMessage:
    recipient = address(to)
    if recipient is None:
        raise ValueError("the recipient is not an address a mail can be sent to")
    mail = EmailMessage(policy=POLICY)
    mail["From"] = _header("From", from_address)
    mail["To"] = recipient
    mail["Subject"] = subject
    mail["Date"] = format_datetime(datetime.now(COPENHAGEN))
    mail["Message-ID"] = make_msgid(domain=from_address.rpartition("@")[2] or "postkasse.localhost")
    thread = message_id(in_reply_to)
    if thread:
        mail["In-Reply-To"] = thread
        mail["References"] = thread
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
    mail["Auto-Submitted"] = _header("Auto-Submitted", "auto-replied")
    mail["X-Auto-Response-Suppress"] = _header("X-Auto-Response-Suppress", "All")
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


# A CPR number (or a replacement number) in free text: six digits, an optional dash, four more.
_CPR_IN_TEXT = re.compile(r"(?<![\dA-Za-z])\d{6} ?-? ?[0-9A-Z]{4}(?![\dA-Za-z])")
_DIRECTIONS = {"to_sender": "Til afsender", "from_sender": "Fra afsender"}


def _without_cpr(text: str) -> str:
    return _CPR_IN_TEXT.sub("[CPR-nr. udeladt]", text)


def _thread_time(when_iso: str) -> str:
    moment = datetime.fromisoformat(when_iso)
    return _local(moment if moment.tzinfo else moment.replace(tzinfo=UTC))  # the store keeps UTC


def _original_part(original: bytes, reference: str) -> EmailMessage:
    """The original message as message/rfc822, byte for byte.

    Always base64: RFC 2046 allows message/rfc822 only 7bit, 8bit or binary, but incoming mail may hold
    lines over 998 octets, bare CR or LF and NUL, which no identity encoding carries through SMTP, and
    the email package would re-serialise a parsed message (and change its bytes). Base64 is accepted by
    the common mail clients and gives back exactly what came in. The payload is stored as text, so the
    generator writes it as it is; its lines end in CRLF as the mail leaves (policy SMTP)."""
    name = f"henvisning-{reference}.eml"
    part = EmailMessage()  # a MIMEPart (no MIME-Version); typeshed wants EmailMessage for attach()
    part["Content-Type"] = f'message/rfc822; name="{name}"'
    part["Content-Disposition"] = f'attachment; filename="{name}"'
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(original).decode("ascii").replace("\n", "\r\n"))
    return part


def forward(
    *,
    from_address: str,
    to: str,
    reference: str,
    committee: str,
    unit: str,
    note: str | None,
    due: datetime | None,
    original: bytes,
    thread: list[tuple[str, str, str]],
    plan_pdf: bytes | None,
) -> EmailMessage:
    """The committee forwards a referral to the municipal unit that takes it over (e.g. PPR): a cover
    letter, the original message unchanged and the action plan as PDF when there is one.

    It is the committee's act, like `committee_message`, so it is not marked Auto-Submitted. It goes to
    the unit's secure mail address; the attachments carry the personal data, the cover letter does not
    repeat a CPR number (one in the note or the thread is left out). `thread` holds (when, direction,
    text) with direction "to_sender" or "from_sender"; a time without a zone is UTC."""
    mail = _base(from_address, to, f"Videresendt henvisning [{reference}] fra {committee}", None)
    lines = [
        f"{committee} har videresendt en henvisning til {unit} via den fælles digitale postkasse for børn og "
        "unge i psykisk mistrivsel.",
        "",
        f"Reference: {reference}",
    ]
    if due is not None:
        lines.append(f"Henvendelsen skal være behandlet senest {_local(due)}.")
    if note is not None and note.strip():
        lines += ["", f"Bemærkning fra {committee}:", _without_cpr(note.strip())]
    lines += ["", f"Den oprindelige henvendelse er vedhæftet uændret (henvisning-{reference}.eml)."]
    if plan_pdf is not None:
        lines.append(f"Handleplanen er vedhæftet som PDF (handleplan-{reference}.pdf).")
    if thread:
        lines += ["", "Korrespondancen med afsenderen indtil nu:"]
        for when_iso, direction, text in thread:
            if direction not in _DIRECTIONS:
                raise ValueError(f"unknown thread direction {direction!r}")
            lines += ["", f"{_DIRECTIONS[direction]}, {_thread_time(when_iso)}:", _without_cpr(text.rstrip())]
    else:
        lines += ["", "Der har ikke været korrespondance med afsenderen."]
    footer = (
        f"\n\n-- \nSendt via den fælles digitale postkasse på vegne af {committee}. Behold [{reference}] i "
        "emnefeltet, hvis du svarer."
    )
    mail.set_content("\n".join(lines) + footer + "\n")
    mail.make_mixed()
    mail.attach(_original_part(original, reference))
    if plan_pdf is not None:
        mail.add_attachment(
            plan_pdf, maintype="application", subtype="pdf", filename=f"handleplan-{reference}.pdf"
        )
    return mail


ALERT_SUBJECTS = {
    ("emptying", "warning"): "Varsel: henvendelse ikke hentet fra postkassen",
    ("emptying", "breach"): "Frist overskredet: postkassen er ikke tømt",
    ("handling", "warning"): "Varsel: behandlingsfristen nærmer sig",
    ("handling", "breach"): "Frist overskredet: henvendelsen er ikke behandlet",
    ("urgent", "urgent"): "Haster: ny henvendelse markeret akut",
    ("urgent", "triage"): "Haster: akut henvendelse venter på manuel sortering",
    ("startup_meeting", "warning"): "Varsel: opstartsmødet i et fælles forløb nærmer sig",
    ("startup_meeting", "breach"): "Frist overskredet: opstartsmødet er ikke holdt",
    ("follow_up_meeting", "warning"): "Varsel: opfølgningsmødet i et fælles forløb nærmer sig",
    ("follow_up_meeting", "breach"): "Frist overskredet: opfølgningsmødet er ikke holdt",
}
ALERT_TEXT = {
    ("emptying", "warning"): "Henvendelsen er ikke hentet fra postkassen. Postkassen skal tømmes dagligt; "
    "fristen for at hente den er {due}.",
    ("emptying", "breach"): "Henvendelsen er ikke hentet fra postkassen, og fristen for daglig tømning "
    "({due}) er overskredet.",
    ("handling", "warning"): "Henvendelsen skal være behandlet senest {due}.",
    ("handling", "breach"): "Henvendelsen skulle have været behandlet senest {due}; fristen er overskredet.",
    ("urgent", "urgent"): "Afsenderen har markeret henvendelsen som akut. Hent og læs den nu.",
    ("urgent", "triage"): "Afsenderen har markeret henvendelsen som akut, men den kunne ikke sorteres "
    "automatisk. Tildel den en kommune nu.",
    (
        "startup_meeting",
        "warning",
    ): "Det fælles forpligtende forløb skal have holdt opstartsmøde senest {due}.",
    (
        "startup_meeting",
        "breach",
    ): "Det fælles forpligtende forløb skulle have holdt opstartsmøde senest {due}; fristen er overskredet.",
    ("follow_up_meeting", "warning"): "Det fælles forpligtende forløb skal have holdt opfølgningsmøde "
    "senest {due}.",
    (
        "follow_up_meeting",
        "breach",
    ): "Det fælles forpligtende forløb skulle have holdt opfølgningsmøde senest "
    "{due}; fristen er overskredet. Holdes mødet ikke, skal der foreligge en skriftlig forklaring.",
}
DEADLINE_NAMES = {
    "emptying": "daglig tømning",
    "handling": "behandlingsfrist",
    "urgent": "akut",
    "startup_meeting": "opstartsmøde",
    "follow_up_meeting": "opfølgningsmøde",
}


def alert(
    *,
    from_address: str,
    to: str,
    reference: str,
    where: str,
    deadline: str,
    level: str,
    due: datetime | None,
    resolved: str | None = None,
) -> EmailMessage:
    """An alert to a committee and operations: the reference and the municipality, never who the child is.

    `resolved` is the sentence saying why the condition cleared; given, the mail says it is over."""
    title = ALERT_SUBJECTS[(deadline, level)]
    if resolved is not None:
        title = f"Løst: {DEADLINE_NAMES[deadline]}"
    mail = _base(from_address, to, f"{title} [{reference}] {where}", None)
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Auto-Response-Suppress"] = "All"
    mail["X-Postkasse-Alert"] = f"{deadline}; level={level}; {'resolved' if resolved else 'raised'}"
    if resolved is not None:
        sentence = resolved
    else:
        sentence = ALERT_TEXT[(deadline, level)].format(due=_local(due) if due else "")
    lines = [
        f"Reference: {reference}",
        f"Kommune: {where}",
        "",
        sentence,
        "",
        "Henvendelsen findes i kommunens kø i den fælles digitale postkasse under referencen ovenfor.",
        "Denne besked er sendt automatisk og indeholder ingen personoplysninger.",
        "",
        f"Automatic alert from the central mailbox: {reference}, {deadline} {level}"
        + (" resolved." if resolved is not None else "."),
    ]
    mail.set_content("\n".join(lines) + "\n")
    return mail


MEDCOM_FILES = {"application/xml": "xml", "application/fhir+xml": "xml", "application/fhir+json": "json"}


def medcom_answer(
    *, from_address: str, to: str, kind: str, body: bytes, content_type: str, in_reply_to: str | None
) -> EmailMessage:
    """A MedCom receipt or acknowledgement (or a refusal in words), attached to a reply, for the sender's
    system to read; it names no patient."""
    mail = _base(from_address, to, f"MedCom {kind}", in_reply_to)
    mail["Auto-Submitted"] = "auto-replied"
    mail.set_content(
        f"Svar fra den fælles digitale postkasse: {kind} er vedhæftet.\n"
        f"Answer from the central mailbox: {kind} attached.\n"
    )
    maintype, _, subtype = content_type.partition("/")
    extension = MEDCOM_FILES.get(content_type, "json")
    mail.add_attachment(body, maintype=maintype, subtype=subtype, filename=f"{kind}.{extension}")
    return mail
