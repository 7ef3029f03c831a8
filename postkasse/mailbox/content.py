"""A stored mail read without ever raising: every defect in its content becomes a fact, not an exception.

Anyone who reaches the port decides what the bytes hold, so the pipeline and the API read them through
this one parser: unknown or broken charsets fall back to UTF-8 and Windows-1252 (latin-1 as the last
resort), encoded words that do not decode are kept as written, parts nested deeper than `MAX_NESTING`
are kept whole but not walked, and text is cut down to what both stores can hold. Each fallback leaves a
plain Danish sentence in `Mail.notes`, so the referral says what could not be read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.errors import MessageDefect
from email.feedparser import BytesFeedParser
from email.header import Header, decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from html import unescape
from typing import Any

from postkasse.store.messages import storable

# Real mail nests a few levels (a forward inside a reply inside a forward); a thousand levels is an attack
# on the parser's recursion. Deeper parts stay in the message as opaque bytes.
MAX_NESTING = 20
# Why a part has no readable name, and what it is called instead.
SAFE_NAME = "vedhaeftning-{n}.bin"

TOO_DEEP = "Beskeden er indlejret for dybt; de inderste dele er ikke læst."
UNKNOWN_CHARSET = "Tegnsættet for beskedens tekst kendes ikke; teksten er læst som UTF-8 eller Windows-1252."
UNREADABLE = "Beskedens opbygning kunne ikke læses."
WRONG_CHARSET = "Teksten passer ikke til sit angivne tegnsæt; den er læst som UTF-8 eller Windows-1252."

_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_TAG = re.compile(r"<[^>]+>")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\\ufffd]|=\?")


class NestingTooDeep(MessageDefect):
    """A multipart or message part deeper than MAX_NESTING: read as one opaque part."""


class Part(EmailMessage):
    """EmailMessage's body and attachment rules over compat32's plain-string headers: compat32 parses in a
    tenth of the time and never runs the structured header parser on hostile values."""

    def is_attachment(self) -> bool:
        return self.get_content_disposition() == "attachment"


class _BoundedParser(BytesFeedParser):
    """The standard feed parser, except that a part nested too deep is not opened: the parser recurses
    once per level and would exhaust the stack."""

    too_deep = False

    def _parse_headers(self, lines: list[str]) -> None:
        super()._parse_headers(lines)  # type: ignore[misc]
        current: Part = self._cur  # type: ignore[attr-defined]
        depth = len(self._msgstack)  # type: ignore[attr-defined]
        if depth > MAX_NESTING and current.get_content_maintype() in ("multipart", "message"):
            current.replace_header("Content-Type", "application/octet-stream")
            current.defects.append(NestingTooDeep())
            self.too_deep = True


@dataclass
class Mail:
    message: Part
    notes: list[str] = field(default_factory=list)
    unreadable: bool = False  # the structure or the text could not be read at all

    def note(self, sentence: str) -> None:
        if sentence not in self.notes:
            self.notes.append(sentence)

    def header(self, name: str) -> str | None:
        """A header's value as readable text, or None when the mail has no such header."""
        return readable(self.message.get(name))

    def text(self) -> str:
        """The readable text: the plain part, or the HTML part without its tags; empty if there is none."""
        try:
            body = self.message.get_body(preferencelist=("plain", "html"))
            payload = body.get_payload(decode=True) if body is not None else None
        except Exception:  # the email package trips over some structures (a multipart holding a string)
            self.unreadable = True
            self.note(UNREADABLE)
            return ""
        if body is None or not isinstance(payload, bytes):
            return ""
        content = self.decode(payload, body.get_content_charset()).replace("\r\n", "\n")
        if body.get_content_type() == "text/html":
            content = unescape(_TAG.sub(" ", re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\n", content)))
        return storable(content)

    def decode(self, payload: bytes, charset: str | None) -> str:
        """Text in its declared charset; undeclared 8-bit text is tried as UTF-8, then Windows-1252.

        A charset Python does not know (or one that fails on the text) is a defect noted, not an error."""
        if charset and charset not in ("us-ascii", "ascii"):
            try:
                return payload.decode(charset)
            except LookupError:
                self.note(UNKNOWN_CHARSET)
            except Exception:  # a codec may raise anything on hostile bytes; it just cannot read them
                self.note(WRONG_CHARSET if _known(charset) else UNKNOWN_CHARSET)
        return decode_text(payload)

    def attachments(self) -> list[dict[str, Any]]:
        """Each attachment's name, type and size; a name that cannot be read safely gets a made-up one."""
        found: list[dict[str, Any]] = []
        try:
            for number, part in enumerate(self.message.iter_attachments(), start=1):
                payload = part.get_payload(decode=True)
                found.append(
                    {
                        "filename": _filename(part, number),
                        "content_type": part.get_content_type(),
                        "size": len(payload) if isinstance(payload, bytes) else 0,
                    }
                )
        except Exception:  # a structure the email package cannot walk: the ones found so far are shown
            self.note(UNREADABLE)
        return found

    def attachment(self, number: int) -> tuple[str, str, bytes] | None:
        """The `number`th attachment (from 1, as `attachments` counts): a safe name, its type, its bytes."""
        try:
            for at, part in enumerate(self.message.iter_attachments(), start=1):
                if at == number:
                    payload = part.get_payload(decode=True)
                    name = _filename(part, number) or SAFE_NAME.format(n=number)
                    return name, part.get_content_type(), payload if isinstance(payload, bytes) else b""
        except Exception:  # a structure the email package cannot walk: no such attachment to give
            self.note(UNREADABLE)
        return None


def read(raw: bytes) -> Mail:
    """Parse a stored message, bounded in depth; a defect becomes a note, never an exception."""
    parser = _BoundedParser(_factory=Part, policy=policy.compat32)
    try:
        parser.feed(raw)
        message = parser.close()
    except Exception:  # nothing but the bytes is involved: whatever fails here is the content
        headers = BytesHeaderParser(_class=Part, policy=policy.compat32).parsebytes(raw)
        assert isinstance(headers, Part)
        return Mail(headers, [UNREADABLE], unreadable=True)
    assert isinstance(message, Part)
    mail = Mail(message)
    if parser.too_deep:
        mail.note(TOO_DEEP)
    return mail


def decode_text(payload: bytes) -> str:
    for candidate in ("utf-8", "windows-1252"):
        try:
            return payload.decode(candidate)
        except UnicodeDecodeError:
            continue
    return payload.decode("latin-1")


def readable(value: Any) -> str | None:
    """A header as readable text: RFC 2047 words decoded, raw 8-bit kept as well as it goes, a word that
    does not decode kept as written, and nothing the stores cannot hold."""
    if value is None:
        return None
    if isinstance(value, Header):  # compat32's form of a header with raw 8-bit bytes
        text = "".join(
            decode_text(chunk) if isinstance(chunk, bytes) else chunk for chunk, _ in decode_header(value)
        )
    else:
        text = str(value)
    text = _FOLD.sub("", text)
    try:
        decoded = str(make_header(decode_header(text)))
    except Exception:  # one bad word: decode the others on their own
        decoded = _WORD.sub(_word, text)
    return storable(decoded)


def _word(match: re.Match[str]) -> str:
    try:
        return str(make_header(decode_header(match.group(0))))
    except Exception:  # base64 that is not, a charset that is not: the word stays as the sender wrote it
        return match.group(0)


def _known(charset: str) -> bool:
    try:
        "".encode(charset)
    except Exception:  # unknown, or a name Python's codec registry refuses (a NUL in it)
        return False
    return True


def _filename(part: Part, number: int) -> str | None:
    """The attachment's name for display and saving; a broken or unsafe one is replaced, a missing one
    stays missing."""
    try:
        raw = part.get_filename()
    except Exception:  # RFC 2231 parameters in a charset that does not exist
        return SAFE_NAME.format(n=number)
    if raw is None:
        return None
    name = readable(raw) or ""
    if not name.strip() or _UNSAFE_NAME.search(name) or name.strip(". ") == "":
        return SAFE_NAME.format(n=number)
    return name
