"""The statistics page's chart, drawn on the server as SVG by pygal: no plotting by hand, no script.

The SVG is shown through an <img>, where a browser runs nothing in it; pygal's configuration script
is taken out anyway, and the answer carries a policy that allows only its own inline style.
"""

from __future__ import annotations

from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from postkasse.committee.stats import Statistics

POLICY = "default-src 'none'; style-src 'unsafe-inline'"
SERIES = (
    ("received", "Modtaget"),
    ("handled", "Behandlet"),
    ("handled_within_deadline", "Behandlet inden for fristen"),
)


def statistics_chart(found: Statistics) -> bytes:
    """Received, handled and handled in time per municipality for the period, as a bar chart."""
    import pygal  # loaded when an operator first asks for the chart
    from pygal.style import DefaultStyle

    per: dict[str, dict[str, int]] = {}
    for row in found.rows:
        counts = per.setdefault(row.municipality_name or row.municipality or "triage", {})
        for name, _ in SERIES:
            counts[name] = counts.get(name, 0) + getattr(row.tally, name)
    chart = pygal.Bar(
        js=[],
        style=DefaultStyle,
        width=900,
        height=420,
        x_label_rotation=30,
        title=f"Henvendelser {found.start:%d.%m.%Y}–{found.end:%d.%m.%Y}",
        no_data_text="Ingen henvendelser i perioden",
        legend_at_bottom=True,
    )
    labels = sorted(per)
    chart.x_labels = labels
    for name, title in SERIES:
        chart.add(title, [per[label][name] for label in labels])
    return _without_script(chart.render_tree())


def _without_script(root: Any) -> bytes:
    """pygal always embeds its configuration as a script; a picture needs none, so it is taken out."""
    for parent in list(root.iter()):
        for child in list(parent):
            if isinstance(child.tag, str) and child.tag.rsplit("}", 1)[-1] == "script":
                parent.remove(child)
    rendered: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
    return rendered
