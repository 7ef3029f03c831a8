"""`postkasse deadlines report`: an assessment as text for operators, or JSON for scripts."""

from __future__ import annotations

import json

from postkasse.clock import COPENHAGEN
from postkasse.deadlines.assess import Assessment
from postkasse.receipts.compose import DEADLINE_NAMES
from postkasse.reference import reference
from postkasse.routing.municipalities import Municipalities

LEVEL_TEXT = {"ok": "ok", "warning": "VARSEL", "breach": "OVERSKREDET"}


def render(found: Assessment, municipalities: Municipalities, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(found.as_json(), ensure_ascii=False)
    lines = [f"Frister pr. {found.at.astimezone(COPENHAGEN):%Y-%m-%d %H:%M} (dansk tid)", ""]
    late = {code: e for code, e in sorted(found.municipalities.items()) if e.level != "ok" or e.waiting}
    lines.append(
        f"Kommuner: {len(found.municipalities)}; "
        f"{sum(e.level == 'ok' for e in found.municipalities.values())} med tømning i orden"
    )
    for code, emptying in late.items():
        known = municipalities.get(code)
        due = f", tømmes senest {emptying.due.astimezone(COPENHAGEN):%Y-%m-%d %H:%M}" if emptying.due else ""
        lines.append(
            f"  {code} {known.name if known else '?':<24} {LEVEL_TEXT[emptying.level]:<12} "
            f"{emptying.waiting} venter{due}"
        )
    lines += ["", f"Henvendelser i varsel eller overskredet: {len(found.findings)}"]
    for finding in found.findings:
        lines.append(
            f"  {reference(finding.referral_id)}  {finding.municipality or 'triage'}  "
            f"{DEADLINE_NAMES[finding.deadline]:<17} {LEVEL_TEXT[finding.level]:<12} "
            f"frist {finding.due.astimezone(COPENHAGEN):%Y-%m-%d %H:%M}"
        )
    return "\n".join(lines)
