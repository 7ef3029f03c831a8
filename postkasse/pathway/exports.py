"""The plan's exports, loaded on first use: WeasyPrint and the FHIR models weigh some 70 MB of memory,
which a daemon that never prints a plan or sends a Bundle should not carry."""

from __future__ import annotations

from typing import Any

from postkasse.pathway.plan import ActionPlan


def pdf(plan: ActionPlan) -> bytes:
    """The printed plan for the family (`printed.pdf`)."""
    from postkasse.pathway import printed

    return printed.pdf(plan)


def bundle(plan: ActionPlan) -> dict[str, Any]:
    """The plan as a FHIR R4 Bundle (`fhir.bundle`)."""
    from postkasse.pathway import fhir

    return fhir.bundle(plan)
