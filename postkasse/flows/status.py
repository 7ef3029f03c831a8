"""`postkasse status`: the whole mailbox at a glance for an operator at a terminal: each participating
municipality's queue, triage, pipeline work waiting, mail that failed, and when the periodic jobs last
ran. Counts and times only."""

from __future__ import annotations

from datetime import datetime

from postkasse.clock import COPENHAGEN
from postkasse.committee import correspondence, forwarding, triage
from postkasse.deadlines.alerts import last_check
from postkasse.deadlines.assess import assess
from postkasse.deadlines.report import LEVEL_TEXT
from postkasse.deadlines.rules import RuleBook
from postkasse.retention.purge import last_run
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.store.outbox import backlog


def _when(moment: datetime | None) -> str:
    return moment.astimezone(COPENHAGEN).strftime("%Y-%m-%d %H:%M") if moment else "aldrig"


def render(store: Store, now: datetime, rules: RuleBook, municipalities: Municipalities) -> str:
    codes = [m.code for m in municipalities.by_code.values() if m.participating]
    with store.read() as conn:
        found = assess(conn, now, rules, codes)
        waiting = triage.waiting(conn)
        failed = correspondence.failed_mail(conn)
        undelivered = forwarding.undelivered(conn)
        work = backlog(conn)
        checked, purged = last_check(conn), last_run(conn)
    lines = [f"postkasse pr. {_when(now)} (dansk tid)", ""]
    busy = {code: e for code, e in sorted(found.municipalities.items()) if e.waiting or e.level != "ok"}
    lines.append(f"Køer: {len(codes)} deltagende kommuner; {len(busy)} med nye henvendelser")
    for code, emptying in busy.items():
        known = municipalities.get(code)
        lines.append(
            f"  {code} {known.name if known else '?':<24} {LEVEL_TEXT[emptying.level]:<12} "
            f"{emptying.waiting:>4} venter, ældste fra {_when(emptying.oldest_since)}"
        )
    late = sum(1 for f in found.findings if f.level == "breach")
    lines += [
        f"Frister: {len(found.findings)} i varsel eller overskredet, heraf {late} overskredet",
        f"Triage: {len(waiting)} venter på manuel sortering",
        f"Pipeline: {work.get('pending', 0)} trin venter, {work.get('failed', 0)} opgivet",
        f"Fejlet post: {len(failed)}; videresendelser ikke leveret: {len(undelivered)}",
        f"Fristkontrol sidst: {_when(checked)}; sletning efter opbevaringsfrist sidst: {_when(purged)}",
    ]
    return "\n".join(lines)
