"""Gauges read from the store when Prometheus scrapes: queues, deadlines, triage, outgoing mail, outbox.

The store is the source of truth and every process sees the same numbers, so any daemon can answer a
scrape; rules aggregate with max. Labels carry municipality codes, states and kinds, never personal data.
A scrape inside `cache_seconds` of the previous one gets the same numbers without asking the store again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select

from postkasse import errors, logs
from postkasse.clock import Clock
from postkasse.committee import forwarding
from postkasse.deadlines.alerts import last_check
from postkasse.deadlines.assess import assess
from postkasse.deadlines.rules import RuleBook
from postkasse.retention import purge
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.store.schema import deadline_alerts, outbox, outgoing_mail, referrals

log = logs.get(__name__)

QUEUE_STATES = ("new", "pulled", "handled")
OPEN_MAIL_STATES = ("pending", "sending", "failed")
DEADLINES = ("emptying", "handling", "startup_meeting", "follow_up_meeting")


def _age(now: datetime, since: datetime | None) -> float:
    return max((now - since).total_seconds(), 0.0) if since else 0.0


class StoreGauges(Collector):
    def __init__(
        self,
        store: Store,
        clock: Clock,
        rules: RuleBook,
        municipalities: Municipalities,
        cache_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.rules = rules
        self.municipalities = municipalities
        self.codes = [m.code for m in municipalities.by_code.values() if m.participating]
        self.cache_seconds = cache_seconds
        self.lock = threading.Lock()
        self.cached: tuple[float, list[GaugeMetricFamily | CounterMetricFamily]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        ok = GaugeMetricFamily("postkasse_store_gauges_ok", "1 when the gauges below could be read")
        with self.lock:
            if self.cached is None or time.monotonic() - self.cached[0] >= self.cache_seconds:
                try:
                    with self.store.read() as conn:
                        self.cached = (time.monotonic(), list(self._read(conn, self.clock.now())))
                except Exception as exc:
                    log.warning("could not read gauges from the store", error=errors.describe(exc))
                    self.cached = None
            families = self.cached[1] if self.cached else []
        ok.add_metric([], 1.0 if families else 0.0)
        return [ok, *families]

    def _read(self, conn: Connection, now: datetime) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        info = GaugeMetricFamily(
            "postkasse_municipality_info",
            "Configured municipalities, for names",
            labels=["municipality", "name"],
        )
        for m in self.municipalities.by_code.values():
            info.add_metric([m.code, m.name], 1.0)
        yield info

        by_state = {(code, state): 0 for code in self.codes for state in QUEUE_STATES}
        for code, state, count in conn.execute(
            select(referrals.c.municipality, referrals.c.state, func.count())
            .where(referrals.c.state != "triage")
            .group_by(referrals.c.municipality, referrals.c.state)
        ):
            by_state[(code, state)] = count
        queue = GaugeMetricFamily(
            "postkasse_referrals",
            "Referrals in a municipality's queue, by state",
            labels=["municipality", "state"],
        )
        for (code, state), count in sorted(by_state.items()):
            queue.add_metric([code, state], count)
        yield queue

        undelivered = GaugeMetricFamily(
            "postkasse_forwards_undelivered",
            "Referrals forwarded to a unit that never got them: no address, or refused for good",
            labels=["municipality"],
        )
        stuck = {code: 0 for code in self.codes}
        for forward in forwarding.undelivered(conn):
            stuck[forward["municipality"]] = stuck.get(forward["municipality"], 0) + 1
        for code, count in sorted(stuck.items()):
            undelivered.add_metric([code], count)
        yield undelivered

        found = assess(conn, now, self.rules, self.codes)
        oldest = GaugeMetricFamily(
            "postkasse_queue_oldest_waiting_seconds",
            "Age of the oldest referral waiting to be pulled (0: the queue is empty)",
            labels=["municipality"],
        )
        for code, emptying in sorted(found.municipalities.items()):
            oldest.add_metric([code], _age(now, emptying.oldest_since))
        yield oldest
        past = {
            level: {(code, deadline): 0 for code in found.municipalities for deadline in DEADLINES}
            for level in ("warning", "breach")
        }
        for finding in found.findings:
            if finding.municipality is None:
                continue  # still in triage: counted by the triage gauges
            key = (finding.municipality, finding.deadline)
            past["warning"][key] = past["warning"].get(key, 0) + 1
            if finding.level == "breach":
                past["breach"][key] = past["breach"].get(key, 0) + 1
        for level, counts in past.items():
            family = GaugeMetricFamily(
                f"postkasse_referrals_past_{level}",
                f"Open referrals and pathways past the {level} point of a deadline",
                labels=["municipality", "deadline"],
            )
            for (code, deadline), count in sorted(counts.items()):
                family.add_metric([code, deadline], count)
            yield family

        waiting, since = conn.execute(
            select(func.count(), func.min(referrals.c.received_at)).where(referrals.c.state == "triage")
        ).one()
        yield GaugeMetricFamily("postkasse_triage_referrals", "Referrals waiting in triage", value=waiting)
        yield GaugeMetricFamily(
            "postkasse_triage_oldest_seconds", "Age of the oldest referral in triage", value=_age(now, since)
        )

        mail = GaugeMetricFamily(
            "postkasse_outgoing_mail",
            "Outgoing mail not yet sent, or failed for good, by kind",
            labels=["kind", "state"],
        )
        counts = {(k, s): 0 for k in ("receipt", "committee_message", "alert") for s in OPEN_MAIL_STATES}
        for kind, state, count in conn.execute(
            select(outgoing_mail.c.kind, outgoing_mail.c.state, func.count())
            .where(outgoing_mail.c.state.in_(OPEN_MAIL_STATES))
            .group_by(outgoing_mail.c.kind, outgoing_mail.c.state)
        ):
            counts[(kind, state)] = count
        for (kind, state), count in sorted(counts.items()):
            mail.add_metric([kind, state], count)
        yield mail
        pending_age = GaugeMetricFamily(
            "postkasse_outgoing_mail_oldest_pending_seconds",
            "Age of the oldest outgoing mail still waiting to be sent",
            labels=["kind"],
        )
        ages = dict.fromkeys(("receipt", "committee_message", "alert"), 0.0)
        for kind, created in conn.execute(
            select(outgoing_mail.c.kind, func.min(outgoing_mail.c.created_at))
            .where(outgoing_mail.c.state.in_(("pending", "sending")))
            .group_by(outgoing_mail.c.kind)
        ):
            ages[kind] = _age(now, created)
        for kind, age in sorted(ages.items()):
            pending_age.add_metric([kind], age)
        yield pending_age

        backlog = GaugeMetricFamily("postkasse_outbox_backlog", "Pending pipeline work", labels=["kind"])
        for kind, count in conn.execute(
            select(outbox.c.kind, func.count()).where(outbox.c.state == "pending").group_by(outbox.c.kind)
        ):
            backlog.add_metric([kind], count)
        yield backlog
        first = conn.execute(
            select(func.min(outbox.c.created_at)).where(outbox.c.state == "pending")
        ).scalar()
        yield GaugeMetricFamily(
            "postkasse_outbox_oldest_pending_seconds",
            "Age of the oldest pending work",
            value=_age(now, first),
        )

        alerts = CounterMetricFamily(
            "postkasse_alerts",
            "Alerts raised (mails to committees and operations)",
            labels=["deadline", "level"],
        )
        for deadline, level, count in conn.execute(
            select(deadline_alerts.c.deadline, deadline_alerts.c.level, func.count()).group_by(
                deadline_alerts.c.deadline, deadline_alerts.c.level
            )
        ):
            alerts.add_metric([deadline, level], count)
        yield alerts
        purged = purge.last_run(conn)
        yield GaugeMetricFamily(
            "postkasse_purge_last_success_timestamp_seconds",
            "When the retention purge last completed (unix time; 0: never)",
            value=purged.timestamp() if purged else 0.0,
        )
        yield GaugeMetricFamily(
            "postkasse_oldest_content_age_seconds",
            "Age of the oldest message whose content is still kept (0: none kept)",
            value=_age(now, purge.oldest_content(conn)),
        )
        checked = last_check(conn)
        yield GaugeMetricFamily(
            "postkasse_deadline_check_last_success_timestamp_seconds",
            "When the deadline check last completed (unix time; 0: never)",
            value=checked.timestamp() if checked else 0.0,
        )
