"""Routing: CPR rules, facts from messages, reference data, and the policy that decides the queue."""

from postkasse.routing.cpr import Cpr, InvalidCpr, ReplacementCpr
from postkasse.routing.facts import Address, Facts
from postkasse.routing.policy import AgeRange, Decision, decide

__all__ = ["Address", "AgeRange", "Cpr", "Decision", "Facts", "InvalidCpr", "ReplacementCpr", "decide"]
