"""Logging in with a local account, and out; both are audited, and failed logins are limited."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection
from starlette.responses import RedirectResponse, Response

from postkasse.committee import audit, sessions, users
from postkasse.committee.users import User
from postkasse.inbox import guard
from postkasse.inbox.context import Inbox, of

router = APIRouter(include_in_schema=False)


def landing(user: User) -> str:
    return "/drift" if user.role == "ops" else "/indbakke"


def safe_next(target: str | None) -> str | None:
    """Only a path on this site: never another host (`//evil`), never a scheme."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")) and len(target) < 200:
        return target
    return None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def open_session(conn: Connection, user: User, now: datetime, address: str, via: str) -> str:
    """A new session for a user who has just shown who they are, audited as a login; the cookie's secret."""
    secret, _ = sessions.start(conn, user, now)
    audit.record(conn, user.name, "login", None, now, via=via, address=address)
    return secret


def welcome(request: Request, user: User, secret: str, target: str | None) -> Response:
    """The answer to a successful login: the session cookie, and on to `target` or the user's landing page."""
    response = RedirectResponse(target or landing(user), status_code=303)
    guard.set_session_cookie(request, response, secret)
    response.delete_cookie(guard.LOGIN_CSRF_COOKIE, path="/")
    return response


@router.get("/")
async def home(request: Request) -> Response:
    found = await run_in_threadpool(guard.session_of, request)
    return RedirectResponse(landing(found.user) if found else "/login", status_code=303)


@router.get("/login")
def login_page(request: Request, token: Annotated[str, Depends(guard.login_csrf)]) -> Response:
    inbox = of(request)
    response = inbox.page(request, "login.html", next=safe_next(request.query_params.get("next")) or "")
    guard.set_login_csrf_cookie(request, response, token)
    return response


def _attempt(inbox: Inbox, name: str, password: str, address: str) -> tuple[str, User | None, str]:
    """('ok', user, cookie secret), or ('throttled' | 'wrong', None, '')."""
    now = inbox.clock.now()
    window = inbox.settings.failed_login_window_minutes
    span = timedelta(minutes=window)
    with inbox.store.read() as conn:
        if users.throttled(
            conn,
            name,
            address,
            now,
            span,
            inbox.settings.max_failed_logins_per_account,
            inbox.settings.max_failed_logins_per_address,
        ):
            outcome = "throttled"
        else:
            outcome = ""
    if outcome == "throttled":
        with inbox.store.write() as conn:
            users.failed(conn, name, address, now, span)
            audit.record(
                conn, name[:64], "login_refused", None, now, why="too_many_failures", address=address
            )
        return outcome, None, ""
    with inbox.store.read() as conn:
        user = users.verify(conn, name, password)
    with inbox.store.write() as conn:
        if user is None:
            users.failed(conn, name, address, now, span)
            audit.record(conn, name[:64], "login_failed", None, now, address=address)
            return "wrong", None, ""
        users.forget_failures(conn, name)
        secret = open_session(conn, user, now, address, "password")
    return "ok", user, secret


@router.post("/login")
async def login(request: Request) -> Response:
    inbox = of(request)
    form = await request.form()
    name = str(form.get("username") or "").strip()
    password = str(form.get("password") or "")
    target = safe_next(str(form.get("next") or ""))
    if not guard.login_csrf_ok(request, str(form.get(guard.CSRF_FIELD) or "")):
        raise guard.FormRefused
    token = guard.login_csrf(request)

    def again(message: str, status: int) -> Response:
        response = inbox.page(
            request, "login.html", status=status, error=message, username=name, next=target or ""
        )
        guard.set_login_csrf_cookie(request, response, token)
        return response

    if not name or not password:
        return again("Skriv dit brugernavn og din adgangskode.", 422)
    outcome, user, secret = await run_in_threadpool(_attempt, inbox, name, password, client_address(request))
    if outcome == "throttled":
        return again("For mange forkerte forsøg. Vent et kvarter, og prøv igen.", 429)
    if user is None:
        return again("Forkert brugernavn eller adgangskode.", 401)
    return welcome(request, user, secret, target)


@router.post("/logout")
def logout(request: Request, session: guard.Who, _: guard.Form) -> Response:
    inbox = of(request)
    now = inbox.clock.now()
    with inbox.store.write() as conn:
        sessions.end(conn, session.id, now)
        audit.record(conn, session.user.name, "logout", None, now)
    guard.forget_session(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(guard.COOKIE, path="/")
    return response
