"""Prometheus metrics. Labels carry channels, reasons and kinds, never personal data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_ACCEPTED = Counter(
    "postkasse_messages_accepted_total", "Messages stored and acknowledged", ["channel"]
)
MESSAGES_REJECTED = Counter(
    "postkasse_messages_rejected_total", "Messages or recipients refused, by reason", ["channel", "reason"]
)
COMMIT_SECONDS = Histogram(
    "postkasse_store_commit_seconds",
    "Time to write and commit one group of received messages",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
COMMIT_GROUP_SIZE = Histogram(
    "postkasse_store_commit_group_size",
    "Messages written by one commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
SMTP_SESSIONS = Gauge("postkasse_smtp_sessions", "Open SMTP sessions", multiprocess_mode="livesum")
OUTBOX_DISPATCHED = Counter(
    "postkasse_outbox_dispatched_total", "Outbox rows sent to the broker", ["kind", "why"]
)
CHILD_RESTARTS = Counter(
    "postkasse_child_restarts_total",
    "Times a process `serve` started (the pipeline, a further acceptor) exited unasked and was started again",
    ["role"],
)
OUTBOX_DONE = Counter("postkasse_outbox_done_total", "Outbox work completed", ["kind"])
OUTBOX_FAILED = Counter("postkasse_outbox_failed_total", "Outbox work that failed its last attempt", ["kind"])
OUTBOX_ERRORS = Counter("postkasse_outbox_errors_total", "Outbox attempts that raised", ["kind"])
MAIL_SENT = Counter("postkasse_mail_sent_total", "Outgoing mail delivered to the relay", ["kind"])
MAIL_FAILED = Counter("postkasse_mail_failed_total", "Outgoing mail that failed for good", ["kind"])
MAIL_SUPPRESSED = Counter("postkasse_receipts_suppressed_total", "Receipts not sent, by rule", ["reason"])
IMAP_LAST_CYCLE = Gauge(
    "postkasse_imap_last_cycle_timestamp_seconds",
    "When the account's folder was last emptied (a poll or IDLE cycle completed); the daemon's start before",
    ["account"],
    multiprocess_mode="max",
)
IMAP_TAKEN = Counter(
    "postkasse_imap_messages_taken_total", "Messages stored from an IMAP account", ["account"]
)
IMAP_RECOGNISED = Counter(
    "postkasse_imap_messages_recognised_total",
    "Messages found again in an IMAP folder after a crash or failed move, already stored, only moved",
    ["account"],
)
IMAP_FAILED = Counter(
    "postkasse_imap_messages_failed_total",
    "Messages moved to the account's failed folder, by reason",
    ["account", "reason"],
)
IMAP_READING = Gauge(
    "postkasse_imap_reading",
    "1 while this daemon holds the account's lease and reads it; 0 while another daemon does",
    ["account"],
    multiprocess_mode="livemax",
)
IMAP_ERRORS = Counter(
    "postkasse_imap_errors_total", "IMAP sessions ended by an error (followed by a reconnection)", ["account"]
)
