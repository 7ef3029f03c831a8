"""The `send` step: deliver one outgoing mail through the relay, retrying with backoff.

Receipts and alerts go out with the null envelope sender (RFC 3834 3.3), so a bounce can never start a loop;
committee messages go out from the mailbox's address so the sender's answer comes back to it.

A mail is claimed for `claim_lease` before it is sent. A redelivered job that finds someone else's live
claim is postponed until the claim runs out, not finished: if the holder died mid-send, the mail is taken
up again then; if it lives, the mail is `sent` by then and the job ends. The lease must outlast any live
send (the settings ask for many times the relay timeout), or a slow send could be sent twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection

from postkasse import errors, kinds, logs, metrics
from postkasse.config import Settings
from postkasse.pipeline import Follow, Postponed
from postkasse.receipts import outgoing
from postkasse.receipts.relay import Outbound, PermanentFailure, Pickup, Relay
from postkasse.store import Store

log = logs.get(__name__)

# Outgoing mail kinds (not step kinds) sent with the null envelope sender: nothing may answer them.
AUTOMATIC = ("receipt", "alert", "medcom_answer")


def relay(settings: Settings) -> Outbound:
    """The outbound relay the settings name; with none, the pickup directory."""
    out = settings.outbound
    if not out.host:
        return Pickup(out.pickup_dir)
    return Relay(
        out.host,
        out.port,
        out.tls,
        out.user,
        out.password.get_secret_value(),
        out.ca_file,
        out.timeout_seconds,
    )


class SendMail:
    name = kinds.SEND
    max_attempts = 10
    min_backoff = timedelta(seconds=5)
    max_backoff = timedelta(minutes=15)

    def __init__(self, relay: Outbound, from_address: str, claim_lease: timedelta) -> None:
        self.relay = relay
        self.from_address = from_address
        self.claim_lease = claim_lease

    def deliver(self, store: Store, outgoing_id: int, now: datetime) -> None:
        with store.write() as conn:
            mail = outgoing.claim(conn, outgoing_id, now, self.claim_lease)
            held = None if mail is not None else outgoing.held_until(conn, outgoing_id, now)
        if held is not None:
            raise Postponed(held)  # being sent by someone else, who may have died: look again when it ends
        if mail is None:
            return  # sent, failed or suppressed
        envelope_sender = "" if mail.kind in AUTOMATIC else self.from_address
        try:
            self.relay.send(envelope_sender, mail.recipient, mail.raw)
        except PermanentFailure as exc:
            error = errors.describe(exc)
            with store.write() as conn:
                outgoing.mark(conn, outgoing_id, "failed", now, error)
            metrics.MAIL_FAILED.labels(mail.kind).inc()
            log.error("outgoing mail refused for good", outgoing_id=outgoing_id, kind=mail.kind, error=error)
            return
        except Exception as exc:
            with store.write() as conn:
                outgoing.mark(conn, outgoing_id, "pending", now, errors.describe(exc))
            raise
        with store.write() as conn:
            outgoing.mark(conn, outgoing_id, "sent", now)
        metrics.MAIL_SENT.labels(mail.kind).inc()

    def run(self, conn: Connection, outgoing_id: int, now: datetime) -> Sequence[Follow]:
        return ()

    def give_up(self, conn: Connection, outgoing_id: int, now: datetime) -> Sequence[Follow]:
        outgoing.mark(conn, outgoing_id, "failed", now)
        metrics.MAIL_FAILED.labels("unknown").inc()
        log.error(
            "outgoing mail failed after its last attempt; ops can see it in triage", outgoing_id=outgoing_id
        )
        return ()
