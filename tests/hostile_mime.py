"""Hostile and careless mail, generated: broken charsets, encodings, encoded words, structures and bodies.

Each case is one message as bytes, named by the defects it combines, so a failure says which mix broke.
The choices are crossed with a seeded random generator: the same cases on every run, many combinations.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

ROUTABLE = b"CPR: 010215-4123\r\nAdresse: Skolevej 12, 8382 Hinnerup\r\n"  # a child of the demo registry


@dataclass(frozen=True)
class MimeCase:
    name: str
    raw: bytes


Choice = tuple[str, Callable[[], bytes]]


def _long(n: int) -> bytes:
    return b"x" * n


FROM: list[Choice] = [
    ("from-plain", lambda: b"From: Laege <laege@klinik.example>\r\n"),
    ("from-bad-b64-name", lambda: b"From: =?utf-8?B?!!!notbase64===?= <laege@klinik.example>\r\n"),
    ("from-8bit-latin1", lambda: "From: Læge Ørsted <laege@klinik.example>\r\n".encode("latin-1")),
    ("from-missing", lambda: b""),
    ("from-twice", lambda: b"From: a@x.example\r\nFrom: b@y.example\r\n"),
    ("from-nul", lambda: b"From: La\x00ege <laege@klinik.example>\r\n"),
    ("from-nul-word", lambda: b"From: =?utf-8?B?AA==?= <laege@klinik.example>\r\n"),
    ("from-garbage", lambda: b'From: <<<@@@>>> ;;; "unterminated\r\n'),
]

SUBJECT: list[Choice] = [
    ("subject-plain", lambda: b"Subject: Henvisning\r\n"),
    ("subject-bad-b64", lambda: b"Subject: =?utf-8?B?@@@###?=\r\n"),
    ("subject-nul-word", lambda: b"Subject: =?utf-8?B?AA==?=\r\n"),
    ("subject-unknown-charset", lambda: b"Subject: =?x-no-such?Q?Henvisning?=\r\n"),
    ("subject-nul-charset", lambda: b"Subject: =?ut\x00f-8?Q?Henvisning?=\r\n"),
    ("subject-bad-qp", lambda: b"Subject: =?iso-8859-1?Q?=ZZ=Q?=\r\n"),
    ("subject-huge", lambda: b"Subject: " + _long(20000) + b"\r\n"),
    ("subject-8bit-utf8", lambda: "Subject: Henvisning vedr. Ærø\r\n".encode()),
    ("subject-bare-cr", lambda: b"Subject: Hen\rvisning\r\n"),
    ("subject-missing", lambda: b""),
    ("subject-folded-empty", lambda: b"Subject:\r\n \r\n \r\n"),
    ("subject-cpr-word", lambda: b"Subject: =?utf-8?B?Q1BSOiAwMTAyMTUtNDEyMw==?=\r\n"),
]

CHARSET: list[Choice] = [
    ("cs-utf8", lambda: b"utf-8"),
    ("cs-undefined", lambda: b"undefined"),
    ("cs-nul", lambda: b"utf\x00-8"),
    ("cs-empty", lambda: b'""'),
    ("cs-bogus", lambda: b"x-bogus-42"),
    ("cs-utf7", lambda: b"utf-7"),
    ("cs-latin1", lambda: b"latin1"),
    ("cs-quoted-garbage", lambda: b'"\xff\xfe"'),
]

ENCODING: list[Choice] = [
    ("cte-none", lambda: b""),
    ("cte-8bit", lambda: b"8bit"),
    ("cte-base64", lambda: b"base64"),
    ("cte-qp", lambda: b"quoted-printable"),
    ("cte-uuencode", lambda: b"x-uuencode"),
    ("cte-bogus", lambda: b"x-bogus"),
]

BODY: list[Choice] = [
    ("body-routable", lambda: ROUTABLE),
    ("body-no-cpr", lambda: b"Hej, se vedlagte.\r\n"),
    ("body-nul", lambda: b"CPR: 010215-4123\x00\x00\r\nAdresse: Skolevej 12, 8382 Hinnerup\r\n"),
    ("body-binary", lambda: bytes(random.Random(7).randrange(256) for _ in range(3000))),
    ("body-long-line", lambda: ROUTABLE + _long(50000) + b"\r\n"),
    ("body-broken-b64", lambda: b"Q1BSOiAwMTAyMTUtNDEy!!!***\r\n===\r\n"),
    ("body-broken-qp", lambda: b"CPR: 010215=2D4123=\r\n=ZZ=\r\n=\r\n"),
    ("body-latin1", lambda: "Adresse: Søndergade 4, 8000 Aarhus C\r\nCPR 150312-4218\r\n".encode("latin-1")),
    ("body-floor-side", lambda: b"cpr 010215 4123\r\nadresse:\r\nskolevej 12, 2. th.\r\n8382 hinnerup\r\n"),
    ("body-empty", lambda: b""),
]

FILENAME: list[Choice] = [
    ("fn-plain", lambda: b'filename="henvisning.pdf"'),
    ("fn-bad-2047", lambda: b'filename="=?utf-8?B?!!!?=.pdf"'),
    ("fn-nul-2047", lambda: b'filename="=?utf-8?B?AA==?="'),
    ("fn-bad-2231", lambda: b"filename*=x-bogus''%ZZ%00%ff.pdf"),
    ("fn-2231-nul", lambda: b"filename*=utf-8''a%00b.pdf"),
    ("fn-traversal", lambda: b'filename="../../etc/passwd"'),
    ("fn-huge", lambda: b'filename="' + _long(5000) + b'.pdf"'),
    ("fn-empty", lambda: b'filename=""'),
    ("fn-unterminated", lambda: b'filename="abc'),
    ("fn-8bit", lambda: 'filename="bilag_æøå.pdf"'.encode()),
]

STRUCTURE = (
    "single",
    "attachment",
    "nested-5",
    "nested-60",
    "nested-1000",
    "no-boundary",
    "unclosed",
    "empty-boundary",
    "rfc822-inside",
    "garbage-type",
    "two-types",
    "alternative-empty",
)


def _part(charset: bytes, cte: bytes, body: bytes) -> bytes:
    head = b"Content-Type: text/plain; charset=" + charset + b"\r\n"
    if cte:
        head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    return head + b"\r\n" + body


def _nested(depth: int, leaf: bytes) -> bytes:
    """`depth` multiparts inside each other, the leaf innermost: what a recursive walker cannot survive."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return opening + leaf + closing


def _structured(structure: str, text: bytes, filename: bytes) -> bytes:
    attachment = (
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
        + filename
        + b"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    )
    if structure == "single":
        return text
    if structure == "attachment":
        return (
            b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\n--xx\r\n'
            + text
            + b"\r\n--xx\r\n"
            + attachment
            + b"\r\n--xx--\r\n"
        )
    if structure.startswith("nested-"):
        return _nested(int(structure.split("-")[1]), text)
    if structure == "no-boundary":
        return b"Content-Type: multipart/mixed\r\n\r\n--xx\r\n" + text + b"\r\n--xx--\r\n"
    if structure == "unclosed":
        return (
            b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\n--xx\r\n'
            + text
            + b"\r\n--xx\r\n"
            + attachment
        )
    if structure == "empty-boundary":
        return b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n' + text + b"\r\n----\r\n"
    if structure == "rfc822-inside":
        inner = b"From: x@y.example\r\nSubject: indre\r\n" + text
        return (
            b'Content-Type: multipart/mixed; boundary="xx"\r\n\r\n--xx\r\n'
            b"Content-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--xx--\r\n"
        )
    if structure == "garbage-type":
        return b"Content-Type: text/\x00;;;===\r\n\r\n" + text.split(b"\r\n\r\n", 1)[-1]
    if structure == "two-types":
        return b"Content-Type: multipart/mixed; boundary=zz\r\n" + text
    if structure == "alternative-empty":
        return b'Content-Type: multipart/alternative; boundary="aa"\r\n\r\n--aa--\r\n'
    raise ValueError(structure)


def cases(count: int, seed: int = 11) -> list[MimeCase]:
    """`count` messages, each a different mix of defects; every header and structure choice appears."""
    rnd = random.Random(seed)
    found: list[MimeCase] = []
    for n in range(count):
        # Walk every choice of the small lists in turn, so each appears, and draw the rest at random.
        sender = FROM[n % len(FROM)]
        subject = SUBJECT[n % len(SUBJECT)]
        structure = STRUCTURE[n % len(STRUCTURE)]
        charset = rnd.choice(CHARSET)
        cte = rnd.choice(ENCODING)
        body = rnd.choice(BODY)
        filename = rnd.choice(FILENAME)
        message_id = (
            b"Message-ID: <" + uuid.UUID(int=rnd.getrandbits(128)).hex.encode() + b"@klinik.example>\r\n"
        )
        head = (
            sender[1]()
            + b"To: postkasse@localhost\r\n"
            + subject[1]()
            + message_id
            + b"MIME-Version: 1.0\r\n"
        )
        text = _part(charset[1](), cte[1](), body[1]())
        raw = head + _structured(structure, text, filename[1]())
        name = "/".join((sender[0], subject[0], structure, charset[0], cte[0], body[0], filename[0]))
        found.append(MimeCase(name, raw))
    return found
