"""The `parse` step: read a stored message's headers into columns the rest of the system can query.

Headers are read with compat32, which never parses a value's structure, and decoded by `readable`, which
never raises: nothing a sender writes can make this step fail."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser

from sqlalchemy import Connection, insert

from postkasse import kinds
from postkasse.mailbox.content import readable
from postkasse.pipeline import Follow
from postkasse.store.messages import header_block, raw_of, storable
from postkasse.store.schema import message_headers

_PARSER = BytesHeaderParser(policy=policy.compat32)
_ROW = insert(message_headers)  # built once: building a statement per call costs more than running it


class ParseHeaders:
    name = kinds.PARSE
    max_attempts = 5
    min_backoff = timedelta(seconds=1)
    max_backoff = timedelta(minutes=5)

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        headers = _PARSER.parsebytes(header_block(raw_of(conn, message_id)))
        conn.execute(
            _ROW,
            {
                "message_id": message_id,
                "from_header": readable(headers["From"]),
                "subject": readable(headers["Subject"]),
                "date_header": readable(headers["Date"]),
                "content_type": storable(headers.get_content_type()),
                "defects": len(headers.defects),
                "parsed_at": now,
            },
        )
        return [(kinds.ROUTE, message_id)]

    def give_up(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        """Headers that cannot be read are no reason not to route: routing reads the message itself."""
        return [(kinds.ROUTE, message_id)]
