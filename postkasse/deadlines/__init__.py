"""Deadlines: when a referral must be handled, on Danish local time."""

from postkasse.deadlines.rules import HANDLING_DAYS, handling_deadline

__all__ = ["HANDLING_DAYS", "handling_deadline"]
