"""The routing policy, table-driven: every branch, read as a committee would hear it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date

import pytest

from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.routing.facts import Address, Facts
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import AgeRange, decide
from postkasse.routing.refdata import Geography

TODAY = date(2026, 11, 23)
CHILD = "0102154123"  # 11 years old, in the registry at 0710 Favrskov
UNREGISTERED = "0203174222"  # 9 years old, not in the registry
ADULT = "0101904123"  # 36 years old, registry 0710
YOUNG_ADULT = "0101064123"  # 20 years old, registry 0710
IN_LOLLAND = "0102164123"  # registry 0360 Lolland, which does not participate here

MUNICIPALITIES = Municipalities.load(DEFAULT_MUNICIPALITIES)
MUNICIPALITIES.by_code["0360"] = replace(MUNICIPALITIES.by_code["0360"], participating=False)


@dataclass
class Lookups:
    municipalities: Municipalities
    geography: Geography
    registry: dict[str, str]

    def registry_municipality(self, cpr: str) -> str | None:
        return self.registry.get(cpr)

    def postal_municipalities(self, postal_code: str) -> frozenset[str]:
        return self.geography.postal_municipalities(postal_code)

    def street_municipalities(self, street: str, postal_code: str) -> frozenset[str]:
        return self.geography.street_municipalities(street, postal_code)


LOOKUPS = Lookups(
    MUNICIPALITIES,
    Geography(
        postal={
            "8382": frozenset({"0710", "0751"}),
            "8450": frozenset({"0710"}),
            "8000": frozenset({"0751"}),
            "4100": frozenset({"0329", "0259", "0350", "0370", "0253", "0320"}),
        },
        streets={
            ("8382", "skolevej"): frozenset({"0710"}),
            ("8382", "bakkevej"): frozenset({"0751"}),
            ("8450", "skolevej"): frozenset({"0710"}),
        },
    ),
    {CHILD: "0710", ADULT: "0710", YOUNG_ADULT: "0710", IN_LOLLAND: "0360"},
)

SKOLEVEJ = Address("Skolevej", "12", "8382")  # Favrskov
BAKKEVEJ = Address("Bakkevej", "3", "8382")  # Aarhus
CASES = [
    # (name, facts, decision, municipality, reason codes, flags)
    ("registry decides", Facts(cprs=(CHILD,)), "routed", "0710", ["decided_by_registry"], []),
    (
        "registry and address agree",
        Facts(cprs=(CHILD,), address=SKOLEVEJ),
        "routed",
        "0710",
        ["decided_by_registry"],
        [],
    ),
    (
        "registry wins over an address elsewhere",
        Facts(cprs=(CHILD,), address=BAKKEVEJ),
        "routed",
        "0710",
        ["decided_by_registry", "address_disagrees"],
        ["address_disagrees"],
    ),
    (
        "registry wins over a receiver elsewhere",
        Facts(cprs=(CHILD,), receiver_municipality="0751"),
        "routed",
        "0710",
        ["decided_by_registry", "address_disagrees"],
        ["address_disagrees"],
    ),
    (
        "receiver decides without registry",
        Facts(cprs=(UNREGISTERED,), receiver_municipality="0751"),
        "routed",
        "0751",
        ["decided_by_receiver"],
        [],
    ),
    (
        "receiver and street disagree",
        Facts(cprs=(UNREGISTERED,), receiver_municipality="0710", address=BAKKEVEJ),
        "triage",
        None,
        ["sources_disagree"],
        [],
    ),
    (
        "street and postal code decide",
        Facts(cprs=(UNREGISTERED,), address=SKOLEVEJ),
        "routed",
        "0710",
        ["decided_by_street"],
        [],
    ),
    (
        "postal code in one municipality",
        Facts(cprs=(UNREGISTERED,), address=Address(None, None, "8450")),
        "routed",
        "0710",
        ["decided_by_postal_code"],
        [],
    ),
    (
        "unknown street in a unique postal code",
        Facts(cprs=(UNREGISTERED,), address=Address("Nyvej", "1", "8450")),
        "routed",
        "0710",
        ["decided_by_postal_code"],
        [],
    ),
    (
        "ambiguous postal code, no street",
        Facts(cprs=(UNREGISTERED,), address=Address(None, None, "4100")),
        "triage",
        None,
        ["ambiguous_postal_code"],
        [],
    ),
    (
        "ambiguous postal code, unknown street",
        Facts(cprs=(UNREGISTERED,), address=Address("Nyvej", "1", "8382")),
        "triage",
        None,
        ["ambiguous_postal_code"],
        [],
    ),
    (
        "unknown postal code",
        Facts(cprs=(UNREGISTERED,), address=Address(None, None, "9999")),
        "triage",
        None,
        ["unknown_postal_code"],
        [],
    ),
    ("no location at all", Facts(cprs=(UNREGISTERED,)), "triage", None, ["no_location"], []),
    ("no CPR", Facts(address=SKOLEVEJ), "triage", None, ["no_cpr"], []),
    ("several patients", Facts(cprs=(CHILD, UNREGISTERED)), "triage", None, ["several_patients"], []),
    ("invalid CPR", Facts(cprs=("3102154123",)), "triage", None, ["invalid_cpr"], []),
    ("replacement CPR", Facts(cprs=("01021541AB",)), "triage", None, ["replacement_cpr"], []),
    (
        "adult is routed and flagged",
        Facts(cprs=(ADULT,)),
        "routed",
        "0710",
        ["outside_target_age", "decided_by_registry"],
        ["outside_target_age"],
    ),
    (
        "municipality not participating",
        Facts(cprs=(IN_LOLLAND,)),
        "triage",
        None,
        ["decided_by_registry", "not_participating"],
        [],
    ),
    (
        "unknown receiver code",
        Facts(cprs=(UNREGISTERED,), receiver_municipality="0999"),
        "triage",
        None,
        ["decided_by_receiver", "unknown_municipality"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("facts", "decision", "municipality", "reasons", "flags"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_policy(
    facts: Facts, decision: str, municipality: str | None, reasons: list[str], flags: list[str]
) -> None:
    result = decide(facts, LOOKUPS, TODAY)
    assert result.as_json()["decision"] == decision
    assert result.municipality == municipality
    assert list(result.reasons) == reasons
    assert list(result.flags) == flags
    assert result.explanation[-1].startswith("Afgørelse:")
    if decision == "triage":
        assert result.triage_reason == reasons[-1]


def test_target_age_is_configurable_up_to_24() -> None:
    assert decide(Facts(cprs=(YOUNG_ADULT,)), LOOKUPS, TODAY).flags == ("outside_target_age",)
    assert decide(Facts(cprs=(YOUNG_ADULT,)), LOOKUPS, TODAY, AgeRange(0, 24)).flags == ()


def test_age_is_counted_on_the_day_received() -> None:
    turns_18 = "2311084123"  # born 23 November 2008
    registry = {**LOOKUPS.registry, turns_18: "0710"}
    lookups = replace(LOOKUPS, registry=registry)
    assert decide(Facts(cprs=(turns_18,)), lookups, date(2026, 11, 22)).flags == ()
    assert decide(Facts(cprs=(turns_18,)), lookups, date(2026, 11, 23)).flags == ("outside_target_age",)


def test_the_explanation_names_the_sources() -> None:
    result = decide(Facts(cprs=(CHILD,), address=BAKKEVEJ), LOOKUPS, TODAY)
    text = "\n".join(result.explanation)
    assert "CPR-registret angiver 0710 Favrskov Kommune" in text
    assert "Bakkevej 3, 8382 ligger i 0751 Aarhus Kommune" in text
