"""What kind of sender a message came from, for the pilot's statistics, by address patterns in configuration:
a GP clinic, child and adolescent psychiatry (BUC) or a somatic children's ward; anything else is `other`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase


class SenderKinds:
    def __init__(self, patterns: Iterable[tuple[str, Sequence[str]]]) -> None:
        self.patterns = [(p.lower(), kind) for kind, listed in patterns for p in listed]

    def classify(self, address: str) -> str:
        """The first kind with a pattern (`*@laegehus.dk`, `buc@rm.dk`) matching the address."""
        address = address.lower()
        for pattern, kind in self.patterns:
            if fnmatchcase(address, pattern):
                return kind
        return "other"
