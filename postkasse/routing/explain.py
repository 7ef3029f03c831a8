"""`postkasse route --explain`: a decision with every fact and rule, for people or as JSON for scripts."""

from __future__ import annotations

import json
from dataclasses import asdict

from postkasse.routing.facts import Facts
from postkasse.routing.policy import Decision


def render(decision: Decision, facts: Facts, *, as_json: bool) -> str:
    if as_json:
        data = decision.as_json()
        data["facts"] = asdict(facts)
        return json.dumps(data, ensure_ascii=False)
    lines = ["Fakta fundet i beskeden:"]
    lines.append(f"  CPR-numre:        {', '.join(facts.cprs) or '(ingen)'}")
    lines.append(f"  Navn:             {facts.name or '(intet)'}")
    lines.append(f"  Adresse:          {facts.address.describe() if facts.address else '(ingen)'}")
    lines.append(f"  Modtagerkommune:  {facts.receiver_municipality or '(ingen)'}")
    lines.append(f"  Haster:           {'ja' if facts.urgent else 'nej'}")
    lines.append("Regler:")
    lines.extend(f"  - {line}" for line in decision.explanation)
    target = decision.municipality if decision.decision == "routed" else f"triage ({decision.triage_reason})"
    lines.append(f"Beslutning: {target}")
    lines.append(f"Årsagskoder: {', '.join(decision.reasons)}")
    if decision.flags:
        lines.append(f"Markeringer: {', '.join(decision.flags)}")
    return "\n".join(lines)
