"""A deadline as a short Danish text a person reads at a glance: "frist i dag", "overskredet 2 dage".

Counted in Copenhagen calendar days, so "i morgen" means tomorrow where the reader sits. The level
(ok, warning, breach, stopped) carries the colour; the text alone must say the same, for readers who do
not see colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from postkasse.clock import COPENHAGEN
from postkasse.deadlines.assess import level

NAMES = {
    "emptying": "Tømning",
    "handling": "Behandling",
    "startup_meeting": "Opstartsmøde",
    "follow_up_meeting": "Opfølgningsmøde",
}


@dataclass(frozen=True)
class Badge:
    deadline: str  # emptying | handling | startup_meeting | follow_up_meeting
    level: str  # ok | warning | breach | stopped
    text: str

    @property
    def name(self) -> str:
        return NAMES[self.deadline]


def badge(deadline: str, now: datetime, warn_at: datetime, due_at: datetime, stopped: bool = False) -> Badge:
    """Where one deadline stands at `now`; a stopped clock (an exception) reads "undtaget"."""
    if stopped:
        return Badge(deadline, "stopped", "undtaget")
    today = now.astimezone(COPENHAGEN).date()
    due_day = due_at.astimezone(COPENHAGEN).date()
    if now >= due_at:
        late = (today - due_day).days
        text = "overskredet" if late == 0 else f"overskredet {late} {'dag' if late == 1 else 'dage'}"
        return Badge(deadline, "breach", text)
    ahead = (due_day - today).days
    text = {0: "frist i dag", 1: "frist i morgen"}.get(ahead, f"frist om {ahead} dage")
    return Badge(deadline, level(now, warn_at, due_at) or "ok", text)
