"""The flows: the one place where the rooms meet. A message's path, step by step (each a module here):

1. A channel (`mailbox`: SMTP, IMAP, HTTP submission) writes the bytes and an outbox row for `parse` in one
   transaction, and only then acknowledges (SMTP 250, IMAP flag, HTTP 202).
2. `parse` (`flows.parse`): the headers into columns the committee's queue shows; then `route`.
3. `route` (`flows.route`): a MedCom document goes to `flows.route_medcom` (`medcom` parses it, MedCom's rules
   on duplicates and receivers apply, and the answer it prescribes is written); anything else is mail: a
   resend is noted on the first referral, an answer to a committee is put on its thread. What is left is
   decided by `routing` on the message's facts, and the `committee` queue gets the referral, or triage
   does; then `receipt`, and `urgent` when the sender marked it so.
4. `receipt` (`flows.receipt`): the receipt mail (`receipts`), unless RFC 3834 or the rate limit says not
   to; then `send`.
5. `urgent` (`flows.alerts`): the committee is told at once; then `send`.
6. `send` (`flows.send`): one outgoing mail through the relay, retried with backoff.

Beside the message's path: the periodic `deadline_check` (`flows.alerts.run_check`, `deadlines` deciding what
is late) raises and clears alerts, whose mails the `alert` and `alert_resolved` steps write; the daily
`purge` (`flows.purge`, `retention` deciding what is due) removes content whose purpose has lapsed; a
committee's message to a sender (the API, with `Parts.medcom` as its MedCom writer) goes out by `send` too.

The step and job names are in `postkasse.kinds`; `build` makes the step table the edges (daemon, cli,
tasks, workers) run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from postkasse import kinds
from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.deadlines.alerts import Alerter
from postkasse.deadlines.rules import RuleBook, rulebook
from postkasse.flows.alerts import SendAlert, SendResolved, UrgentAlert, run_check
from postkasse.flows.parse import ParseHeaders
from postkasse.flows.purge import run_purge
from postkasse.flows.receipt import SendReceipt
from postkasse.flows.route import RouteMessage
from postkasse.flows.route_medcom import MedcomIntake
from postkasse.flows.send import SendMail, relay
from postkasse.pipeline import Job, Next, Pipeline, Step
from postkasse.retention.purge import Policy
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import AgeRange
from postkasse.routing.router import Router
from postkasse.routing.senders import SenderKinds
from postkasse.store import Store

FIRST_STEP = kinds.PARSE


@dataclass(frozen=True)
class Parts:
    """What the steps are made of, made once from the settings; the edges share what they need of it (the
    committee API its municipalities, rules and MedCom writer) rather than reach into a step for it."""

    municipalities: Municipalities
    rules: RuleBook  # the rules routing stamps on each referral are the ones its alerts are judged by
    senders: SenderKinds
    router: Router
    medcom: MedcomIntake  # reads MedCom documents, and writes MedCom messages to senders
    alerter: Alerter


def parts(settings: Settings) -> Parts:
    municipalities = Municipalities.load(settings.routing.municipalities_file)
    rules = rulebook(settings.deadlines)
    senders = SenderKinds(settings.routing.sender_kinds.model_dump().items())
    return Parts(
        municipalities=municipalities,
        rules=rules,
        senders=senders,
        router=Router(municipalities, AgeRange(settings.routing.min_age, settings.routing.max_age)),
        medcom=MedcomIntake(settings.medcom, rules, senders, settings.outbound.from_address),
        alerter=Alerter(
            rules, municipalities, settings.outbound.from_address, settings.deadlines.operations_address
        ),
    )


def build(settings: Settings, store: Store, clock: Clock, made: Parts | None = None) -> Pipeline:
    """The pipeline: every step, by the kind name its outbox rows and broker messages carry."""
    made = made or parts(settings)
    steps: list[Step] = [
        ParseHeaders(),
        RouteMessage(made.router, made.rules, made.senders, made.medcom),
        SendReceipt(
            made.municipalities,
            settings.outbound.from_address,
            [*settings.smtp.accept_addresses, *(account.address for account in settings.imap)],
            settings.receipts.max_per_sender_per_hour,
        ),
        UrgentAlert(made.alerter),
        SendAlert(made.alerter),
        SendResolved(made.alerter),
        SendMail(
            relay(settings),
            settings.outbound.from_address,
            timedelta(seconds=settings.outbound.claim_lease_seconds),
        ),
    ]
    return Pipeline(steps, store, clock, timedelta(seconds=settings.outbox.lease_seconds))


def periodic(pipeline: Pipeline, retention: Policy) -> dict[str, Job]:
    """The jobs the daemon schedules: the deadline check, every deadlines.check_interval_seconds (with the
    alerter the pipeline's alert steps use), and the retention purge, every retention.interval_hours."""
    checker = pipeline.step(SendAlert).alerter

    def purge() -> list[Next]:
        run_purge(pipeline.store, pipeline.clock.now(), retention)
        return []

    return {kinds.DEADLINE_CHECK: lambda: run_check(pipeline, checker), kinds.PURGE: purge}
