"""The committee's pages: the queue, a referral with its actions, and what falls due."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import RedirectResponse, Response

from postkasse.committee.actions import (
    MAX_ID,
    DeadlineException,
    Decision,
    InternalNote,
    MessageToSender,
    Refused,
)
from postkasse.committee.sessions import Session
from postkasse.inbox import guard
from postkasse.inbox.context import of

router = APIRouter(include_in_schema=False)

ReferralId = Annotated[int, Path(ge=1, le=MAX_ID)]
TABS = {"new": "Nye", "pulled": "Taget", "handled": "Behandlet"}


def committee(session: Session) -> str:
    """The signed-in committee member's municipality; operations users have no queue."""
    if session.user.role != "committee" or session.user.municipality is None:
        raise Refused(403, "forbidden", "Kun koordinationsudvalgets medlemmer har en indbakke.")
    return session.user.municipality


@router.get("/indbakke")
def queue(request: Request, session: guard.Who, fane: str = "new") -> Response:
    inbox = of(request)
    code = committee(session)
    state = fane if fane in TABS else "new"
    rows = inbox.actions.queue(session.user.principal(), code, state)  # type: ignore[arg-type]
    return inbox.page(request, "queue.html", rows=rows, tab=state, tabs=TABS)


@router.get("/henvendelser/{referral_id}")
def referral(request: Request, session: guard.Who, referral_id: ReferralId) -> Response:
    inbox = of(request)
    committee(session)
    found = inbox.actions.read(session.user.principal(), referral_id, via="web")
    return inbox.page(request, "referral.html", referral=found, errors={})


def _form(model: type[BaseModel], form: dict[str, str]) -> Any:
    """The form as the API's own model, so both check the same rules; blank fields are left out."""
    return model.model_validate({key: value for key, value in form.items() if value.strip()})


def _act(request: Request, session: Session, referral_id: int, act: Any) -> Response:
    """Do the action; on a rule broken show the referral again with the field's message, else go back."""
    inbox = of(request)
    try:
        act()
    except ValidationError as exc:
        errors = {
            str(e["loc"][0]) if e["loc"] else "form": str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        }
        found = inbox.actions.read(session.user.principal(), referral_id, via="web")
        return inbox.page(request, "referral.html", status=422, referral=found, errors=errors)
    return RedirectResponse(f"/henvendelser/{referral_id}", status_code=303)


@router.post("/henvendelser/{referral_id}/tag")
def take(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    return _act(
        request, session, referral_id, lambda: of(request).actions.pull(session.user.principal(), referral_id)
    )


@router.post("/henvendelser/{referral_id}/svar")
def reply(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        lambda: actions.write_to_sender(session.user.principal(), referral_id, _form(MessageToSender, form)),
    )


@router.post("/henvendelser/{referral_id}/note")
def note(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        lambda: actions.note(session.user.principal(), referral_id, _form(InternalNote, form)),
    )


@router.post("/henvendelser/{referral_id}/afgoerelse")
def decide(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        lambda: actions.decide(session.user.principal(), referral_id, _form(Decision, form)),
    )


@router.post("/henvendelser/{referral_id}/undtagelse")
def exception(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        lambda: actions.record_exception(
            session.user.principal(), referral_id, _form(DeadlineException, form)
        ),
    )
