"""Deadlines: the daily emptying and the 8-day handling deadline (rules), where each referral stands
(assess), the check that sends alerts (alerts), and `postkasse deadlines report` (report).

Only the rules are re-exported here: the committee room uses them, and the other modules use the committee's.
"""

from postkasse.deadlines.rules import RuleBook, Rules, rulebook

__all__ = ["RuleBook", "Rules", "rulebook"]
