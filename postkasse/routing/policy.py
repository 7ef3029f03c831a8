"""The routing policy: a pure function from the facts of a message and reference data to a decision.

The first source in this order decides: the CPR register's municipality for the child > a receiver
municipality the sender named > street and postal code > a postal code that lies in one municipality.
Nothing is guessed: without a register entry, doubt or disagreement goes to triage with a reason.
Every rule that fires leaves a stable code and a sentence, so the decision can be read aloud.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol

from postkasse.routing.cpr import Cpr, InvalidCpr, ReplacementCpr
from postkasse.routing.facts import Facts
from postkasse.routing.municipalities import Municipalities

# Triage reasons: stable codes that scripts, receipts and the triage queue rely on.
NO_CPR = "no_cpr"
SEVERAL_PATIENTS = "several_patients"
INVALID_CPR = "invalid_cpr"
REPLACEMENT_CPR = "replacement_cpr"
SOURCES_DISAGREE = "sources_disagree"
AMBIGUOUS_POSTAL_CODE = "ambiguous_postal_code"
UNKNOWN_POSTAL_CODE = "unknown_postal_code"
NO_LOCATION = "no_location"
NOT_PARTICIPATING = "not_participating"
UNKNOWN_MUNICIPALITY = "unknown_municipality"
ROUTING_FAILED = "routing_failed"
UNREADABLE_CONTENT = "unreadable_content"

# Flags on routed referrals.
ADDRESS_DISAGREES = "address_disagrees"
OUTSIDE_TARGET_AGE = "outside_target_age"

# Which source decided.
BY_REGISTRY = "decided_by_registry"
BY_RECEIVER = "decided_by_receiver"
BY_STREET = "decided_by_street"
BY_POSTAL_CODE = "decided_by_postal_code"

TRIAGE_TEXT = {
    NO_CPR: "Beskeden indeholder intet CPR-nummer.",
    SEVERAL_PATIENTS: "Beskeden indeholder flere forskellige CPR-numre, så den kan handle om flere børn.",
    INVALID_CPR: "CPR-nummeret er ikke gyldigt (datoen findes ikke eller ligger i fremtiden).",
    REPLACEMENT_CPR: "Barnet har et erstatningspersonnummer, som ikke findes i CPR-registret.",
    SOURCES_DISAGREE: "Oplysningerne i beskeden peger på forskellige kommuner.",
    AMBIGUOUS_POSTAL_CODE: "Postnummeret ligger i flere kommuner, og vejen er ukendt eller mangler.",
    UNKNOWN_POSTAL_CODE: "Postnummeret findes ikke.",
    NO_LOCATION: "Barnet findes ikke i CPR-registret, og beskeden har ingen adresse eller kommune.",
    NOT_PARTICIPATING: "Kommunen deltager ikke i den fælles postkasse.",
    UNKNOWN_MUNICIPALITY: "Kommunekoden findes ikke.",
    ROUTING_FAILED: "Beskeden kunne ikke sorteres automatisk.",
    UNREADABLE_CONTENT: "Beskedens indhold kunne ikke læses, så den skal sorteres manuelt.",
}


class Lookups(Protocol):
    """The reference data the policy reads. Implementations only look up; they decide nothing."""

    municipalities: Municipalities

    def registry_municipality(self, cpr: str) -> str | None: ...

    def postal_municipalities(self, postal_code: str) -> frozenset[str]: ...

    def street_municipalities(self, street: str, postal_code: str) -> frozenset[str]: ...


@dataclass(frozen=True)
class AgeRange:
    minimum: int = 0
    maximum: int = 17


@dataclass(frozen=True)
class Decision:
    decision: Literal["routed", "triage"]
    municipality: str | None
    reasons: tuple[str, ...]
    flags: tuple[str, ...]
    explanation: tuple[str, ...]
    cpr: str | None = None
    triage_reason: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "municipality": self.municipality,
            "reasons": list(self.reasons),
            "flags": list(self.flags),
            "triage_reason": self.triage_reason,
            "explanation": list(self.explanation),
        }


class _Trace:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.flags: list[str] = []
        self.lines: list[str] = []

    def note(self, line: str, code: str | None = None) -> None:
        self.lines.append(line)
        if code:
            self.reasons.append(code)

    def triage(self, code: str, cpr: str | None = None, detail: str | None = None) -> Decision:
        self.note(detail or TRIAGE_TEXT[code], code)
        self.note("Afgørelse: manuel sortering (triage).")
        return Decision("triage", None, tuple(self.reasons), tuple(self.flags), tuple(self.lines), cpr, code)

    def routed(self, municipality: str, name: str, cpr: str) -> Decision:
        self.note(f"Afgørelse: {municipality} {name}s koordinationsudvalg.")
        return Decision(
            "routed", municipality, tuple(self.reasons), tuple(self.flags), tuple(self.lines), cpr
        )


def _name(lookups: Lookups, code: str) -> str:
    municipality = lookups.municipalities.get(code)
    return municipality.name if municipality else "ukendt kommune"


def unreadable(notes: tuple[str, ...] = ()) -> Decision:
    """Triage for a message whose content could not be read at all, saying what could not be read."""
    trace = _Trace()
    for note in notes:
        trace.note(note)
    return trace.triage(UNREADABLE_CONTENT)


def decide(facts: Facts, lookups: Lookups, today: date, ages: AgeRange = AgeRange()) -> Decision:
    """Where the message goes, and why. `today` is the Danish date the message was received."""
    trace = _Trace()
    for note in facts.notes:  # what could not be read comes first: it may be why a fact is missing
        trace.note(note)
    if not facts.cprs:
        return trace.triage(NO_CPR)
    if len(facts.cprs) > 1:
        return trace.triage(
            SEVERAL_PATIENTS, detail=f"Beskeden indeholder {len(facts.cprs)} forskellige CPR-numre."
        )
    try:
        cpr = Cpr.parse(facts.cprs[0], today)
    except ReplacementCpr:
        return trace.triage(REPLACEMENT_CPR)
    except InvalidCpr as exc:
        return trace.triage(INVALID_CPR, detail=f"CPR-nummeret er ikke gyldigt: {exc}.")
    age = cpr.age_on(today)
    trace.note(f"Gyldigt CPR-nummer; barnet er {age} år.")
    if not ages.minimum <= age <= ages.maximum:
        trace.flags.append(OUTSIDE_TARGET_AGE)
        trace.note(
            f"Alderen ligger uden for målgruppen ({ages.minimum}-{ages.maximum} år).", OUTSIDE_TARGET_AGE
        )

    address = facts.address
    street_munis: frozenset[str] = frozenset()
    postal_munis: frozenset[str] = frozenset()
    if address and address.postal_code:
        postal_munis = lookups.postal_municipalities(address.postal_code)
        if address.street:
            street_munis = lookups.street_municipalities(address.street, address.postal_code)

    sources: list[tuple[str, str, str]] = []  # (code, municipality, sentence)
    registry = lookups.registry_municipality(cpr.number)
    if registry:
        sources.append(
            (BY_REGISTRY, registry, f"CPR-registret angiver {registry} {_name(lookups, registry)}.")
        )
    else:
        trace.note("Barnet findes ikke i CPR-registret.")
    if facts.receiver_municipality:
        code = facts.receiver_municipality
        sources.append(
            (BY_RECEIVER, code, f"Afsenderen har angivet modtagerkommunen {code} {_name(lookups, code)}.")
        )
    if address and len(street_munis) == 1:
        (code,) = street_munis
        sources.append(
            (BY_STREET, code, f"Adressen {address.describe()} ligger i {code} {_name(lookups, code)}.")
        )
    elif address and address.street and address.postal_code and not street_munis:
        trace.note(f"Vejen {address.street} kendes ikke i postnummer {address.postal_code}.")
    if address and address.postal_code and not street_munis:
        if len(postal_munis) == 1:
            (code,) = postal_munis
            sources.append(
                (
                    BY_POSTAL_CODE,
                    code,
                    f"Postnummer {address.postal_code} ligger kun i {code} {_name(lookups, code)}.",
                )
            )
        elif len(postal_munis) > 1:
            trace.note(f"Postnummer {address.postal_code} ligger i {len(postal_munis)} kommuner.")

    if not sources:
        if address and address.postal_code and len(postal_munis) > 1:
            return trace.triage(AMBIGUOUS_POSTAL_CODE, cpr.number)
        if address and address.postal_code and not postal_munis:
            return trace.triage(UNKNOWN_POSTAL_CODE, cpr.number)
        return trace.triage(NO_LOCATION, cpr.number)

    decided_by, municipality, sentence = sources[0]
    disagreeing = [line for _, code, line in sources[1:] if code != municipality]
    if disagreeing and decided_by != BY_REGISTRY:
        for _, _, line in sources:
            trace.note(line)
        return trace.triage(SOURCES_DISAGREE, cpr.number)
    trace.note(sentence, decided_by)
    if disagreeing:
        for line in disagreeing:
            trace.note(line)
        trace.flags.append(ADDRESS_DISAGREES)
        trace.note(
            "Beskedens adresse peger på en anden kommune end CPR-registret; registret afgør.",
            ADDRESS_DISAGREES,
        )

    target = lookups.municipalities.get(municipality)
    if target is None:
        return trace.triage(UNKNOWN_MUNICIPALITY, cpr.number, f"Kommunekoden {municipality} findes ikke.")
    if not target.participating:
        return trace.triage(
            NOT_PARTICIPATING, cpr.number, f"{target.name} deltager ikke i den fælles postkasse."
        )
    return trace.routed(municipality, target.name, cpr.number)
