"""The action plan printed for the family: Danish, one PDF, rendered from an autoescaped Jinja2 template
(templates/plan.html, print stylesheet inside) by WeasyPrint, with no network access while rendering.

Everything the plan says is put into the page as text: the template autoescapes, so a `<script>` typed into
a field is printed as the characters `<script>`. WeasyPrint may fetch only data: URLs; the template links to
nothing, so the fetcher is a guard, not a source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import jinja2
import weasyprint

from postkasse.clock import COPENHAGEN
from postkasse.pathway.plan import MEETING_NAMES, RELATION_NAMES, ActionPlan

MONTHS = (
    "januar", "februar", "marts", "april", "maj", "juni",
    "juli", "august", "september", "oktober", "november", "december",
)  # fmt: skip

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("postkasse.pathway", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def pdf(plan: ActionPlan) -> bytes:
    """The plan as a printable PDF in Danish for the family."""
    document = weasyprint.HTML(string=html(plan), base_url=None, url_fetcher=_no_network())
    rendered: bytes = document.write_pdf()
    return rendered


def html(plan: ActionPlan) -> str:
    """The plan as the HTML page the PDF is printed from."""
    return _templates.get_template("plan.html").render(plan=plan, words=_words(plan))


def danish_date(day: date) -> str:
    """'14. januar 2027'."""
    return f"{day.day}. {MONTHS[day.month - 1]} {day.year}"


def danish_time(moment: datetime) -> str:
    """'3. december 2026 kl. 10.00', Copenhagen time."""
    local = moment.astimezone(COPENHAGEN)
    return f"{danish_date(local.date())} kl. {local:%H.%M}"


def cpr_text(cpr: str | None) -> str:
    """DDMMYY-SSSS, or empty when the CPR is not known."""
    if not cpr:
        return ""
    digits = cpr.replace("-", "")
    return f"{digits[:6]}-{digits[6:]}" if len(digits) == 10 else cpr


@dataclass(frozen=True)
class _Words:
    """What the template prints that is not a field as it stands."""

    held_at: str
    cpr: str
    meeting: str
    next_meeting: str
    relations: list[str]


def _words(plan: ActionPlan) -> _Words:
    next_meeting = plan.content.next_meeting
    return _Words(
        held_at=danish_time(plan.held_at),
        cpr=cpr_text(plan.cpr),
        meeting=MEETING_NAMES[plan.meeting_kind],
        next_meeting=danish_date(next_meeting) if next_meeting else "",
        relations=[RELATION_NAMES[g.relation] for g in plan.content.guardians],
    )


def _no_network() -> weasyprint.URLFetcher:
    """A fetcher that refuses every URL but data: (a refused one is left out, with a warning logged)."""
    return weasyprint.URLFetcher(allowed_protocols={"data"}, allow_redirects=False, timeout=1)
