"""Logging in through the organisation's OpenID Connect provider (`[web.oidc]`): the authorization code flow
with state, nonce and PKCE (S256).

The provider's claims decide who the user is here: the role claim equal to `ops_role` makes an operations
user; anyone else is a committee member and needs a municipality claim of four digits, or is refused. A
successful login opens a session exactly as a password does; refused ones are audited with the reason.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from postkasse import logs
from postkasse.committee import audit, users
from postkasse.committee.users import User, UserError
from postkasse.config import OidcSettings
from postkasse.inbox import guard, login
from postkasse.inbox.context import Inbox, of
from postkasse.inbox.oidc_client import (
    PENDING_SECONDS,
    LoginRefused,
    ProviderTrouble,
    begin,
    exchange,
    identity,
    published,
    seal,
    unseal,
)

router = APIRouter(include_in_schema=False)
log = logs.get(__name__)

PENDING_COOKIE = "pk_oidc"
PENDING_PATH = "/login/oidc"
CALLBACK = "oidc_callback"

# Why a login was refused, as the user reads it: (status, title, text).
REFUSALS: dict[str, tuple[int, str, str]] = {
    "no_municipality": (
        403,
        "Ingen kommune på din konto",
        "Din konto hos identitetsudbyderen angiver ingen kommune, så du kan ikke logge ind i postkassen. "
        "Kontakt din administrator.",
    ),
    "disabled": (403, "Ingen adgang", "Din konto er spærret i postkassen. Kontakt din administrator."),
    "account": (
        403,
        "Ingen adgang",
        "Din konto hos identitetsudbyderen kan ikke bruges i postkassen. Kontakt din administrator.",
    ),
    "provider_error": (
        403,
        "Login blev afbrudt",
        "Identitetsudbyderen gennemførte ikke dit login. Prøv igen fra postkassens login-side.",
    ),
}
EXPIRED = (
    400,
    "Login kunne ikke gennemføres",
    "Login-forsøget var udløbet eller kom ikke fra postkassen. Prøv igen fra postkassens login-side.",
)


def _settings(inbox: Inbox) -> OidcSettings:
    assert inbox.settings.oidc is not None, "the OIDC routes are installed only with [web.oidc]"
    return inbox.settings.oidc


def _trouble(request: Request, what: str) -> Response:
    log.warning("oidc provider trouble", what=what)
    return of(request).page(
        request,
        "error.html",
        status=502,
        title="Login er ikke muligt lige nu",
        text="Identitetsudbyderen svarer ikke som den skal. Prøv igen om lidt, eller kontakt driften.",
    )


@router.get("/login/oidc")
async def start(request: Request) -> Response:
    inbox = of(request)
    settings = _settings(inbox)
    if not settings.client_secret():
        log.error("oidc client secret missing", variable=settings.client_secret_env)
        return _trouble(request, "no client secret")
    try:
        kept = await published(settings)
    except ProviderTrouble as exc:
        return _trouble(request, str(exc))
    target = login.safe_next(request.query_params.get("next")) or ""
    url, pending = begin(settings, kept.metadata, str(request.url_for(CALLBACK)), target)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        PENDING_COOKIE,
        seal(settings, pending, inbox.clock.now().timestamp()),
        max_age=PENDING_SECONDS,
        httponly=True,
        samesite="lax",
        secure=guard.secure(request),
        path=PENDING_PATH,
    )
    return response


@router.get("/login/oidc/callback", name=CALLBACK)
async def callback(request: Request) -> Response:
    inbox = of(request)
    settings = _settings(inbox)
    params = request.query_params
    address = login.client_address(request)
    now = inbox.clock.now()
    pending = unseal(settings, request.cookies.get(PENDING_COOKIE, ""), now.timestamp())
    try:
        if pending is None or not _same(params.get("state", ""), pending.state):
            raise LoginRefused("state")
        if params.get("iss") not in (None, settings.issuer):
            raise LoginRefused("issuer")
        if "error" in params or not params.get("code"):
            raise LoginRefused("provider_error")
        kept = await published(settings)
        redirect_uri = str(request.url_for(CALLBACK))
        tokens = await exchange(settings, kept.metadata, params["code"], redirect_uri, pending.verifier)
        claims = await identity(settings, tokens, pending.nonce, now.timestamp())
        name, role, municipality = _who(settings, claims)
        subject = f"{settings.issuer}#{claims['sub']}"
        user, secret = await run_in_threadpool(_open, inbox, subject, name, role, municipality, address)
    except ProviderTrouble as exc:
        return _forget(_trouble(request, str(exc)))
    except LoginRefused as refused:
        await run_in_threadpool(_refused, inbox, refused, address)
        status, title, text = REFUSALS.get(refused.why, EXPIRED)
        page = inbox.page(request, "error.html", status=status, title=title, text=text)
        return _forget(page)
    return _forget(login.welcome(request, user, secret, pending.next))


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _who(settings: OidcSettings, claims: dict[str, Any]) -> tuple[str, str, str | None]:
    """(name, role, municipality) from the provider's claims."""
    name = claims.get(settings.username_claim)
    if not isinstance(name, str) or not name or not isinstance(claims.get("sub"), str):
        raise LoginRefused("account")
    if claims.get(settings.role_claim) == settings.ops_role:
        return name, "ops", None
    municipality = claims.get(settings.municipality_claim)
    if not isinstance(municipality, str) or not (len(municipality) == 4 and municipality.isdigit()):
        raise LoginRefused("no_municipality", name)
    return name, "committee", municipality


def _open(
    inbox: Inbox, subject: str, name: str, role: str, municipality: str | None, address: str
) -> tuple[User, str]:
    now = inbox.clock.now()
    with inbox.store.write() as conn:
        try:
            user = users.from_provider(conn, subject, name, role, municipality, now)
        except UserError:
            raise LoginRefused("account", name) from None
        if user is None:
            raise LoginRefused("disabled", name)
        return user, login.open_session(conn, user, now, address, "oidc")


def _refused(inbox: Inbox, refused: LoginRefused, address: str) -> None:
    """Audited under the provider's user name when it gave one; the log keeps only the reason."""
    now = inbox.clock.now()
    log.info("oidc login refused", why=refused.why)
    with inbox.store.write() as conn:
        audit.record(
            conn,
            (refused.who or "oidc")[:64],
            "login_refused",
            None,
            now,
            why=refused.why,
            via="oidc",
            address=address,
        )


def _forget(response: Response) -> Response:
    """A pending login is used once, whatever came of it."""
    response.delete_cookie(PENDING_COOKIE, path=PENDING_PATH)
    return response
