"""The whole deadline path with real processes: `postkasse serve` checks on its own schedule, alert mails
reach a real relay once each, also across a SIGKILL and a restart, and the metrics it exposes make the
Prometheus rules fire (promtool evaluates alerts.yml over the daemon's own /metrics output)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from postkasse.committee import referrals
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.alerts import last_check
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from tests.prometheus_tools import ALERTS, promtool_test
from tests.servers import Daemon, wait_until
from tests.sink import Sink
from tests.test_deadlines import add
from tests.test_prometheus import METRICS

pytestmark = pytest.mark.slow

# Series that appear only once something happens: the restarted daemon that is scraped has received,
# sent and worked on nothing (the first one sent the alerts), and its outbox is empty.
NOT_SEEN_HERE = {
    "postkasse_outbox_done_total",
    "postkasse_outbox_backlog",
    "postkasse_outbox_dispatched_total",
    "postkasse_mail_sent_total",
    "postkasse_messages_accepted_total",
    "postkasse_messages_rejected_total",
    "postkasse_receipts_suppressed_total",
    "postkasse_mail_failed_total",
    "postkasse_outbox_failed_total",
    "postkasse_outbox_errors_total",
    "postkasse_child_restarts_total",
    "postkasse_imap_last_cycle_timestamp_seconds",  # the IMAP series exist only with an [[imap]] account
    "postkasse_imap_messages_taken_total",
    "postkasse_imap_messages_recognised_total",
    "postkasse_imap_messages_failed_total",
    "postkasse_imap_errors_total",
    "postkasse_imap_reading",
}
FAVRSKOV = "koordination@favrskov.example"
OPS = "drift@postkasse.example"


@pytest.fixture
def relay() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


def municipalities_with_an_address(tmp_path: Path) -> Path:
    text = DEFAULT_MUNICIPALITIES.read_text(encoding="utf-8")
    marker = 'code = "0710"\n'
    assert marker in text
    copy = tmp_path / "municipalities.toml"
    copy.write_text(text.replace(marker, f'{marker}notification_address = "{FAVRSKOV}"\n'), encoding="utf-8")
    return copy


def checks_after(store: Store, moment: datetime, why: str) -> None:
    """Wait until the daemon has completed a deadline check that started after `moment`."""

    def done() -> bool:
        with store.read() as conn:
            finished = last_check(conn)
        return finished is not None and finished > moment

    wait_until(done, 60, why)


def as_promtool_series(exposition: str) -> str:
    """The daemon's postkasse_* samples as promtool input series, constant for an hour, as if scraped."""
    lines = ['      - series: \'up{instance="pk1:8025", job="postkasse"}\'', "        values: '1x60'"]
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if not sample.name.startswith("postkasse_") or sample.name.endswith("_created"):
                continue
            labels = {**sample.labels, "instance": "pk1:8025", "job": "postkasse"}
            selector = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            lines += [
                f"      - series: '{sample.name}{{{selector}}}'",
                f"        values: '{sample.value!r}x60'",
            ]
    return "\n".join(lines)


def test_an_unemptied_queue_and_an_overdue_referral_alert_once_across_a_restart(
    daemon_factory: type[Daemon], tmp_path: Path, relay: Sink
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    store = Store(database_url)
    upgrade(store)
    now = datetime.now(UTC)
    unemptied = add(store, now - timedelta(hours=25))
    overdue = add(store, now - timedelta(days=9))
    with store.write() as conn:
        referrals.pull(conn, overdue, now - timedelta(days=9) + timedelta(hours=2), "favrskov")

    sections: dict[str, dict[str, Any]] = {
        "outbound": {"host": "127.0.0.1", "port": relay.port, "tls": "none", "from_address": "pk@localhost"},
        "deadlines": {"check_interval_seconds": 0.2, "operations_address": OPS},
        "routing": {"municipalities_file": str(municipalities_with_an_address(tmp_path))},
    }
    first = daemon_factory(tmp_path, database_url, **sections)
    first.start()
    wait_until(lambda: len(relay.mails()) >= 4, 60, "four alert mails at the relay")
    seen = datetime.now(UTC)
    checks_after(store, seen + timedelta(seconds=1), "checks after the alerts were sent")
    first.kill()

    second = daemon_factory(tmp_path, database_url, **sections)
    second.start()
    restarted = datetime.now(UTC)
    checks_after(store, restarted + timedelta(seconds=1), "checks by the restarted daemon")

    mails = relay.mails()
    assert sorted((m.recipients, m.mail["X-Postkasse-Alert"]) for m in mails) == [
        ((OPS,), "emptying; level=breach; raised"),
        ((OPS,), "handling; level=breach; raised"),
        ((FAVRSKOV,), "emptying; level=breach; raised"),
        ((FAVRSKOV,), "handling; level=breach; raised"),
    ]
    subjects = {str(m.mail["Subject"]) for m in mails}
    assert any(f"PK-{unemptied:06d}" in s for s in subjects) and any(
        f"PK-{overdue:06d}" in s for s in subjects
    )
    assert all(m.envelope_sender == "" for m in mails)  # automatic mail: nothing may answer it
    assert all(b"0102154123" not in m.raw and b"Anna" not in m.raw for m in mails)

    status, body = second.get("/metrics")
    assert status == 200
    exposition = body.decode()
    assert 'postkasse_referrals_past_breach{deadline="emptying",municipality="0710"} 1.0' in exposition
    assert 'postkasse_referrals_past_breach{deadline="handling",municipality="0710"} 1.0' in exposition
    assert "0102154123" not in exposition
    exposed = {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name.startswith("postkasse_") and not sample.name.endswith("_created")
    }
    assert exposed == set(METRICS) - NOT_SEEN_HERE, "the rules and the dashboard know every metric exposed"

    firing = 'alertstate="firing", municipality="0710", severity="critical"'
    result = promtool_test(
        ALERTS,
        f"""evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{as_promtool_series(exposition)}
    promql_expr_test:
      - expr: ALERTS{{alertstate="firing", municipality="0710"}}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{{alertname="PostkasseHandlingDeadlineBreached", {firing}}}'
            value: 1
          - labels: 'ALERTS{{alertname="PostkasseQueueNotEmptied", {firing}}}'
            value: 1
      - expr: ALERTS{{alertstate="firing", municipality="0751"}}
        eval_time: 5m
        exp_samples: []
""",
    )
    assert result.returncode == 0, result.stdout + result.stderr
