"""Our reference for a referral (`PK-000123`): senders see it in receipts, subjects and MedCom answers,
and it finds the referral again when they answer."""

from __future__ import annotations

import re

REFERENCE = re.compile(r"\bPK-(\d{6,12})\b")


def reference(referral_id: int) -> str:
    """Our reference for a referral, as senders see it in receipts and subjects."""
    return f"PK-{referral_id:06d}"


def referral_from_reference(text: str) -> int | None:
    match = REFERENCE.search(text)
    return int(match.group(1)) if match else None
