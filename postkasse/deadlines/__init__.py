"""Deadlines: the daily emptying and the 8-day handling deadline (rules), where each referral stands
(assess), what is late and the alert mails it gets (alerts), and `postkasse deadlines report` (report).
The periodic check and the alert steps that run it are in `flows.alerts`.

Only the rules are re-exported here: the committee room stamps them on each referral.
"""

from postkasse.deadlines.rules import RuleBook, Rules, rulebook

__all__ = ["RuleBook", "Rules", "rulebook"]
