"""`postkasse route --explain`: a decision with every fact and rule, for people or as JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

from postkasse.medcom.document import Document, Letter
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


def render_document(
    document: Document, decided: Sequence[tuple[Letter, Decision, Facts]], *, as_json: bool
) -> str:
    """A MedCom document: its kind and envelope, then each letter's decision as for mail."""
    if as_json:
        letters = []
        for letter, decision, facts in decided:
            letters.append(
                {
                    "identifier": letter.identifier,
                    "kind": letter.kind,
                    **decision.as_json(),
                    "facts": asdict(facts),
                }
            )
        first = dict(letters[0]) if letters else {}
        first.pop("identifier", None)
        return json.dumps(
            {
                **first,
                "kind": document.letters[0].kind if document.letters else None,
                "format": document.format,
                "envelope": document.envelope_id,
                "letters": letters,
            },
            ensure_ascii=False,
        )
    parts = [f"MedCom {document.format}, kuvert {document.envelope_id}"]
    for letter, decision, facts in decided:
        parts += ["", f"Brev {letter.identifier} ({letter.kind}):", render(decision, facts, as_json=False)]
    return "\n".join(parts)
