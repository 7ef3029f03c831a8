"""The operations runbook (docs/operations.md) and the alert rules point at each other.

Every rule in deploy/prometheus/alerts.yml carries a `runbook_url` annotation under one base; its anchor
must be a heading of docs/operations.md, as GitHub makes anchors, and every `### Postkasse...` heading there
must name a rule that exists, so neither side can be renamed or dropped without the other.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
ALERTS = PROJECT / "deploy/prometheus/alerts.yml"
RUNBOOK = PROJECT / "docs/operations.md"
BASE = "https://github.com/postkasse/postkasse/blob/main/docs/operations.md#"


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _headings() -> list[tuple[int, str]]:
    """(level, text) of each Markdown heading outside fenced code blocks."""
    found: list[tuple[int, str]] = []
    fenced = False
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if match and not fenced:
            found.append((len(match.group(1)), match.group(2)))
    return found


def _slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces made hyphens."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors() -> set[str]:
    """Every anchor the page has; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    anchors: set[str] = set()
    for _, text in _headings():
        slug = _slug(text)
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def test_slug_is_githubs() -> None:
    assert _slug("PostkasseQueueNotEmptied") == "postkassequeuenotemptied"
    assert _slug("Backup and restore (sikkerhedskopi)") == "backup-and-restore-sikkerhedskopi"
    assert _slug("TLS for `smtp`: STARTTLS") == "tls-for-smtp-starttls"


def test_every_rule_has_a_runbook_url_whose_anchor_is_a_heading() -> None:
    anchors = _anchors()
    rules = _rules()
    assert len(rules) >= 20, "the alert rules were not found"
    for rule in rules:
        url = rule.get("annotations", {}).get("runbook_url", "")
        assert url.startswith(BASE), f"{rule['alert']}: runbook_url {url!r} is not under {BASE}"
        anchor = url.removeprefix(BASE)
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: runbook_url points at #{anchor}"
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no heading with anchor #{anchor}"


def test_every_alert_heading_names_an_existing_rule_once() -> None:
    names = {rule["alert"] for rule in _rules()}
    alert_headings = [text for level, text in _headings() if level == 3 and text.startswith("Postkasse")]
    assert alert_headings, "docs/operations.md has no ### PostkasseXxx headings"
    for text in alert_headings:
        assert text in names, f"docs/operations.md has a section for {text!r}, which is no rule in alerts.yml"
    repeated = [text for text, count in Counter(alert_headings).items() if count > 1]
    assert not repeated, f"alerts with more than one section: {repeated}"
    assert names <= set(alert_headings), f"rules without a section: {sorted(names - set(alert_headings))}"


def test_the_base_is_stated_at_the_top_of_alerts_yml() -> None:
    header = ALERTS.read_text(encoding="utf-8").split("\ngroups:", 1)[0]
    assert BASE.removesuffix("#") in header
