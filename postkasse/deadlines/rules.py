"""The handling deadline: 8 calendar days from the moment the mailbox accepted the message.

Counted on the Danish wall clock (Europe/Copenhagen), so a deadline that crosses a daylight-saving change
still falls at the same local time of day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postkasse.clock import COPENHAGEN

HANDLING_DAYS = 8


def handling_deadline(received_at: datetime, days: int = HANDLING_DAYS) -> datetime:
    local = received_at.astimezone(COPENHAGEN)
    due = (local.replace(tzinfo=None) + timedelta(days=days)).replace(tzinfo=COPENHAGEN)
    return due.astimezone(UTC)
