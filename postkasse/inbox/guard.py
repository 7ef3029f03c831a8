"""Who is asking, and may they: sessions from the cookie, CSRF tokens on every form, and the headers
that keep a page from being framed, leaking its address or running a script it did not ship.

Errors on pages are pages: a refused action, a missing referral or a forged form answers in HTML with
the same status the API would give; the API's own paths keep their JSON.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response

from postkasse.committee import sessions
from postkasse.committee.actions import Refused
from postkasse.committee.sessions import Session
from postkasse.inbox import words
from postkasse.inbox.context import of

COOKIE = "pk_session"
LOGIN_CSRF_COOKIE = "pk_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Pages load only what they ship: no inline script or style, nothing from elsewhere, never in a frame.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
API_PATHS = ("/api/", "/docs", "/redoc", "/openapi.json", "/metrics", "/healthz", "/readyz")

Handler = Callable[[Request, Any], Awaitable[Response]]


class LoginNeeded(Exception):
    """No live session: the page sends the browser to the login page."""


class FormRefused(Exception):
    """A form post without the session's CSRF token (or with a stale one)."""


class SecurityHeaders:
    """Plain ASGI: the headers every response carries, and the content policy of every page."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = not scope["path"].startswith(API_PATHS)

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if page:
                    extra.append((b"content-security-policy", PAGE_POLICY.encode()))
                    extra.append((b"cache-control", b"no-store"))
                headers += [(name, value) for name, value in extra if name not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def secure(request: Request) -> bool:
    return of(request).settings.secure_cookies == "always" or request.url.scheme == "https"


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(COOKIE, secret, httponly=True, samesite="lax", secure=secure(request), path="/")


def session_of(request: Request) -> Session | None:
    """The live session of this request's cookie; a session's last use is written at most once a minute.

    A session found in the store is trusted for a few seconds without asking again (`recent`): logging
    out here forgets it at once, an end or a disabled user from elsewhere is seen within `recent.TTL`."""
    inbox = of(request)
    secret = request.cookies.get(COOKIE, "")
    if not secret or len(secret) > sessions.MAX_SECRET:
        return None
    key = sessions.key(secret)
    now = inbox.clock.now()
    found = inbox.recent_sessions.get(key)
    if found is None:
        with inbox.store.read() as conn:
            found = sessions.find(conn, secret, now, inbox.idle, inbox.absolute)
        if found is None:
            return None
        inbox.recent_sessions.put(key, found)
    elif now - found.seen_at >= inbox.idle:
        inbox.recent_sessions.forget(key)
        return None
    if sessions.stale(found, now):
        with inbox.store.write() as conn:
            sessions.touch(conn, found.id, now)
        inbox.recent_sessions.forget(key)  # the next request reads the new last use from the store
    return found


def forget_session(request: Request) -> None:
    """This request's session is ended: no longer trusted from memory in this process."""
    secret = request.cookies.get(COOKIE, "")
    if secret:
        of(request).recent_sessions.forget(sessions.key(secret))


async def signed_in(request: Request) -> Session:
    """The signed-in user's session; without one, the browser is sent to log in."""
    found = await run_in_threadpool(session_of, request)
    if found is None:
        raise LoginNeeded
    request.state.session = found
    return found


async def checked_form(request: Request, session: Annotated[Session, Depends(signed_in)]) -> dict[str, str]:
    """The posted form, once its CSRF token matches the session's; 403 otherwise."""
    form = await request.form()
    given = str(form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or "")
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise FormRefused
    return {key: value for key, value in form.items() if isinstance(value, str)}


def login_csrf(request: Request) -> str:
    """The login form's token: a double-submit cookie, since there is no session yet."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    request.state.login_csrf = token
    return token


def login_csrf_ok(request: Request, given: str) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), given.encode())


def set_login_csrf_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure(request), path="/"
    )


Who = Annotated[Session, Depends(signed_in)]
Form = Annotated[dict[str, str], Depends(checked_form)]


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PATHS)


def install(app: FastAPI) -> None:
    app.add_middleware(SecurityHeaders)

    async def login_needed(request: Request, _: Exception) -> Response:
        target = "/login" if request.url.path in ("/", "/login") else f"/login?next={quote(request.url.path)}"
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    async def form_refused(request: Request, _: Exception) -> Response:
        return of(request).page(
            request,
            "error.html",
            status=403,
            title="Formularen kunne ikke godkendes",
            text=(
                "Siden var for gammel eller kom ikke fra postkassen. "
                "Gå tilbage, genindlæs siden og prøv igen."
            ),
        )

    app.add_exception_handler(LoginNeeded, login_needed)
    app.add_exception_handler(FormRefused, form_refused)
    _pages_answer_in_html(app, Refused, _refused_page)
    _pages_answer_in_html(app, StarletteHTTPException, _http_error_page)


def _pages_answer_in_html(app: FastAPI, kind: type[Exception], page: Handler) -> None:
    api_handler: Handler | None = app.exception_handlers.get(kind)  # type: ignore[assignment]

    async def handle(request: Request, exc: Any) -> Response:
        if api_handler is not None and _is_api(request):
            return await api_handler(request, exc)
        return await page(request, exc)

    app.add_exception_handler(kind, handle)


TITLES = {
    403: "Ingen adgang",
    404: "Siden findes ikke",
    409: "Det kan ikke lade sig gøre nu",
    422: "Udfyld formularen",
}


async def _refused_page(request: Request, exc: Refused) -> Response:
    if exc.status == 404:
        text = "Henvendelsen findes ikke, eller du har ikke adgang til den."
    else:
        text = words.REFUSALS.get(exc.code, exc.detail)
    return of(request).page(
        request, "error.html", status=exc.status, title=TITLES.get(exc.status, "Fejl"), text=text
    )


async def _http_error_page(request: Request, exc: StarletteHTTPException) -> Response:
    text = "Siden findes ikke." if exc.status_code == 404 else "Forespørgslen kunne ikke gennemføres."
    return of(request).page(
        request, "error.html", status=exc.status_code, title=TITLES.get(exc.status_code, "Fejl"), text=text
    )
