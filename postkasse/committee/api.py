"""The committee HTTP API: each committee pulls its own queue, reads, decides and writes to the sender.

A committee token sees only its own municipality: any other referral answers 404, so existence is not
revealed. The ops scope sees triage and failed mail, never referral contents. Every read of a referral
and every change writes an audit row. Errors are JSON with a stable `code` and a sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from postkasse import errors, kinds, logs
from postkasse.clock import Clock
from postkasse.committee import views
from postkasse.committee.actions import (
    MAX_ID,
    OPS_ONLY,
    Actions,
    Assignment,
    DeadlineException,
    Decision,
    Explanation,
    InternalNote,
    MessageToSender,
    QueueState,
    Refused,
    Transfer,
)
from postkasse.committee.audit import AuditLog
from postkasse.committee.correspondence import MedcomWriter
from postkasse.committee.tokens import Authenticator, Principal
from postkasse.deadlines.rules import RuleBook
from postkasse.pathway import exports
from postkasse.pathway.plan import Meeting
from postkasse.pipeline import Next, Pipeline
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Received, Store, Stored, StoreUnavailable
from postkasse.store import medcom as medcom_store
from postkasse.store import messages as messages_store
from postkasse.store.schema import messages

PAGE = 50
log = logs.get(__name__)
SUBMISSION_TYPES = frozenset({"application/xml", "text/xml", "application/fhir+xml", "application/fhir+json"})
RETRY_AFTER_SECONDS = 5  # a busy store (SQLite's write lock) is free again within seconds

ReferralId = Annotated[int, Path(ge=1, le=MAX_ID, description="the referral's id")]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="the id the API gave it")]


ApiError = Refused


@dataclass
class Api:
    store: Store
    authenticator: Authenticator
    clock: Clock
    municipalities: Municipalities
    pipeline: Pipeline
    dispatch: Callable[[Sequence[Next]], None]
    from_address: str
    audit_log: AuditLog
    rules: RuleBook
    max_submission_bytes: int = 25 * 1024 * 1024
    medcom: MedcomWriter | None = None
    actions: Actions = field(init=False)

    def __post_init__(self) -> None:
        self.actions = Actions(
            self.store,
            self.clock,
            self.municipalities,
            self.pipeline,
            self.dispatch,
            self.from_address,
            self.audit_log,
            self.rules,
            self.medcom,
        )


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from its bearer token; 401 without a valid one."""
    api: Api = request.app.state.api
    scheme, _, token = (authorization or "").partition(" ")
    found = api.authenticator.authenticate(token) if scheme.lower() == "bearer" and token else None
    if found is None:
        raise ApiError(401, "unauthorized", "A valid bearer token is needed.")
    return found


Caller = Annotated[Principal, Depends(principal)]


def create_router(api: Api) -> APIRouter:
    router = APIRouter(prefix="/api/v1")

    act = api.actions

    @router.get("/municipalities/{code}/referrals", tags=["committee"])
    def list_referrals(
        code: str,
        who: Caller,
        state: QueueState = "new",
        cursor: Annotated[int, Query(ge=0, le=MAX_ID, description="the last id of the previous page")] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE,
    ) -> JSONResponse:
        """The municipality's queue, oldest first, a page at a time.

        Read endpoints answer JSON directly: re-validating the dicts they build cost half of a read's CPU."""
        items = [views.summary(r) for r in act.queue(who, code, state, cursor, limit)]
        return JSONResponse({"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None})

    @router.get("/municipalities/{code}/units", tags=["committee"])
    def list_units(code: str, who: Caller) -> JSONResponse:
        """The municipality's units a referral can be forwarded to (`unit` in a `forwarded` decision)."""
        return JSONResponse({"items": act.units(who, code)})

    @router.get("/referrals/{referral_id}", tags=["committee"])
    def get_referral(referral_id: ReferralId, who: Caller) -> JSONResponse:
        """The referral: facts, routing reasons, sender, attachments, thread and deadline."""
        return JSONResponse(act.read(who, referral_id))

    @router.get(
        "/referrals/{referral_id}/raw",
        tags=["committee"],
        responses={200: {"content": {"message/rfc822": {}}}},
    )
    def get_raw(referral_id: ReferralId, who: Caller) -> Response:
        """The message exactly as it was received."""
        return Response(act.raw(who, referral_id), media_type="message/rfc822")

    @router.post("/referrals/{referral_id}/pull", tags=["committee"])
    def pull(referral_id: ReferralId, who: Caller) -> dict[str, Any]:
        """The committee has taken the referral out of the mailbox."""
        return act.pull(who, referral_id)

    @router.post("/referrals/{referral_id}/decision", tags=["committee"])
    def decide(referral_id: ReferralId, decision: Decision, who: Caller) -> dict[str, Any]:
        """Forwarded to a unit, returned with a reason, a joint pathway started, or closed."""
        return act.decide(who, referral_id, decision)

    @router.post("/referrals/{referral_id}/transfer", tags=["committee"])
    def transfer(referral_id: ReferralId, body: Transfer, who: Caller) -> dict[str, Any]:
        """Move the referral to another municipality: `moved` or `wrong_municipality`, with a note. It
        arrives there as new (in triage when that municipality does not take part); this committee
        sees it no more."""
        return act.transfer(who, referral_id, body)

    @router.post("/referrals/{referral_id}/exception", tags=["committee"])
    def record_exception(referral_id: ReferralId, body: DeadlineException, who: Caller) -> dict[str, Any]:
        """Stop the handling clock: an authority case or a medical reason, with a note. Audited."""
        return act.record_exception(who, referral_id, body)

    @router.post("/referrals/{referral_id}/messages", tags=["committee"], status_code=202)
    def message_sender(referral_id: ReferralId, body: MessageToSender, who: Caller) -> dict[str, Any]:
        """A message to the sender, sent as mail with the referral's reference; replies join the thread."""
        return {"status": "queued", "reference": act.write_to_sender(who, referral_id, body)}

    @router.post("/referrals/{referral_id}/meetings", tags=["joint pathway"], status_code=201)
    def record_meeting(referral_id: ReferralId, body: Meeting, who: Caller) -> dict[str, Any]:
        """A meeting of the joint pathway (opstart, opfoelgning, afslutning) with the action plan as it
        stood afterwards; sets the next meeting's deadline, and `afslutning` closes the pathway."""
        return act.record_meeting(who, referral_id, body)

    @router.get("/referrals/{referral_id}/meetings", tags=["joint pathway"])
    def list_meetings(referral_id: ReferralId, who: Caller) -> JSONResponse:
        """The pathway's meetings, oldest first, each with its version of the plan."""
        return JSONResponse({"items": act.meetings(who, referral_id)})

    @router.get(
        "/referrals/{referral_id}/plan",
        tags=["joint pathway"],
        responses={200: {"content": {"application/fhir+json": {}, "application/pdf": {}}}},
    )
    def get_plan(referral_id: ReferralId, who: Caller, accept: Annotated[str, Header()] = "") -> Response:
        """The newest action plan: JSON; a FHIR R4 Bundle with `Accept: application/fhir+json`; a printable
        plan for the family with `Accept: application/pdf`."""
        found = act.plan(who, referral_id)
        wanted = accept.lower()
        if "application/fhir+json" in wanted:
            return JSONResponse(exports.bundle(found), media_type="application/fhir+json")
        if "application/pdf" in wanted:
            return Response(
                exports.pdf(found),
                media_type="application/pdf",
                headers={"Content-Disposition": f'inline; filename="handleplan-{found.reference}.pdf"'},
            )
        return JSONResponse(found.model_dump(mode="json"))

    @router.post("/referrals/{referral_id}/explanations", tags=["joint pathway"], status_code=201)
    def explain(referral_id: ReferralId, body: Explanation, who: Caller) -> dict[str, Any]:
        """A written explanation of why the follow-up meeting is not held in time; stops that clock."""
        return act.explain(who, referral_id, body)

    @router.post("/referrals/{referral_id}/notes", tags=["committee"], status_code=201)
    def add_note(referral_id: ReferralId, body: InternalNote, who: Caller) -> dict[str, Any]:
        """A note for colleagues (intern note): kept with the referral's history, never sent."""
        return act.note(who, referral_id, body)

    def sender_only(who: Principal) -> None:
        if who.scope != "sender":
            raise ApiError(403, "forbidden", "Only a sender's token may submit and fetch MedCom documents.")

    @router.post(
        "/messages",
        tags=["senders"],
        status_code=202,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {t: {"schema": {"type": "string"}} for t in sorted(SUBMISSION_TYPES)},
            }
        },
    )
    async def submit(request: Request, who: Caller) -> JSONResponse:
        """A MedCom document (OIOXML, FHIR XML or JSON). 202 once it is stored; its receipt or
        acknowledgement is fetched from `answers` when ready."""
        sender_only(who)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in SUBMISSION_TYPES:
            raise ApiError(
                415, "unsupported_media_type", f"Send one of {', '.join(sorted(SUBMISSION_TYPES))}."
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > api.max_submission_bytes:
            raise ApiError(413, "too_large", f"A document may be at most {api.max_submission_bytes} bytes.")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > api.max_submission_bytes:
                raise ApiError(
                    413, "too_large", f"A document may be at most {api.max_submission_bytes} bytes."
                )
        if not body.strip():
            raise ApiError(422, "invalid_request", "body: the document is empty.")
        peer = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        received = Received(
            "http", f"api:{who.name}", (), peer, request.url.scheme == "https", api.clock.now(), bytes(body)
        )
        stored = await run_in_threadpool(_store_submission, api, received)
        api.dispatch([Next(stored.outbox_id, stored.kind)])
        return JSONResponse(
            {
                "message": stored.message_id,
                "status": "accepted",
                "answers": f"/api/v1/messages/{stored.message_id}/answers",
            },
            status_code=202,
        )

    @router.get("/messages/{message_id}/answers", tags=["senders"])
    def message_answers(message_id: ItemId, who: Caller) -> dict[str, Any]:
        """The answers to one submitted document: `pending` until it has been read and routed."""
        sender_only(who)
        with api.store.read() as conn:
            owner = conn.execute(select(messages.c.mail_from).where(messages.c.id == message_id)).scalar()
            if owner != f"api:{who.name}":
                raise ApiError(404, "not_found", "No such message from this sender.")
            found = medcom_store.answers_for(conn, message_id)
            done = found or medcom_store.was_read(conn, message_id)
        return {"message": message_id, "status": "done" if done else "pending", "answers": found}

    @router.get("/answers", tags=["senders"])
    def list_answers(
        who: Caller,
        cursor: Annotated[int, Query(ge=0, le=MAX_ID, description="the last id of the previous page")] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE,
    ) -> dict[str, Any]:
        """Every answer and committee document for this sender, oldest first: the sender's inbox."""
        sender_only(who)
        with api.store.read() as conn:
            items = medcom_store.answers_to(conn, f"api:{who.name}", cursor, limit)
        return {"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None}

    @router.get(
        "/answers/{answer_id}",
        tags=["senders"],
        responses={200: {"content": {t: {} for t in sorted(SUBMISSION_TYPES)}}},
    )
    def get_answer(answer_id: ItemId, who: Caller) -> Response:
        """One answer document, byte for byte, in the format the sender's document came in."""
        sender_only(who)
        with api.store.read() as conn:
            found = medcom_store.answer(conn, answer_id, f"api:{who.name}")
        if found is None:
            raise ApiError(404, "not_found", "No such answer for this sender.")
        return Response(found.body, media_type=found.content_type)

    @router.get("/triage", tags=["operations"])
    def list_triage(who: Caller) -> dict[str, Any]:
        """What could not be routed, and mail that could not be sent: reasons, never contents."""
        return act.triage(who)

    @router.post("/triage/{referral_id}/assign", tags=["operations"])
    def assign(referral_id: ReferralId, body: Assignment, who: Caller) -> dict[str, Any]:
        """Send a triaged referral to a municipality's queue, with a note saying why."""
        act.assign(who, referral_id, body)
        return {"id": referral_id, "state": "new", "municipality": body.municipality}

    def ops_scope(who: Caller) -> None:
        """Refuses other tokens before the query is validated, so they learn nothing from a 422."""
        if who.scope != "ops":
            raise OPS_ONLY

    @router.post("/triage/mail/{mail_id}/retry", tags=["operations"], status_code=202)
    def retry_mail(mail_id: Annotated[int, Path(ge=1, le=MAX_ID)], who: Caller) -> dict[str, Any]:
        """Send a mail that failed for good once more (after the relay or the address is fixed)."""
        act.retry_mail(who, mail_id)
        return {"status": "queued", "id": mail_id}

    @router.post("/triage/forwards/{referral_id}/retry", tags=["operations"], status_code=202)
    def retry_forward(referral_id: ReferralId, who: Caller) -> dict[str, Any]:
        """Send an undelivered forward to its unit again, as the unit is configured now."""
        act.retry_forward(who, referral_id)
        return {"status": "queued", "id": referral_id}

    @router.get("/subjects/{cpr}", tags=["operations"])
    def subject_access(
        cpr: Annotated[str, Path(max_length=11)],
        who: Caller,
        reason: Annotated[str, Query(max_length=500)] = "",
    ) -> JSONResponse:
        """Everything kept about one person (GDPR art. 15): an ops token with the `subject_access` right,
        and a `reason`; audited."""
        return JSONResponse({"referrals": act.subject(who, cpr, reason)})

    @router.get("/stats", tags=["operations"], dependencies=[Depends(ops_scope)])
    def get_stats(
        who: Caller,
        start: Annotated[date, Query(alias="from", description="the first Danish day, YYYY-MM-DD")],
        end: Annotated[date, Query(alias="to", description="the last Danish day, inclusive")],
    ) -> JSONResponse:
        """The pilot's numbers per municipality and sender kind: counts only, no personal data."""
        return JSONResponse(act.stats(who, start, end).as_json())

    return router


def _store_submission(api: Api, received: Received) -> Stored:
    with api.store.write() as conn:
        (stored,) = messages_store.save(
            conn, [received], kinds.PARSE, received.received_at + api.pipeline.lease
        )
    return stored


class ContainFailures:
    """An unforeseen failure answers 500 with a JSON code, and is logged by its type and frames only: the text
    of a store's or a parser's exception may quote a name or a CPR number, and the server would log it whole.
    Plain ASGI, so it costs a request nothing while nothing fails."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            log.error(
                "request failed", method=scope["method"], error=errors.describe(exc), trace=errors.trace(exc)
            )
            if not started:
                failed = JSONResponse(
                    {
                        "code": "internal_error",
                        "detail": "The request failed; operations can see why in the log.",
                    },
                    status_code=500,
                )
                await failed(scope, receive, send)


def install(app: FastAPI, api: Api) -> None:
    app.state.api = api
    app.include_router(create_router(api))
    app.add_middleware(ContainFailures)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"code": exc.code, "detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            {
                "code": "store_unavailable",
                "detail": "The store is busy or cannot be reached; try again shortly.",
            },
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
            message = str(e["msg"]).removeprefix("Value error, ")
            named, colon, rest = message.partition(": ")
            if colon and field == "body" and named.isidentifier():
                field, message = named, rest  # a rule across fields names the one at fault
            errors.append({"field": field, "message": message})
        sentence = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse(
            {"code": "invalid_request", "detail": sentence, "errors": errors}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "detail": str(exc.detail)}, status_code=exc.status_code)
