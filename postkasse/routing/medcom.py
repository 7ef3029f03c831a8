"""Facts from a MedCom letter: what routing may use of what `medcom.parse` read."""

from __future__ import annotations

import re

from postkasse.medcom.document import Letter
from postkasse.routing.facts import Facts


def facts(letter: Letter) -> Facts:
    """What routing may use from one letter; a receiver named by kommunenummer is an explicit municipality."""
    return Facts(
        cprs=(re.sub(r"[\s-]", "", letter.cpr),) if letter.cpr else (),
        name=letter.patient_name,
        address=letter.address,
        receiver_municipality=letter.receiver.municipality,
        subject=letter.subject,
        urgent=letter.urgent,
        source="medcom",
    )
