"""The names of the pipeline's steps and periodic jobs, in one place.

Each is stored in outbox rows and carried by broker messages as the dramatiq actor's name, so a name never
changes: a store or a queue written by an earlier release must still find its step."""

from __future__ import annotations

PARSE = "parse"  # a stored message's headers into columns
ROUTE = "route"  # where a message goes: referral, triage, reply on a thread or MedCom refusal
RECEIPT = "receipt"  # the receipt mail to the sender
SEND = "send"  # one outgoing mail through the relay
URGENT = "urgent"  # the committee is told at once of a referral marked urgent
ALERT = "alert"  # the mails for a deadline alert raised
ALERT_RESOLVED = "alert_resolved"  # the mails saying it cleared

STEPS = (PARSE, ROUTE, RECEIPT, SEND, URGENT, ALERT, ALERT_RESOLVED)

DEADLINE_CHECK = "deadline_check"  # the periodic job that raises and clears deadline alerts
PURGE = "purge"  # the periodic job that removes content whose retention period has run out
