"""Operations' pages: every queue at a glance, triage to sort by hand, mail that failed, the statistics.

Operators see reasons, counts and times, never what a referral says: the same rule as the API's
operations endpoints, because these pages call the same actions.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from postkasse.clock import COPENHAGEN
from postkasse.committee.actions import MAX_ID, Assignment, Refused
from postkasse.committee.sessions import Session
from postkasse.committee.stats import Statistics
from postkasse.inbox import charts, guard, words
from postkasse.inbox.context import of

router = APIRouter(include_in_schema=False)

ReferralId = Annotated[int, Path(ge=1, le=MAX_ID)]


def operations(session: Session) -> None:
    if session.user.role != "ops":
        raise Refused(403, "forbidden", "Kun driften har adgang til denne side.")


@router.get("/drift")
def overview(request: Request, session: guard.Who) -> Response:
    operations(session)
    inbox = of(request)
    found = inbox.actions.overview(session.user.principal())
    rank = {"breach": 0, "warning": 1, "ok": 2}
    queues = sorted(
        found.assessment.municipalities.items(),
        key=lambda item: (rank[item[1].level], -item[1].waiting, item[0]),
    )
    return inbox.page(
        request,
        "ops_overview.html",
        overview=found,
        queues=[
            (code, inbox.municipalities.get(code), e) for code, e in queues if e.waiting or e.level != "ok"
        ],
        quiet=sum(1 for _, e in queues if not e.waiting and e.level == "ok"),
    )


@router.get("/drift/triage")
def triage(request: Request, session: guard.Who) -> Response:
    operations(session)
    return _triage_page(request, session)


def _triage_page(request: Request, session: Session, status: int = 200, **context: object) -> Response:
    inbox = of(request)
    found = inbox.actions.triage(session.user.principal())
    choices = sorted(
        (m for m in inbox.municipalities.by_code.values() if m.participating), key=lambda m: m.name
    )
    context.setdefault("errors", {})
    context.setdefault("done", words.DONE.get(request.query_params.get("ok", "")))
    return inbox.page(
        request, "ops_triage.html", status=status, referrals=found["referrals"], choices=choices, **context
    )


@router.post("/drift/triage/{referral_id}/tildel")
def assign(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    operations(session)
    actions = of(request).actions
    try:
        body = Assignment.model_validate(
            {"municipality": form.get("municipality", ""), "note": form.get("note", "").strip()}
        )
        actions.assign(session.user.principal(), referral_id, body)
    except ValidationError:
        return _triage_page(
            request, session, 422, errors={referral_id: "Vælg en kommune og skriv en begrundelse."}
        )
    except Refused as exc:
        if exc.status not in (409, 422):
            raise
        return _triage_page(
            request, session, 422, errors={referral_id: words.REFUSALS.get(exc.code, exc.detail)}
        )
    return RedirectResponse("/drift/triage?ok=tildelt", status_code=303)


@router.get("/drift/fejlet-post")
def failed_mail(request: Request, session: guard.Who) -> Response:
    operations(session)
    inbox = of(request)
    found = inbox.actions.triage(session.user.principal())
    return inbox.page(
        request,
        "ops_failed.html",
        mails=found["failed_mail"],
        undelivered=found["undelivered_forwards"],
        done=words.DONE.get(request.query_params.get("ok", "")),
    )


@router.post("/drift/videresendelser/{referral_id}/igen")
def retry_forward(
    request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId
) -> Response:
    operations(session)
    of(request).actions.retry_forward(session.user.principal(), referral_id)
    return RedirectResponse("/drift/fejlet-post?ok=sendt-igen", status_code=303)


@router.post("/drift/fejlet-post/{mail_id}/igen")
def retry(request: Request, session: guard.Who, form: guard.Form, mail_id: ReferralId) -> Response:
    operations(session)
    of(request).actions.retry_mail(session.user.principal(), mail_id)
    return RedirectResponse("/drift/fejlet-post?ok=sendt-igen", status_code=303)


def _period(request: Request) -> tuple[date, date]:
    """The chosen period (`?fra=&til=`, days as YYYY-MM-DD); this month so far when none is chosen."""
    today = of(request).clock.now().astimezone(COPENHAGEN).date()
    try:
        start = date.fromisoformat(request.query_params.get("fra") or today.replace(day=1).isoformat())
        end = date.fromisoformat(request.query_params.get("til") or today.isoformat())
    except ValueError:
        raise Refused(422, "invalid_period", "Datoerne skal skrives som ÅÅÅÅ-MM-DD.") from None
    if start > end:
        raise Refused(422, "invalid_period", "Periodens første dag ligger efter den sidste.")
    return start, end


def _stats(request: Request, session: Session) -> Statistics:
    operations(session)
    start, end = _period(request)
    return of(request).actions.stats(session.user.principal(), start, end)


@router.get("/drift/statistik")
def statistics(request: Request, session: guard.Who) -> Response:
    found = _stats(request, session)
    query = f"fra={found.start.isoformat()}&til={found.end.isoformat()}"
    return of(request).page(request, "ops_stats.html", stats=found, query=query)


@router.get("/drift/statistik.svg")
def chart(request: Request, session: guard.Who) -> Response:
    found = _stats(request, session)
    return Response(
        charts.statistics_chart(found),
        media_type="image/svg+xml",
        headers={"Content-Security-Policy": charts.POLICY},
    )


@router.get("/drift/statistik.csv")
def csv(request: Request, session: guard.Who) -> Response:
    found = _stats(request, session)
    name = f"postkasse-statistik-{found.start.isoformat()}-{found.end.isoformat()}.csv"
    return Response(
        found.as_csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
