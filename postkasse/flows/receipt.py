"""The `receipt` step: one receipt per accepted message, unless RFC 3834 or the rate limit says not to.

A resent message (same Message-ID, same sender) gets the first message's reference again. The receipt is
written to the store with the step; the `send` step delivers it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesHeaderParser
from email.utils import make_msgid
from typing import Any

from sqlalchemy import Connection, Row, select

from postkasse import kinds, metrics
from postkasse.committee.correspondence import reply_in_thread
from postkasse.committee.referrals import for_message
from postkasse.pipeline import Follow
from postkasse.receipts import compose, outgoing
from postkasse.receipts.autoreply import refusal
from postkasse.reference import reference
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import TRIAGE_TEXT
from postkasse.store.messages import first_copy, header_block, row_of
from postkasse.store.schema import referrals

_HEADERS = BytesHeaderParser(policy=policy.compat32)


class SendReceipt:
    name = kinds.RECEIPT
    max_attempts = 5
    min_backoff = timedelta(seconds=2)
    max_backoff = timedelta(minutes=2)

    def __init__(
        self,
        municipalities: Municipalities,
        from_address: str,
        own_addresses: Collection[str],
        max_per_sender_per_hour: int,
    ) -> None:
        self.municipalities = municipalities
        self.from_address = from_address
        self.own = {a.lower() for a in (*own_addresses, from_address)}
        self.per_hour = max_per_sender_per_hour

    def run(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        if outgoing.receipt_for(conn, message_id) is not None:
            return ()
        message = row_of(conn, message_id)
        headers = _HEADERS.parsebytes(header_block(message.raw))  # RFC 3834 reads headers only
        reason = refusal(message.mail_from, headers, self.own)
        if (
            reason is None
            and outgoing.sent_recently(conn, "receipt", message.mail_from, now - timedelta(hours=1))
            >= self.per_hour
        ):
            reason = "rate_limited"
        if reason is not None:
            outgoing.suppress(
                conn,
                "receipt",
                reason,
                recipient=message.mail_from,
                answers_message=message_id,
                message_id_header=make_msgid(domain="suppressed.postkasse"),
                now=now,
            )
            metrics.MAIL_SUPPRESSED.labels(reason).inc()
            return ()
        referral_id, destination, deadline, repeated = self._what_happened(conn, message)
        mail = compose.receipt(
            from_address=self.from_address,
            to=message.mail_from,
            reference=reference(referral_id),
            received_at=message.received_at,
            destination=destination,
            deadline=deadline,
            repeated=repeated,
            in_reply_to=message.message_id,
        )
        outgoing_id = outgoing.add(
            conn,
            "receipt",
            mail,
            recipient=message.mail_from,
            referral_id=referral_id,
            answers_message=message_id,
            now=now,
        )
        return [(kinds.SEND, outgoing_id)]

    def give_up(self, conn: Connection, message_id: int, now: datetime) -> Sequence[Follow]:
        return ()

    def _committee(self, code: str | None) -> str:
        municipality = self.municipalities.get(code or "")
        return (
            f"{municipality.name}s koordinationsudvalg" if municipality else "kommunens koordinationsudvalg"
        )

    def _what_happened(self, conn: Connection, message: Row[Any]) -> tuple[int, str, datetime | None, bool]:
        message_id: int = message.id
        referral = for_message(conn, message_id)
        repeated = False
        if referral is None:
            reply = reply_in_thread(conn, message_id)
            if reply is not None:
                code = conn.execute(select(referrals.c.municipality).where(referrals.c.id == reply)).scalar()
                return reply, f"Dit svar er lagt på sagen hos {self._committee(code)}.", None, False
            first = first_copy(conn, message)
            referral = for_message(conn, first) if first is not None else None
            if referral is None:
                raise LookupError(f"message {message_id} has not been routed yet")
            repeated = True
        if referral.state == "triage":
            why = TRIAGE_TEXT.get(referral.triage_reason or "", "")
            sentence = (
                f"Beskeden kunne ikke sorteres automatisk og er sendt til manuel sortering. {why}".strip()
            )
        else:
            sentence = f"Beskeden er sendt til {self._committee(referral.municipality)}."
        return referral.id, sentence, referral.due_at, repeated
