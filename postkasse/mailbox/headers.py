"""The `parse` step: read a stored message's headers into columns the rest of the system can query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from typing import Any

from sqlalchemy import Connection, insert

from postkasse.pipeline import Follow
from postkasse.store.messages import raw_of
from postkasse.store.schema import message_headers

_PARSER = BytesHeaderParser(policy=policy.compat32)


class ParseHeaders:
    name = "parse"
    max_attempts = 5
    min_backoff = timedelta(seconds=1)
    max_backoff = timedelta(minutes=5)

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        headers = _PARSER.parsebytes(raw_of(conn, message_id))
        conn.execute(
            insert(message_headers).values(
                message_id=message_id,
                from_header=readable(headers["From"]),
                subject=readable(headers["Subject"]),
                date_header=readable(headers["Date"]),
                content_type=headers.get_content_type(),
                defects=len(headers.defects),
                parsed_at=now,
            )
        )
        return [("route", message_id)]

    def give_up(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        """Headers that cannot be read are no reason not to route: routing reads the message itself."""
        return [("route", message_id)]


def readable(value: Any) -> str | None:
    """A header as readable text: RFC 2047 words decoded, raw 8-bit kept as well as it goes."""
    if value is None:
        return None
    try:
        return str(make_header(decode_header(str(value))))
    except (UnicodeError, LookupError, ValueError):
        return str(value)
