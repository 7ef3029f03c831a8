"""The committee's pages: the queue, a referral with its actions and attachments, and what falls due."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import RedirectResponse, Response

from postkasse.committee import views
from postkasse.committee.actions import (
    MAX_ID,
    DeadlineException,
    Decision,
    Explanation,
    InternalNote,
    MessageToSender,
    Refused,
    Transfer,
)
from postkasse.committee.sessions import Session
from postkasse.inbox import guard, meeting_form, words
from postkasse.inbox.context import of
from postkasse.pathway import exports
from postkasse.pathway.plan import Meeting

router = APIRouter(include_in_schema=False)

ReferralId = Annotated[int, Path(ge=1, le=MAX_ID)]
TABS = {"new": "Nye", "pulled": "Taget", "handled": "Behandlet"}
# Shown in the browser: the browser's own viewers, never a type that can carry script (no SVG, no HTML).
VIEWABLE = ("application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp")
# An attachment shown inline runs nothing and reaches nothing: a sandbox with no origin.
SANDBOX = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
PDF_POLICY = "default-src 'none'; object-src 'self'; frame-ancestors 'none'"


def committee(session: Session) -> str:
    """The signed-in committee member's municipality; operations users have no queue."""
    if session.user.role != "committee" or session.user.municipality is None:
        raise Refused(403, "forbidden", "Kun koordinationsudvalgets medlemmer har en indbakke.")
    return session.user.municipality


def done(request: Request) -> str | None:
    """The sentence for `?ok=KEY` after a successful action; an unknown key shows nothing."""
    return words.DONE.get(request.query_params.get("ok", ""))


@router.get("/indbakke")
def queue(
    request: Request,
    session: guard.Who,
    fane: str = "new",
    side: Annotated[int, Query(ge=1, le=100_000)] = 1,
    markering: str = "",
) -> Response:
    inbox = of(request)
    code = committee(session)
    state = fane if fane in TABS else "new"
    found = inbox.actions.queue_page(
        session.user.principal(),
        code,
        state,  # type: ignore[arg-type]
        side,
        markering or None,
    )
    municipality = inbox.municipalities.get(code)
    return inbox.page(
        request,
        "queue.html",
        done=done(request),
        queue=found,
        tabs=TABS,
        municipality=municipality.name if municipality else code,
    )


@router.get("/frister")
def due(request: Request, session: guard.Who) -> Response:
    inbox = of(request)
    found = inbox.actions.due(session.user.principal(), committee(session))
    return inbox.page(request, "due.html", due=found)


@router.get("/henvendelser/{referral_id}")
def referral(request: Request, session: guard.Who, referral_id: ReferralId) -> Response:
    inbox = of(request)
    committee(session)
    found = inbox.actions.read(session.user.principal(), referral_id, via="web")
    return _referral_page(request, found, done=done(request))


def _referral_page(request: Request, found: dict[str, Any], status: int = 200, **context: Any) -> Response:
    inbox = of(request)
    own = inbox.rules.for_municipality(found["municipality"])
    context.setdefault("errors", {})
    context.setdefault("failed", "")
    pathway = found.get("pathway")
    last = pathway["meetings"][-1] if pathway and pathway["meetings"] else None
    here = inbox.municipalities.get(found["municipality"] or "")
    return inbox.page(
        request,
        "referral.html",
        status=status,
        referral=found,
        units=here.units if here else (),
        municipalities=sorted(inbox.municipalities.by_code.values(), key=lambda m: m.name),
        plan_lines=meeting_form.as_lines(
            last["plan"] if last else None, last["participants"] if last else []
        ),
        badges=views.detail_badges(found, inbox.clock.now(), own),
        viewable=VIEWABLE,
        **context,
    )


@router.get("/henvendelser/{referral_id}/bilag/{number}")
def attachment(
    request: Request,
    session: guard.Who,
    referral_id: ReferralId,
    number: Annotated[int, Path(ge=1, le=10_000)],
    vis: bool = False,
) -> Response:
    """Download under a safe name; PDFs and images may instead be shown by the browser, sandboxed."""
    committee(session)
    found = of(request).actions.attachment(session.user.principal(), referral_id, number)
    inline = vis and found.content_type in VIEWABLE
    headers = {
        "Content-Disposition": disposition("inline" if inline else "attachment", found.filename),
        "Content-Security-Policy": PDF_POLICY if found.content_type == "application/pdf" else SANDBOX,
    }
    media_type = found.content_type if inline else "application/octet-stream"
    return Response(found.data, media_type=media_type, headers=headers)


def disposition(kind: str, filename: str) -> str:
    """The name as RFC 6266 wants it: an ASCII stand-in, and the real name percent-encoded beside it."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
    return f"{kind}; filename=\"{fallback}\"; filename*=utf-8''{quote(filename, safe='')}"


def _form(model: type[BaseModel], form: dict[str, str]) -> Any:
    """The form as the API's own model, so both check the same rules; blank fields are left out."""
    return model.model_validate({key: value for key, value in form.items() if value.strip()})


def _act(request: Request, session: Session, referral_id: int, name: str, act: Callable[[], Any]) -> Response:
    """Do the action and go back to the referral saying so; a broken rule shows the form's message."""
    try:
        act()
    except ValidationError as exc:
        errors = {str(e["loc"][0]) if e["loc"] else "form": _sentence(e) for e in exc.errors()}
        return _again(request, session, referral_id, name, errors)
    except Refused as exc:
        if exc.status not in (409, 422):
            raise
        return _again(request, session, referral_id, name, {"form": words.REFUSALS.get(exc.code, exc.detail)})
    return RedirectResponse(f"/henvendelser/{referral_id}?ok={name}", status_code=303)


def _sentence(error: Any) -> str:
    """A form's error in Danish where the rule is a plain one; the model's own sentence otherwise."""
    plain = {"missing": "Feltet skal udfyldes.", "string_too_long": "Teksten er for lang."}
    return plain.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")


def _again(
    request: Request, session: Session, referral_id: int, name: str, errors: dict[str, str]
) -> Response:
    found = of(request).actions.read(session.user.principal(), referral_id, via="web")
    return _referral_page(request, found, status=422, errors=errors, failed=name, done=None)


@router.post("/henvendelser/{referral_id}/tag")
def take(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request, session, referral_id, "taget", lambda: actions.pull(session.user.principal(), referral_id)
    )


@router.post("/henvendelser/{referral_id}/svar")
def reply(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        "svar",
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
        "note",
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
        "afgoerelse",
        lambda: actions.decide(session.user.principal(), referral_id, _decision(form)),
    )


def _decision(form: dict[str, str]) -> Decision:
    body: dict[str, Any] = {k: v for k, v in form.items() if v.strip() and not k.startswith("responsible_")}
    if form.get("outcome") == "joint_pathway":
        body["responsible"] = meeting_form.responsible(form)
    result: Decision = Decision.model_validate(body)
    return result


@router.post("/henvendelser/{referral_id}/moede")
def meeting(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        "moede",
        lambda: actions.record_meeting(
            session.user.principal(), referral_id, Meeting.model_validate(meeting_form.meeting(form))
        ),
    )


@router.post("/henvendelser/{referral_id}/forklaring")
def explanation(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    body = {"deadline": "follow_up_meeting", "text": form.get("text", "")}
    return _act(
        request,
        session,
        referral_id,
        "forklaring",
        lambda: actions.explain(session.user.principal(), referral_id, Explanation.model_validate(body)),
    )


@router.post("/henvendelser/{referral_id}/overfoer")
def transfer(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    """To another municipality: this committee sees it no more, so the answer is the queue."""
    committee(session)
    actions = of(request).actions
    body = {key: form.get(key, "").strip() for key in ("municipality", "reason", "note")}
    moved = _act(
        request,
        session,
        referral_id,
        "overfoer",
        lambda: actions.transfer(session.user.principal(), referral_id, Transfer.model_validate(body)),
    )
    if moved.status_code == 303:
        return RedirectResponse("/indbakke?ok=overfoert", status_code=303)
    return moved


@router.get("/henvendelser/{referral_id}/handleplan.pdf")
def plan_pdf(request: Request, session: guard.Who, referral_id: ReferralId) -> Response:
    """The newest action plan, printable for the family."""
    committee(session)
    found = of(request).actions.plan(session.user.principal(), referral_id)
    return Response(
        exports.pdf(found),
        media_type="application/pdf",
        headers={
            "Content-Disposition": disposition("inline", f"handleplan-{found.reference}.pdf"),
            "Content-Security-Policy": PDF_POLICY,
        },
    )


@router.post("/henvendelser/{referral_id}/undtagelse")
def exception(request: Request, session: guard.Who, form: guard.Form, referral_id: ReferralId) -> Response:
    committee(session)
    actions = of(request).actions
    return _act(
        request,
        session,
        referral_id,
        "undtagelse",
        lambda: actions.record_exception(
            session.user.principal(), referral_id, _form(DeadlineException, form)
        ),
    )
