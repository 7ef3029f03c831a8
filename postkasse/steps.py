"""The steps a stored message goes through, built from the settings: parse, route, and so on."""

from __future__ import annotations

from datetime import timedelta

from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.deadlines.alerts import Alerter, SendAlert, SendResolved, UrgentAlert, run_check
from postkasse.mailbox.headers import ParseHeaders
from postkasse.pipeline import Pipeline, Step
from postkasse.receipts.relay import Relay
from postkasse.receipts.send import SendMail
from postkasse.receipts.step import SendReceipt
from postkasse.routing.step import RouteMessage
from postkasse.store import Store
from postkasse.tasks import Job

FIRST_STEP = ParseHeaders.name
DEADLINE_CHECK = "deadline_check"


def relay(settings: Settings) -> Relay:
    out = settings.outbound
    return Relay(
        out.host,
        out.port,
        out.tls,
        out.user,
        out.password.get_secret_value(),
        out.ca_file,
        out.timeout_seconds,
    )


def build(settings: Settings, store: Store, clock: Clock) -> Pipeline:
    route = RouteMessage.from_settings(settings)
    receipt = SendReceipt(
        route.router.municipalities,
        settings.outbound.from_address,
        [*settings.smtp.accept_addresses, *(account.address for account in settings.imap)],
        settings.receipts.max_per_sender_per_hour,
    )
    send = SendMail(
        relay(settings),
        settings.outbound.from_address,
        timedelta(seconds=settings.outbound.claim_lease_seconds),
    )
    # The rules routing stamped on each referral are the ones its alerts are judged by.
    alerts = Alerter(
        route.rules,
        route.router.municipalities,
        settings.outbound.from_address,
        settings.deadlines.operations_address,
    )
    steps: list[Step] = [
        ParseHeaders(),
        route,
        receipt,
        UrgentAlert(alerts),
        SendAlert(alerts),
        SendResolved(alerts),
        send,
    ]
    return Pipeline(steps, store, clock, timedelta(seconds=settings.outbox.lease_seconds))


def periodic(pipeline: Pipeline) -> dict[str, Job]:
    """The jobs the daemon schedules: the deadline check, every deadlines.check_interval_seconds. It uses the
    alerter the pipeline's alert steps use."""
    checker = pipeline.step(SendAlert).alerter
    return {DEADLINE_CHECK: lambda: run_check(pipeline, checker)}
