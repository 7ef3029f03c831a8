"""When not to answer automatically (RFC 3834 section 2), so receipts never start a mail loop."""

from __future__ import annotations

from collections.abc import Collection
from email.message import Message

from postkasse.receipts.compose import address

BULK_PRECEDENCE = {"bulk", "list", "junk"}
DAEMON_LOCALPARTS = {"mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply", "do-not-reply"}


def refusal(envelope_sender: str, headers: Message, own_addresses: Collection[str]) -> str | None:
    """The reason not to send a receipt, or None when one may be sent."""
    sender = envelope_sender.strip().strip("<>").lower()
    if not sender:
        return "null_sender"
    if "@" not in sender:
        return "not_an_address"  # e.g. a document submitted over the API: its answer waits to be fetched
    if address(sender) is None:
        return "not_an_address"  # a line break, NUL or space in it: no header or relay command may hold it
    if sender in {a.lower() for a in own_addresses}:
        return "own_address"
    if sender.partition("@")[0] in DAEMON_LOCALPARTS or sender.partition("@")[0].startswith("owner-"):
        return "mailer_daemon"
    auto = str(headers.get("Auto-Submitted", "no")).split(";")[0].strip().lower()
    if auto != "no":
        return "auto_submitted"
    if str(headers.get("Precedence", "")).strip().lower() in BULK_PRECEDENCE:
        return "bulk_precedence"
    if headers.get("List-Id") or headers.get("List-Unsubscribe"):
        return "mailing_list"
    return None
