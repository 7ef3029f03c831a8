"""The committee HTTP API: each committee pulls its own queue, reads, decides and writes to the sender.

A committee token sees only its own municipality: any other referral answers 404, so existence is not
revealed. The ops scope sees triage and failed mail, never referral contents. Every read of a referral
and every change writes an audit row. Errors are JSON with a stable `code` and a sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Connection, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from postkasse import errors, kinds, logs
from postkasse.clock import Clock
from postkasse.committee import audit, correspondence, referrals, triage, views
from postkasse.committee.stats import statistics
from postkasse.committee.tokens import Authenticator, Principal
from postkasse.deadlines.rules import RuleBook
from postkasse.pipeline import Next, Pipeline
from postkasse.reference import reference
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Received, Store, Stored, StoreUnavailable
from postkasse.store import medcom as medcom_store
from postkasse.store import messages as messages_store
from postkasse.store.schema import messages
from postkasse.store.schema import referrals as referrals_table

T = TypeVar("T")

PAGE = 50
log = logs.get(__name__)
SUBMISSION_TYPES = frozenset({"application/xml", "text/xml", "application/fhir+xml", "application/fhir+json"})
RETRY_AFTER_SECONDS = 5  # a busy store (SQLite's write lock) is free again within seconds
MAX_ID = 2**63 - 1  # the store's ids are 64-bit; anything larger names nothing

ReferralId = Annotated[int, Path(ge=1, le=MAX_ID, description="the referral's id")]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="the id the API gave it")]


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


NOT_FOUND = ApiError(404, "not_found", "No such referral.")


@dataclass
class Api:
    store: Store
    authenticator: Authenticator
    clock: Clock
    municipalities: Municipalities
    pipeline: Pipeline
    dispatch: Callable[[Sequence[Next]], None]
    from_address: str
    audit_log: audit.AuditLog
    rules: RuleBook
    max_submission_bytes: int = 25 * 1024 * 1024
    medcom: correspondence.MedcomWriter | None = None


ReturnReason = Literal[
    "missing_information", "ppr_not_involved", "not_target_group", "wrong_municipality", "other"
]


class Decision(BaseModel):
    outcome: Literal["forwarded", "returned", "joint_pathway", "closed"]
    unit: str | None = Field(None, max_length=200, description="the unit forwarded to; needed for forwarded")
    reason: str | None = Field(None, max_length=2000, description="why it is returned; needed for returned")
    reason_code: ReturnReason | None = Field(
        None, description="returned: the reason as counted in the statistics; `other` when not given"
    )
    note: str | None = Field(None, max_length=4000)

    @model_validator(mode="after")
    def _detail(self) -> Decision:
        if self.outcome == "forwarded" and not (self.unit and self.unit.strip()):
            raise ValueError("unit: forwarding names the unit that takes the case")
        if self.outcome == "returned" and not (self.reason and self.reason.strip()):
            raise ValueError("reason: returning a referral (tilbagevisning) needs the reason")
        return self


class DeadlineException(BaseModel):
    reason: Literal["authority_case", "medical_reason"] = Field(
        ..., description="authority_case: sag af myndighedskarakter; medical_reason: lægefagligt hensyn"
    )
    note: str = Field(..., min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _note(self) -> DeadlineException:
        if not self.note.strip():
            raise ValueError("note: an exception needs a note saying why")
        return self


class MessageToSender(BaseModel):
    text: str = Field(..., min_length=1, max_length=20000)


class Assignment(BaseModel):
    municipality: str = Field(..., pattern=r"^\d{4}$")
    note: str = Field(..., min_length=1, max_length=2000)


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

    def visible(conn: Connection, who: Principal, referral_id: int) -> Any:
        row = conn.execute(
            select(referrals_table.c.id, referrals_table.c.municipality, referrals_table.c.state).where(
                referrals_table.c.id == referral_id
            )
        ).one_or_none()
        if row is None or not who.sees(row.municipality):
            raise NOT_FOUND
        return row

    def ops_only(who: Principal) -> None:
        if who.scope != "ops":
            raise ApiError(403, "forbidden", "Only an operations token may do this.")

    @router.get("/municipalities/{code}/referrals", tags=["committee"])
    def list_referrals(
        code: str,
        who: Caller,
        state: Literal["new", "pulled", "handled"] = "new",
        cursor: Annotated[int, Query(ge=0, le=MAX_ID, description="the last id of the previous page")] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE,
    ) -> JSONResponse:
        """The municipality's queue, oldest first, a page at a time.

        Read endpoints answer JSON directly: re-validating the dicts they build cost half of a read's CPU."""
        if not who.sees(code):
            raise ApiError(404, "not_found", "No such queue.")
        with api.store.read() as conn:
            rows = conn.execute(
                select(*views.SUMMARY_COLUMNS)
                .where(
                    referrals_table.c.municipality == code,
                    referrals_table.c.state == state,
                    referrals_table.c.id > cursor,
                )
                .order_by(referrals_table.c.id)
                .limit(limit)
            ).all()
        api.audit_log.record(
            who.name, "list", None, api.clock.now(), municipality=code, state=state, count=len(rows)
        )
        items = [views.summary(r) for r in rows]
        return JSONResponse({"items": items, "next_cursor": items[-1]["id"] if len(items) == limit else None})

    @router.get("/referrals/{referral_id}", tags=["committee"])
    def get_referral(referral_id: ReferralId, who: Caller) -> JSONResponse:
        """The referral: facts, routing reasons, sender, attachments, thread and deadline."""
        with api.store.read() as conn:
            visible(conn, who, referral_id)
            found = views.detail(conn, referral_id)
        assert found is not None
        api.audit_log.record(who.name, "read", referral_id, api.clock.now())
        if found["unread_reply"]:
            with api.store.write() as conn:
                referrals.mark_replies_read(conn, referral_id)
        return JSONResponse(found)

    @router.get(
        "/referrals/{referral_id}/raw",
        tags=["committee"],
        responses={200: {"content": {"message/rfc822": {}}}},
    )
    def get_raw(referral_id: ReferralId, who: Caller) -> Response:
        """The message exactly as it was received."""
        with api.store.read() as conn:
            visible(conn, who, referral_id)
            raw = conn.execute(
                select(messages.c.raw)
                .join(referrals_table, referrals_table.c.message_id == messages.c.id)
                .where(referrals_table.c.id == referral_id)
            ).scalar_one()
        api.audit_log.record(who.name, "read_raw", referral_id, api.clock.now())
        return Response(raw, media_type="message/rfc822")

    @router.post("/referrals/{referral_id}/pull", tags=["committee"])
    def pull(referral_id: ReferralId, who: Caller) -> dict[str, Any]:
        """The committee has taken the referral out of the mailbox."""
        now = api.clock.now()
        with api.store.write() as conn:
            visible(conn, who, referral_id)
            _change(lambda: referrals.pull(conn, referral_id, now, who.name))
            audit.record(conn, who.name, "pull", referral_id, now)
            found = views.detail(conn, referral_id)
        assert found is not None
        return found

    @router.post("/referrals/{referral_id}/decision", tags=["committee"])
    def decide(referral_id: ReferralId, decision: Decision, who: Caller) -> dict[str, Any]:
        """Forwarded to a unit, returned with a reason, a joint pathway started, or closed."""
        now = api.clock.now()
        detail = decision.unit if decision.outcome == "forwarded" else decision.reason
        work: list[Next] = []
        with api.store.write() as conn:
            row = visible(conn, who, referral_id)
            _change(
                lambda: referrals.decide(
                    conn,
                    referral_id,
                    decision.outcome,
                    detail,
                    decision.note,
                    now,
                    who.name,
                    decision.reason_code,
                )
            )
            audit.record(conn, who.name, "decide", referral_id, now, outcome=decision.outcome)
            if decision.outcome == "returned" and decision.reason:
                committee = _committee(api, row.municipality)
                text = correspondence.returned_text(reference(referral_id), committee, decision.reason)
                try:
                    follow = correspondence.write_to_sender(
                        conn, referral_id, text, who.name, api.from_address, now, committee, api.medcom
                    )
                    work = api.pipeline.add(conn, follow, now)
                except correspondence.SenderUnreachable:
                    audit.record(conn, who.name, "return_not_sent", referral_id, now, why="no return address")
            found = views.detail(conn, referral_id)
        api.dispatch(work)
        assert found is not None
        return found

    @router.post("/referrals/{referral_id}/exception", tags=["committee"])
    def record_exception(referral_id: ReferralId, body: DeadlineException, who: Caller) -> dict[str, Any]:
        """Stop the handling clock: an authority case or a medical reason, with a note. Audited."""
        now = api.clock.now()
        with api.store.write() as conn:
            visible(conn, who, referral_id)
            _change(
                lambda: referrals.record_exception(conn, referral_id, body.reason, body.note, now, who.name)
            )
            audit.record(conn, who.name, "exception", referral_id, now, reason=body.reason)
            found = views.detail(conn, referral_id)
        assert found is not None
        return found

    @router.post("/referrals/{referral_id}/messages", tags=["committee"], status_code=202)
    def message_sender(referral_id: ReferralId, body: MessageToSender, who: Caller) -> dict[str, Any]:
        """A message to the sender, sent as mail with the referral's reference; replies join the thread."""
        now = api.clock.now()
        with api.store.write() as conn:
            row = visible(conn, who, referral_id)
            try:
                follow = correspondence.write_to_sender(
                    conn,
                    referral_id,
                    body.text,
                    who.name,
                    api.from_address,
                    now,
                    _committee(api, row.municipality),
                    api.medcom,
                )
            except correspondence.SenderUnreachable as exc:
                raise ApiError(409, "sender_unreachable", str(exc)) from None
            audit.record(conn, who.name, "message_sender", referral_id, now)
            work = api.pipeline.add(conn, follow, now)
        api.dispatch(work)
        return {"status": "queued", "reference": reference(referral_id)}

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
        ops_only(who)
        with api.store.read() as conn:
            waiting = [t.as_json() for t in triage.waiting(conn)]
            failed = correspondence.failed_mail(conn)
        return {"referrals": waiting, "failed_mail": failed}

    @router.post("/triage/{referral_id}/assign", tags=["operations"])
    def assign(referral_id: ReferralId, body: Assignment, who: Caller) -> dict[str, Any]:
        """Send a triaged referral to a municipality's queue, with a note saying why."""
        ops_only(who)
        if api.municipalities.get(body.municipality) is None:
            raise ApiError(422, "invalid_request", "municipality: no municipality has that code.")
        now = api.clock.now()
        with api.store.write() as conn:
            follow = _change(
                lambda: triage.assign(
                    conn, referral_id, body.municipality, body.note, now, who.name, api.rules
                )
            )
            audit.record(conn, who.name, "assign", referral_id, now, municipality=body.municipality)
            work = api.pipeline.add(conn, follow, now)
        api.dispatch(work)
        return {"id": referral_id, "state": "new", "municipality": body.municipality}

    def ops_scope(who: Caller) -> None:
        """Refuses other tokens before the query is validated, so they learn nothing from a 422."""
        ops_only(who)

    @router.get("/stats", tags=["operations"], dependencies=[Depends(ops_scope)])
    def get_stats(
        who: Caller,
        start: Annotated[date, Query(alias="from", description="the first Danish day, YYYY-MM-DD")],
        end: Annotated[date, Query(alias="to", description="the last Danish day, inclusive")],
    ) -> JSONResponse:
        """The pilot's numbers per municipality and sender kind: counts only, no personal data."""
        if start > end:
            raise ApiError(422, "invalid_request", "from: the first day of the period comes after `to`.")
        try:
            with api.store.read() as conn:
                found = statistics(conn, start, end, api.municipalities)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"{exc}.") from None
        api.audit_log.record(
            who.name, "stats", None, api.clock.now(), **{"from": start.isoformat(), "to": end.isoformat()}
        )
        return JSONResponse(found.as_json())

    return router


def _store_submission(api: Api, received: Received) -> Stored:
    with api.store.write() as conn:
        (stored,) = messages_store.save(
            conn, [received], kinds.PARSE, received.received_at + api.pipeline.lease
        )
    return stored


def _committee(api: Api, code: str | None) -> str:
    municipality = api.municipalities.get(code or "")
    return f"{municipality.name}s koordinationsudvalg" if municipality else "kommunens koordinationsudvalg"


def _change(change: Callable[[], T]) -> T:
    try:
        return change()
    except LookupError:
        raise NOT_FOUND from None
    except referrals.TransitionError as exc:
        raise ApiError(409, "invalid_state", str(exc)) from None


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
