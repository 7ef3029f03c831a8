"""Logging in to the web inbox through a real OpenID Connect provider (tests/oidc/provider.js): postkasse
runs as a real server, and a client follows every redirect between it and the provider as a browser would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from sqlalchemy import select

from postkasse.clock import FixedClock
from postkasse.committee import users
from postkasse.config import OidcSettings, WebSettings
from postkasse.inbox.oidc_client import (
    PENDING_SECONDS,
    LoginRefused,
    Pending,
    exchange,
    identity,
    published,
    seal,
    unseal,
)
from postkasse.store import Store
from postkasse.store.schema import audit
from postkasse.store.schema import users as users_table
from tests.inbox_world import Site, site
from tests.oidc_provider import Provider, provider_fixture  # noqa: F401 (the oidc_provider fixture)
from tests.servers import free_port, wait_until

SECRET_ENV = "POSTKASSE_TEST_OIDC_SECRET"
BUTTON = "Log ind med Favrskov-login"


@pytest.fixture
def web(store: Store, oidc_provider: Provider, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """postkasse with `[web.oidc]` on the port the provider sends users back to, served by uvicorn."""
    monkeypatch.setenv(SECRET_ENV, oidc_provider.client_secret)
    oidc = OidcSettings(
        issuer=oidc_provider.issuer,
        client_id=oidc_provider.client_id,
        client_secret_env=SECRET_ENV,
        button=BUTTON,
    )
    world = site(store, FixedClock(datetime.now(UTC)), WebSettings(oidc=oidc))
    server = uvicorn.Server(
        uvicorn.Config(world.app, host="127.0.0.1", port=oidc_provider.app_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "postkasse under uvicorn")
    try:
        yield world
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def browser(oidc_provider: Provider) -> Iterator[httpx.Client]:
    base = f"http://127.0.0.1:{oidc_provider.app_port}"
    with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as client:
        yield client


def follow(browser: httpx.Client, url: str, *, stop_at: str = "") -> httpx.Response:
    """GET `url` and every redirect after it, only ever on loopback; stops before a path `stop_at`."""
    for _ in range(20):
        assert urlsplit(url).hostname in (None, "127.0.0.1"), url
        response = browser.get(url)
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        url = str(response.url.join(response.headers["location"]))
        if stop_at and urlsplit(url).path == stop_at:
            return response
    raise AssertionError("too many redirects")


def log_in_at_provider(browser: httpx.Client, account: str) -> str:
    """Press the login page's button and log in at the provider as `account`; the address the provider
    sends the browser back to, not yet followed."""
    sent = browser.get("/login/oidc")
    assert sent.status_code == 303
    # The person picks their account at the provider; the test provider reads it from `login_hint`.
    parts = urlsplit(sent.headers["location"])
    at_provider = urlunsplit(parts._replace(query=f"{parts.query}&{urlencode({'login_hint': account})}"))
    back = follow(browser, at_provider, stop_at="/login/oidc/callback")
    return str(back.url.join(back.headers["location"]))


def audited(store: Store, action: str) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(select(audit).where(audit.c.action == action)).mappings().all()
    return [dict(row) for row in rows]


def test_a_committee_member_logs_in_at_the_provider_and_lands_on_her_municipalitys_queue(
    web: Site, browser: httpx.Client
) -> None:
    page = browser.get("/login")
    assert BUTTON in page.text and 'href="/login/oidc"' in page.text

    landed = follow(browser, log_in_at_provider(browser, "anna"))
    assert (landed.status_code, landed.url.path) == (200, "/indbakke")
    assert "anna" in landed.text and "kommune 0710" in landed.text
    assert "pk_oidc" not in browser.cookies  # the pending login is used up

    # The next login finds the same user, not a new one.
    again = httpx.Client(base_url=str(browser.base_url), follow_redirects=False, timeout=10)
    with again:
        assert follow(again, log_in_at_provider(again, "anna")).url.path == "/indbakke"
    with web.store.read() as conn:
        rows = conn.execute(select(users_table)).mappings().all()
    assert [(r["name"], r["role"], r["municipality"], r["password_hash"]) for r in rows] == [
        ("anna", "committee", "0710", None)
    ]
    logins = audited(web.store, "login")
    assert len(logins) == 2 and all(row["actor"] == "anna" for row in logins)


def test_an_operations_user_is_sent_to_operations(web: Site, browser: httpx.Client) -> None:
    sent = follow(browser, log_in_at_provider(browser, "drift"), stop_at="/drift")
    assert (sent.status_code, sent.headers["location"]) == (303, "/drift")
    assert "pk_session" in browser.cookies
    with web.store.read() as conn:
        row = conn.execute(select(users_table)).mappings().one()
    assert (row["name"], row["role"], row["municipality"]) == ("drift", "ops", None)
    assert [(r["actor"], r["via"]) for r in map(_detail, audited(web.store, "login"))] == [("drift", "oidc")]


def test_an_account_without_a_municipality_is_told_why_and_gets_no_session(
    web: Site, browser: httpx.Client
) -> None:
    refused = follow(browser, log_in_at_provider(browser, "nomun"))
    assert refused.status_code == 403
    assert "angiver ingen kommune" in refused.text and "Kontakt din administrator" in refused.text
    gone = browser.get("/indbakke")
    assert (gone.status_code, gone.headers["location"]) == (303, "/login?next=/indbakke")
    with web.store.read() as conn:
        assert conn.execute(select(users_table)).first() is None
    assert [(r["actor"], r["why"]) for r in map(_detail, audited(web.store, "login_refused"))] == [
        ("nomun", "no_municipality")
    ]


def test_a_tampered_state_is_refused_and_the_login_cannot_be_finished_afterwards(
    web: Site, browser: httpx.Client
) -> None:
    back = log_in_at_provider(browser, "anna")
    parts = urlsplit(back)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert query["code"] and query["state"]
    forged = urlunsplit(parts._replace(query=urlencode({**query, "state": query["state"][::-1]})))

    refused = follow(browser, forged)
    assert refused.status_code == 400 and "Prøv igen fra postkassens login-side" in refused.text
    assert browser.get("/indbakke").status_code == 303
    # The genuine answer no longer works either: the pending login was used up by the refusal.
    assert follow(browser, back).status_code == 400
    assert browser.get("/indbakke").status_code == 303
    assert [_detail(r)["why"] for r in audited(web.store, "login_refused")] == ["state", "state"]


def test_a_callback_in_a_browser_that_never_started_the_login_is_refused(
    web: Site, browser: httpx.Client, oidc_provider: Provider
) -> None:
    back = log_in_at_provider(browser, "anna")
    with httpx.Client(timeout=10) as stranger:  # e.g. a link the attacker sent: login CSRF
        assert follow(stranger, back).status_code == 400
    assert audited(web.store, "login") == []


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    return {"actor": row["actor"], **row["detail"]}


def test_a_user_disabled_here_cannot_log_in_through_the_provider(web: Site, browser: httpx.Client) -> None:
    assert follow(browser, log_in_at_provider(browser, "anna")).url.path == "/indbakke"
    with web.store.write() as conn:
        users.disable(conn, "anna", web.clock.now())
    with httpx.Client(base_url=str(browser.base_url), timeout=10) as later:
        refused = follow(later, log_in_at_provider(later, "anna"))
        assert refused.status_code == 403 and "spærret" in refused.text
        assert later.get("/indbakke").status_code == 303
    assert [(r["actor"], r["why"]) for r in map(_detail, audited(web.store, "login_refused"))] == [
        ("anna", "disabled")
    ]


def test_the_page_asked_for_before_login_is_where_the_provider_login_ends(
    web: Site, browser: httpx.Client
) -> None:
    asked = browser.get("/login?next=/indbakke%3Fstate%3Dpulled")
    assert 'href="/login/oidc?next=' in asked.text
    sent = browser.get("/login/oidc", params={"next": "/indbakke?state=pulled"})
    parts = urlsplit(sent.headers["location"])
    at_provider = urlunsplit(parts._replace(query=f"{parts.query}&login_hint=anna"))
    back = follow(browser, at_provider, stop_at="/login/oidc/callback")
    landed = follow(browser, str(back.url.join(back.headers["location"])), stop_at="/indbakke")
    assert landed.headers["location"] == "/indbakke?state=pulled"


def test_a_provider_that_does_not_answer_gives_a_clear_page_not_a_crash(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "whatever")
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    oidc = OidcSettings(issuer=nobody, client_id="postkasse", client_secret_env=SECRET_ENV)
    browser = site(store, FixedClock(datetime.now(UTC)), WebSettings(oidc=oidc)).browser()
    answer = browser.get("/login/oidc")
    assert answer.status_code == 502 and "Identitetsudbyderen svarer ikke" in answer.text
    assert "pk_oidc" not in answer.headers.get("set-cookie", "")


def test_the_id_token_must_be_signed_by_the_provider_for_this_client_with_this_nonce_and_in_time(
    web: Site, browser: httpx.Client, oidc_provider: Provider
) -> None:
    settings = OidcSettings(
        issuer=oidc_provider.issuer, client_id=oidc_provider.client_id, client_secret_env=SECRET_ENV
    )
    back = urlsplit(log_in_at_provider(browser, "anna"))
    now = time.time()
    pending = unseal(settings, browser.cookies["pk_oidc"], web.clock.now().timestamp())
    assert pending is not None
    code = parse_qs(back.query)["code"][0]

    async def check(*, nonce: str, at: float, audience: str = settings.client_id) -> dict[str, Any]:
        other = settings.model_copy(update={"client_id": audience})
        return await identity(other, tokens, nonce, at)

    tokens = asyncio.run(
        exchange(settings, _metadata(settings), code, oidc_provider.redirect_uri, pending.verifier)
    )
    claims = asyncio.run(check(nonce=pending.nonce, at=now))
    assert (claims["sub"], claims["municipality"]) == ("anna", "0710")

    refusals = {
        "another nonce": check(nonce="replayed", at=now),
        "expired": check(nonce=pending.nonce, at=now + 3 * 3600),
        "another client": check(nonce=pending.nonce, at=now, audience="another-client"),
    }
    for what, attempt in refusals.items():
        with pytest.raises(LoginRefused, match="id_token_claims"):
            asyncio.run(attempt)
            pytest.fail(f"accepted an ID token for {what}")

    # Claims that anyone could sign: our own RSA key, or the client secret itself (HS256).
    forged_claims = {**claims, "municipality": "0101"}
    for key, alg in (
        (RSAKey.generate_key(2048), "RS256"),
        (OctKey.import_key(oidc_provider.client_secret), "HS256"),
    ):
        forged = {**tokens, "id_token": jwt.encode({"alg": alg, "kid": "test-key"}, forged_claims, key)}
        with pytest.raises(LoginRefused, match="id_token_signature"):
            asyncio.run(identity(settings, forged, pending.nonce, now))
    # A code is good once: the provider refuses it the second time.
    with pytest.raises(LoginRefused, match="code_refused"):
        asyncio.run(
            exchange(settings, _metadata(settings), code, oidc_provider.redirect_uri, pending.verifier)
        )


def _metadata(settings: OidcSettings) -> dict[str, Any]:
    return asyncio.run(published(settings)).metadata


def test_the_pending_login_cookie_is_signed_and_short_lived(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "the client secret")
    settings = OidcSettings(issuer="http://127.0.0.1:9", client_id="postkasse", client_secret_env=SECRET_ENV)
    for length in range(6):  # every length of base64 padding: never a quoted cookie value
        pending = Pending("s" * length, "nonce", "verifier", "/indbakke")
        cookie = seal(settings, pending, 1000.0)
        assert '"' not in cookie and "=" not in cookie
        assert unseal(settings, cookie, 1000.0 + PENDING_SECONDS) == pending
        assert unseal(settings, cookie, 1001.0 + PENDING_SECONDS) is None
    body, _, mac = cookie.partition(".")
    assert unseal(settings, f"{body[:-2]}{body[-1]}{body[-2]}.{mac}", 1000.0) is None
    monkeypatch.setenv(SECRET_ENV, "another secret")
    assert unseal(settings, cookie, 1000.0) is None
