"""The Prometheus rules and the Grafana dashboard in deploy/: valid, unit-tested, and about metrics we expose.

promtool checks the syntax and runs the rule tests (tests/prometheus_tools.py finds or fetches it); the
dashboard is checked for what Grafana's import needs, since no Grafana server can be had here, and its queries
are checked by promtool as recording rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_tools import ALERTS, PROJECT, promtool_test, run_promtool

PROMETHEUS = ALERTS.parent
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = PROJECT / "deploy/grafana/postkasse.json"

# What postkasse exposes at /metrics, as sample names (counters with _total, the histogram's _bucket, _sum
# and _count; prometheus_client's *_created samples are left out), each with its labels. None of these labels
# may ever carry personal data; the rules and the dashboard may use no other metric and no other label.
METRICS: dict[str, frozenset[str]] = {
    "postkasse_referrals": frozenset({"municipality", "state"}),
    "postkasse_forwards_undelivered": frozenset({"municipality"}),
    "postkasse_purge_last_success_timestamp_seconds": frozenset(),
    "postkasse_oldest_content_age_seconds": frozenset(),
    "postkasse_queue_oldest_waiting_seconds": frozenset({"municipality"}),
    "postkasse_referrals_past_warning": frozenset({"municipality", "deadline"}),
    "postkasse_referrals_past_breach": frozenset({"municipality", "deadline"}),
    "postkasse_triage_referrals": frozenset(),
    "postkasse_triage_oldest_seconds": frozenset(),
    "postkasse_outgoing_mail": frozenset({"kind", "state"}),
    "postkasse_outgoing_mail_oldest_pending_seconds": frozenset({"kind"}),
    "postkasse_outbox_backlog": frozenset({"kind"}),
    "postkasse_outbox_oldest_pending_seconds": frozenset(),
    "postkasse_deadline_check_last_success_timestamp_seconds": frozenset(),
    "postkasse_alerts_total": frozenset({"deadline", "level"}),
    "postkasse_municipality_info": frozenset({"municipality", "name"}),
    "postkasse_store_gauges_ok": frozenset(),
    "postkasse_messages_accepted_total": frozenset({"channel"}),
    "postkasse_messages_rejected_total": frozenset({"channel", "reason"}),
    "postkasse_mail_sent_total": frozenset({"kind"}),
    "postkasse_mail_failed_total": frozenset({"kind"}),
    "postkasse_receipts_suppressed_total": frozenset({"reason"}),
    "postkasse_outbox_done_total": frozenset({"kind"}),
    "postkasse_outbox_failed_total": frozenset({"kind"}),
    "postkasse_smtp_sessions": frozenset(),
    "postkasse_store_commit_seconds_bucket": frozenset({"le"}),
    "postkasse_store_commit_seconds_sum": frozenset(),
    "postkasse_store_commit_seconds_count": frozenset(),
    "postkasse_store_commit_group_size_bucket": frozenset({"le"}),
    "postkasse_store_commit_group_size_sum": frozenset(),
    "postkasse_store_commit_group_size_count": frozenset(),
    "postkasse_outbox_dispatched_total": frozenset({"kind", "why"}),
    "postkasse_child_restarts_total": frozenset({"role"}),
    "postkasse_outbox_errors_total": frozenset({"kind"}),
    "postkasse_imap_last_cycle_timestamp_seconds": frozenset({"account"}),
    "postkasse_imap_messages_taken_total": frozenset({"account"}),
    "postkasse_imap_messages_recognised_total": frozenset({"account"}),
    "postkasse_imap_messages_failed_total": frozenset({"account", "reason"}),
    "postkasse_imap_errors_total": frozenset({"account"}),
    "postkasse_imap_reading": frozenset({"account"}),
}
# Internals for a profiler's eye, and the gauges' own health (an alert rule watches it), not panels.
NOT_ON_DASHBOARD = frozenset(
    {
        "postkasse_store_commit_seconds_sum",
        "postkasse_store_commit_seconds_count",
        "postkasse_store_commit_group_size_bucket",
        "postkasse_store_commit_group_size_sum",
        "postkasse_store_commit_group_size_count",
        "postkasse_outbox_dispatched_total",
        "postkasse_outbox_errors_total",
        "postkasse_store_gauges_ok",
        "postkasse_child_restarts_total",  # the log says so too; the outbox's age alerts when it matters
    }
)
# Series Prometheus makes itself, and the labels it adds to every scraped series.
PROMETHEUS_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})
KNOWN_SERIES = {name: labels | TARGET_LABELS for name, labels in {**METRICS, **PROMETHEUS_SERIES}.items()}
KNOWN_LABELS = frozenset().union(*KNOWN_SERIES.values())

# Grafana's own variables, replaced by a value of the right kind so promtool can parse the query.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1d",
    "__range_s": "86400",
    "__interval_ms": "60000",
}


# --- a small PromQL reader: enough to find the metric and label names in an expression ---------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"inf", "nan", "atan2"}
)


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def selectors(expr: str) -> list[tuple[str, frozenset[str]]]:
    """Each metric named in `expr`, with the labels its selector matches on (names only)."""
    code = _RANGE.sub("", _without_strings(expr))
    found = [
        (match.group(1), frozenset(_MATCHER.findall(match.group(2))))
        for match in _SELECTOR.finditer(code)
        if match.group(1) and match.group(1) not in _KEYWORDS
    ]
    # What is left: metrics without braces, among functions (followed by "("), keywords and numbers.
    rest = _GROUPING.sub("", _SELECTOR.sub(lambda m: m.group(1) if m.group(1) in _KEYWORDS else "", code))
    found += [(name, frozenset()) for name in _IDENTIFIER.findall(rest) if name not in _KEYWORDS]
    return found


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}


def label_names(expr: str) -> set[str]:
    """Labels `expr` matches on (in any selector) or groups by."""
    code = _RANGE.sub("", _without_strings(expr))
    names = {label for match in _SELECTOR.finditer(code) for label in _MATCHER.findall(match.group(2))}
    for match in _GROUPING.finditer(code):
        names |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    return names


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        ("up", {"up"}, set()),
        (
            'sum by (municipality) (rate(postkasse_nope_total{kind="a", state=~"x|y"}[5m])) > 0',
            {"postkasse_nope_total"},
            {"municipality", "kind", "state"},
        ),
        (
            'max(a) * on (cpr) group_left (name) b offset 1h unless c{x!="1e3 rate(d)"} @ start()',
            {"a", "b", "c"},
            {"cpr", "name", "x"},
        ),
        (
            "histogram_quantile(0.9, sum without (job) (rate(h_bucket[$__rate_interval])))",
            {"h_bucket"},
            {"job"},
        ),
        ('time() - max(ts) > 600 and {__name__="z", a="1"}', {"ts"}, {"__name__", "a"}),
    ],
)
def test_promql_reader_finds_metrics_and_labels(expr: str, metrics: set[str], labels: set[str]) -> None:
    """The name checks below are only as good as this reader; it must see a misspelt metric or label."""
    assert metric_names(expr) == metrics
    assert label_names(expr) == labels


def unknown_names(expressions: dict[str, str]) -> list[str]:
    """Metrics we do not expose, or labels they do not carry, in each named expression."""
    problems = []
    for where, expr in expressions.items():
        for name, labels in selectors(expr):
            if name not in KNOWN_SERIES:
                problems.append(f"{where}: metric {name} is not exposed by postkasse")
            elif labels - KNOWN_SERIES[name]:
                problems.append(
                    f"{where}: {name} has no label {', '.join(sorted(labels - KNOWN_SERIES[name]))}"
                )
        for label in label_names(expr) - KNOWN_LABELS:
            problems.append(f"{where}: label {label} is not one of ours")
    return problems


def test_name_check_reports_unknown_metrics_and_labels() -> None:
    assert unknown_names({"ok": 'max by (municipality) (postkasse_referrals{state="new"})'}) == []
    assert unknown_names(
        {"x": 'postkasse_referrals{deadline="handling"} * on (cpr) postkasse_refferals'}
    ) == [
        "x: postkasse_referrals has no label deadline",
        "x: metric postkasse_refferals is not exposed by postkasse",
        "x: label cpr is not one of ours",
    ]


# --- alerts.yml --------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_alert_rules_are_valid() -> None:
    result = run_promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """promtool passes a rule no test mentions: each alert needs a case where it fires and one where not."""
    cases = [
        case
        for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in group["alert_rule_test"]
    ]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "never shown firing"
    assert names - quiet == set(), "never shown not firing"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_alert_rules_tell_the_operator_what_to_do() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert [group["name"] for group in document["groups"]] == ["postkasse"]
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules), "alert names repeat"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation, "").strip(), f"{rule['alert']} has no {annotation}"
    required = {
        "PostkasseQueueNotEmptied",
        "PostkasseHandlingDeadlineBreached",
        "PostkasseTriageWaiting",
        "PostkasseReceiptsFailing",
        "PostkasseReceiptsDelayed",
        "PostkasseOutboxStuck",
        "PostkasseDown",
        "PostkasseTargetMissing",
        "PostkasseDeadlineCheckStale",
    }
    assert required <= {rule["alert"] for rule in rules}


def test_alert_rules_use_only_our_metrics_and_labels() -> None:
    rules = alert_rules()
    expressions = {rule["alert"]: rule["expr"] for rule in rules}
    for rule in rules:
        text = " ".join(rule["annotations"].values())
        # Queries run by the annotation templates (`query "..."`, or a query made with `printf "..."`).
        for number, query in enumerate(re.findall(r'(?:query|printf) "((?:[^"\\]|\\.)*)"', text)):
            if "(" in query:
                expressions[f"{rule['alert']} annotation query {number}"] = query.replace("%q", '"0710"')
        printed = {a or b for a, b in re.findall(r"\$labels\.(\w+)|\.Labels\.(\w+)", text)}
        assert printed <= KNOWN_LABELS, f"{rule['alert']} prints labels we do not have"
    assert unknown_names(expressions) == []
    assert any(" annotation query " in where for where in expressions), (
        "the annotation queries were not found"
    )


# --- prometheus.yml ----------------------------------------------------------------------------------


def test_example_prometheus_config_is_valid() -> None:
    result = run_promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "postkasse"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8025"]


# --- promtool_test, for tests that feed real metric output into the rules ------------------------------

_FIRES_AT_1M = """
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'postkasse_outbox_oldest_pending_seconds{instance="a", job="postkasse"}'
        values: '0 1000'
    alert_rule_test:
      - eval_time: 1m
        alertname: PostkasseOutboxStuck
        exp_alerts: %s
"""


def test_promtool_test_runs_the_given_rules() -> None:
    """The helper passes a true expectation and reports a false one."""
    fired = promtool_test(ALERTS, _FIRES_AT_1M % "[]")  # expects silence, but the alert fires
    assert fired.returncode != 0
    assert "PostkasseOutboxStuck" in fired.stdout + fired.stderr
    quiet = promtool_test(ALERTS, _FIRES_AT_1M.replace("'0 1000'", "'0 10'") % "[]")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    with pytest.raises(ValueError, match="rule_files"):
        promtool_test(ALERTS, "rule_files: [x.yml]\n" + _FIRES_AT_1M % "[]")


# --- the Grafana dashboard ---------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries() -> dict[str, str]:
    return {
        f"panel {panel['id']} ({panel['title']}) {target['refId']}": target["expr"]
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    }


def variables() -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substituted(expr: str) -> str:
    """`expr` as Prometheus would get it: dashboard variables as one value, Grafana's by a sample value."""
    values = {"municipality": "0710", **GRAFANA_BUILTINS}

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise AssertionError(f"{expr!r} uses ${name}, which neither the dashboard nor Grafana defines")
        return values[name]

    return _VARIABLE.sub(value, expr)


def test_dashboard_has_what_grafana_import_needs() -> None:
    board = dashboard()
    assert board["title"] == "postkasse"
    assert board["uid"] == "postkasse"
    assert isinstance(board["schemaVersion"], int) and 36 <= board["schemaVersion"] <= 41
    assert board.get("id") is None, "an id belongs to one Grafana's database; import needs none"
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), "panel ids must be unique"
    used: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert isinstance(panel["type"], str) and panel["type"], where
        assert panel.get("title"), where
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & used, f"{where} overlaps another panel"
        used |= cells
        if panel["type"] == "row":
            assert "targets" not in panel, where
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), f"{where}: refIds repeat"
        for target in panel["targets"]:
            assert isinstance(target["expr"], str) and target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where


def test_dashboard_variables() -> None:
    found = variables()
    datasource, municipality = found["datasource"], found["municipality"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert municipality["type"] == "query"
    assert municipality["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    query = municipality["query"]
    query = query["query"] if isinstance(query, dict) else query
    assert query == "label_values(postkasse_referrals, municipality)"
    assert municipality["multi"] is True and municipality["includeAll"] is True


def test_dashboard_shows_every_section() -> None:
    """The sections the operators asked for, found by the metrics the panels use."""
    used = set().union(*map(metric_names, queries().values()))
    assert set(METRICS) - NOT_ON_DASHBOARD <= used
    assert all(
        'municipality=~"$municipality"' in expr for expr in queries().values() if "municipality" in expr
    )


def test_dashboard_queries_use_only_our_metrics_and_labels() -> None:
    assert unknown_names(queries()) == []
    legends = {
        label
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", ""))
    }
    assert legends - KNOWN_LABELS == set(), "legends name labels we do not have"
    assert legends, "no legend names a label: the check above saw nothing"


def check_promql(expressions: dict[str, str], folder: Path) -> tuple[int, str]:
    """promtool's verdict on `expressions`, written as recording rules (JSON is YAML)."""
    rules = [
        {"record": f"check:expr_{number}", "expr": expr, "labels": {"where": where}}
        for number, (where, expr) in enumerate(expressions.items())
    ]
    rules_file = folder / "queries.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "queries", "rules": rules}]}, indent=1))
    result = run_promtool("check", "rules", rules_file)
    return result.returncode, result.stdout + result.stderr


def test_promql_check_rejects_a_bad_query(tmp_path: Path) -> None:
    code, output = check_promql({"ok": "max(up)", "bad": "sum by (municipality (up)"}, tmp_path)
    assert code != 0, output


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    expressions = {where: substituted(expr) for where, expr in queries().items()}
    assert len(expressions) >= 20
    code, output = check_promql(expressions, tmp_path)
    assert code == 0, output
    assert f"SUCCESS: {len(expressions)} rules found" in output


def test_dashboard_variable_substitution_is_checked() -> None:
    assert substituted('rate(x{municipality=~"$municipality"}[$__rate_interval])') == (
        'rate(x{municipality=~"0710"}[5m])'
    )
    with pytest.raises(AssertionError, match=r"\$cpr"):
        substituted('x{cpr="$cpr"}')
