"""The deadline flows: the periodic check that raises and clears alerts, and the steps that write their mails
(`alert`, `alert_resolved`) and the one that tells a committee at once of an urgent referral (`urgent`).

What is late, and what the mails say, is `deadlines.alerts.Alerter`'s to know; here it meets the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection

from postkasse import kinds, logs
from postkasse.deadlines.alerts import Alerter
from postkasse.pipeline import Follow, Next, Pipeline

log = logs.get(__name__)


def run_check(pipeline: Pipeline, alerter: Alerter) -> list[Next]:
    """One deadline check: a read, then a short write; returns the mail work to hand to the broker."""
    now = pipeline.clock.now()
    with pipeline.store.read() as conn:
        survey = alerter.survey(conn, now)
    with pipeline.store.write() as conn:
        result = alerter.apply(conn, survey)
        work = pipeline.add(conn, result.follow, now)
    if result.raised or result.resolved:
        log.info("deadline check", raised=len(result.raised), resolved=len(result.resolved))
    return work


class SendAlert:
    """The `alert` step: the mails for one raised alert, to the committee and operations."""

    name = kinds.ALERT
    max_attempts = 5
    min_backoff = timedelta(seconds=2)
    max_backoff = timedelta(minutes=1)

    def __init__(self, alerter: Alerter) -> None:
        self.alerter = alerter

    def run(self, conn: Connection, alert_id: int, now: datetime) -> Sequence[Follow]:
        return self.alerter.mail_raised(conn, alert_id, now)

    def give_up(self, conn: Connection, alert_id: int, now: datetime) -> Sequence[Follow]:
        return ()


class SendResolved(SendAlert):
    """The `alert_resolved` step: the mails saying an alert has cleared."""

    name = kinds.ALERT_RESOLVED

    def run(self, conn: Connection, alert_id: int, now: datetime) -> Sequence[Follow]:
        return self.alerter.mail_resolved(conn, alert_id, now)


class UrgentAlert(SendAlert):
    """The `urgent` step: alert at once about a referral the sender marked urgent."""

    name = kinds.URGENT

    def run(self, conn: Connection, referral_id: int, now: datetime) -> Sequence[Follow]:
        return self.alerter.urgent(conn, referral_id, now)
