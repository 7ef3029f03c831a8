"""A meeting form's fields as the API's `Meeting`: one line per participant, goal, guardian or agreement,
with the parts of a line split by `|`, so a plain form (no script) can carry a whole action plan."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from postkasse.clock import COPENHAGEN
from postkasse.pathway.plan import RELATION_NAMES

RELATIONS = {name: code for code, name in RELATION_NAMES.items()}
YES = {"ja", "j", "yes", "x", "1"}


def _lines(text: str) -> list[list[str]]:
    return [[part.strip() for part in line.split("|")] for line in text.splitlines() if line.strip()]


def _part(parts: list[str], index: int) -> str:
    return parts[index] if index < len(parts) else ""


def meeting(form: dict[str, str]) -> dict[str, Any]:
    """The form as the JSON body the API takes; the model then checks it with the API's rules."""
    held = form.get("held_at", "").strip()
    held_at: Any = held
    if held:
        try:
            held_at = datetime.fromisoformat(held).replace(tzinfo=COPENHAGEN).isoformat()
        except ValueError:
            held_at = held  # the model names the field and why
    named = responsible(form)
    body: dict[str, Any] = {
        "kind": form.get("kind", ""),
        "held_at": held_at,
        "place": form.get("place", "").strip(),
        "participants": [
            {"name": _part(p, 0), "title": _part(p, 1)} for p in _lines(form.get("participants", ""))
        ],
        "plan": {
            "guardians": [
                {
                    "name": _part(g, 0),
                    "relation": RELATIONS.get(_part(g, 1).lower(), "other" if _part(g, 1) else "guardian"),
                    "address": _part(g, 2),
                    "custody": _part(g, 3).lower() in YES,
                }
                for g in _lines(form.get("guardians", ""))
            ],
            "custody": form.get("custody", "").strip(),
            "what_works": form.get("what_works", "").strip(),
            "what_is_hard": form.get("what_is_hard", "").strip(),
            "goals": [line.strip() for line in form.get("goals", "").splitlines() if line.strip()],
            "agreements": [
                {"what": _part(a, 0), "how": _part(a, 1), "responsible": _part(a, 2)}
                for a in _lines(form.get("agreements", ""))
            ],
            "expectations": form.get("expectations", "").strip(),
            "next_meeting": form.get("next_meeting", "").strip() or None,
        },
    }
    if named:
        body["responsible"] = named
    return body


def responsible(form: dict[str, str]) -> dict[str, str] | None:
    """The decision form's responsible professional, when any of it is filled in."""
    found = {key: form.get(f"responsible_{key}", "").strip() for key in ("name", "title", "telephone")}
    return found if any(found.values()) else None


def as_lines(plan: dict[str, Any] | None, participants: list[dict[str, Any]]) -> dict[str, str]:
    """The last plan's fields as the form's text, so a meeting starts from the plan as it stands."""
    plan = plan or {}
    return {
        "participants": "\n".join(f"{p['name']} | {p.get('title', '')}" for p in participants),
        "guardians": "\n".join(
            f"{g['name']} | {RELATION_NAMES.get(g.get('relation', ''), '')} | {g.get('address', '')} | "
            f"{'ja' if g.get('custody') else 'nej'}"
            for g in plan.get("guardians", [])
        ),
        "custody": plan.get("custody", ""),
        "what_works": plan.get("what_works", ""),
        "what_is_hard": plan.get("what_is_hard", ""),
        "goals": "\n".join(plan.get("goals", [])),
        "agreements": "\n".join(
            f"{a['what']} | {a.get('how', '')} | {a['responsible']}" for a in plan.get("agreements", [])
        ),
        "expectations": plan.get("expectations", ""),
    }
