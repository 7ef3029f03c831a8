"""Logging in to the web inbox: local accounts from the command line, sessions that end when they should,
forms that need their token, limits on guessing, and the audit of it all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from postkasse import cli
from postkasse.clock import FixedClock
from postkasse.committee import recent, sessions, users
from postkasse.config import WebSettings
from postkasse.store import Store
from postkasse.store.schema import audit, web_sessions
from postkasse.store.schema import users as users_table
from tests.inbox_world import Browser, Site, site

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def run(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = cli.main(["--config", str(config), *args])
    return code, capsys.readouterr().out.strip().splitlines()


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "postkasse.toml"
    path.write_text(f'[database]\nurl = "{database_url}"\n[log]\njson = false\n', encoding="utf-8")
    return path


@pytest.fixture
def web(store: Store) -> Site:
    return site(store, FixedClock(T0))


def add(store: Store, name: str, municipality: str | None) -> str:
    with store.write() as conn:
        return users.add(conn, name, "committee" if municipality else "ops", municipality, T0)


def test_a_user_added_on_the_command_line_logs_in_with_the_printed_password(
    config: Path, store: Store, web: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run(config, "user", "add", "anna", "--municipality", "0710", capsys=capsys)
    assert code == 0
    password = lines[-1]
    assert len(password) >= 16 and " " not in password
    with store.read() as conn:
        stored = conn.execute(select(users_table.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and password not in stored

    browser = web.browser()
    landed = browser.login("anna", password)
    assert (landed.status_code, landed.headers["location"]) == (303, "/indbakke")
    assert browser.get("/indbakke").status_code == 200

    code, lines = run(config, "user", "password", "anna", capsys=capsys)
    assert code == 0 and lines[-1] != password
    assert web.browser().login("anna", password).status_code == 401
    assert web.browser().login("anna", lines[-1]).status_code == 303

    assert run(config, "user", "add", "anna", "--municipality", "0710", capsys=capsys)[0] == 1
    assert run(config, "user", "add", "x", "--municipality", "9999", capsys=capsys)[0] == 2


def test_disabling_a_user_ends_their_open_session(
    config: Path, store: Store, web: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    browser = web.browser()
    browser.login("anna", add(store, "anna", "0710"))
    assert browser.get("/indbakke").status_code == 200
    assert run(config, "user", "disable", "anna", capsys=capsys)[0] == 0
    web.clock.advance(timedelta(seconds=recent.TTL))  # the command is another process: seen within seconds
    refused = browser.get("/indbakke")
    assert (refused.status_code, refused.headers["location"]) == (303, "/login?next=/indbakke")
    assert web.browser().login("anna", "whatever").status_code == 401


def test_logging_out_ends_the_session_here_at_once_and_in_another_process_within_seconds(
    store: Store,
) -> None:
    """Sessions found a moment ago are remembered per process (`recent`): logging out forgets the session
    in the process that served the logout; a second process, which cannot be told, asks the store again
    once its memory of the session is `recent.TTL` seconds old."""
    clock = FixedClock(T0)
    here, elsewhere = site(store, clock), site(store, clock)
    browser = here.browser()
    browser.login("anna", add(store, "anna", "0710"))
    cookie = browser.client.cookies["pk_session"]
    other = elsewhere.browser()
    other.client.cookies.set("pk_session", cookie)
    assert browser.get("/indbakke").status_code == 200 and other.get("/indbakke").status_code == 200

    assert browser.post("/logout").status_code == 303
    again = here.browser()
    again.client.cookies.set("pk_session", cookie)
    assert again.get("/indbakke").headers["location"] == "/login?next=/indbakke"
    clock.advance(timedelta(seconds=recent.TTL))
    assert other.get("/indbakke").headers["location"] == "/login?next=/indbakke"


def test_a_session_ended_in_the_store_is_refused_once_remembered_for_ttl(store: Store, web: Site) -> None:
    browser = web.browser()
    browser.login("anna", add(store, "anna", "0710"))
    assert browser.get("/indbakke").status_code == 200
    with store.write() as conn:
        (session_id,) = conn.execute(select(web_sessions.c.id)).scalars()
        sessions.end(conn, session_id, T0)
    web.clock.advance(timedelta(seconds=recent.TTL - 1))
    assert browser.get("/indbakke").status_code == 200  # remembered: the store is not asked again yet
    web.clock.advance(timedelta(seconds=1))
    assert browser.get("/indbakke").headers["location"] == "/login?next=/indbakke"


def test_the_session_cookie_is_httponly_samesite_and_secure_over_tls(store: Store) -> None:
    password = add(store, "anna", "0710")
    plain = site(store, FixedClock(T0)).browser().login("anna", password).headers["set-cookie"].lower()
    assert "httponly" in plain and "samesite=lax" in plain and "secure" not in plain
    tls = site(store, FixedClock(T0)).browser("https://testserver").login("anna", password)
    assert "secure" in tls.headers["set-cookie"].lower()
    behind_a_proxy = site(store, FixedClock(T0), WebSettings(secure_cookies="always")).browser()
    assert "secure" in behind_a_proxy.get("/login").headers["set-cookie"].lower()


def test_a_session_ends_after_30_idle_minutes_and_8_hours_in_all(store: Store, web: Site) -> None:
    password = add(store, "anna", "0710")
    browser = web.browser()
    browser.login("anna", password)
    web.clock.advance(timedelta(minutes=29))
    assert browser.get("/indbakke").status_code == 200
    web.clock.advance(timedelta(minutes=30))
    assert browser.get("/indbakke").status_code == 303

    busy = web.browser()
    busy.login("anna", password)
    for _ in range(23):  # a page every 20 minutes keeps it alive, up to 8 hours after login
        web.clock.advance(timedelta(minutes=20))
        assert busy.get("/indbakke").status_code == 200
    web.clock.advance(timedelta(minutes=20))
    assert busy.get("/indbakke").status_code == 303


def test_every_form_needs_its_token(store: Store, web: Site) -> None:
    password = add(store, "anna", "0710")
    stranger = web.browser()
    stranger.get("/login")
    assert stranger.post("/login", {"username": "anna", "password": password}, token=False).status_code == 403
    browser = web.browser()
    browser.login("anna", password)
    assert browser.post("/logout", token=False).status_code == 403
    assert browser.post("/logout", {"csrf_token": "forged"}, token=False).status_code == 403
    assert browser.get("/indbakke").status_code == 200
    assert browser.post("/logout").status_code == 303
    assert browser.get("/indbakke").status_code == 303


def test_guessing_is_limited_per_account_and_per_address(store: Store, web: Site) -> None:
    password = add(store, "anna", "0710")
    for _ in range(5):
        assert web.browser().login("anna", "wrong").status_code == 401
    limited = web.browser().login("anna", password)
    assert limited.status_code == 429 and "For mange" in limited.text
    web.clock.advance(timedelta(minutes=16))
    assert web.browser().login("anna", password).status_code == 303

    for n in range(20):  # one address trying many accounts
        web.browser().login(f"nobody{n}", "wrong")
    other = add(store, "bo", "0751")
    assert web.browser().login("bo", other).status_code == 429


def test_logins_and_logouts_are_audited_without_the_password(store: Store, web: Site) -> None:
    password = add(store, "anna", "0710")
    web.browser().login("anna", "not-" + password)
    browser = web.browser()
    browser.login("anna", password)
    browser.get("/indbakke")
    assert browser.post("/logout").status_code == 303
    with store.read() as conn:
        rows = conn.execute(
            select(audit.c.actor, audit.c.action, audit.c.detail)
            .where(audit.c.action.like("log%"))
            .order_by(audit.c.id)
        ).all()
    assert [(r.actor, r.action) for r in rows] == [
        ("anna", "login_failed"),
        ("anna", "login"),
        ("anna", "logout"),
    ]
    assert all(password not in str(r.detail) for r in rows)


def test_pages_carry_a_strict_content_policy(web: Site) -> None:
    page = web.browser().get("/login")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<html lang="da">' in page.text
    assert 'for="username">Brugernavn' in page.text and 'for="password">Adgangskode' in page.text
    assert ">Log ind</button>" in page.text


def test_login_returns_only_to_a_path_on_this_site(store: Store, web: Site) -> None:
    password = add(store, "anna", "0710")
    assert web.browser().login("anna", password, "//evil.example/x").headers["location"] == "/indbakke"
    assert web.browser().login("anna", password, "/frister").headers["location"] == "/frister"


def test_a_committee_user_sees_only_their_municipality_and_ops_no_queue(store: Store, web: Site) -> None:
    from tests.test_api import add_referral

    theirs = add_referral(store, "0751")
    anna = web.browser()
    anna.login("anna", add(store, "anna", "0710"))
    assert anna.get(f"/henvendelser/{theirs}").status_code == 404
    assert anna.post(f"/henvendelser/{theirs}/tag").status_code == 404
    ops = web.browser()
    assert ops.login("drift", add(store, "drift", None)).headers["location"] == "/drift"
    assert ops.get(f"/henvendelser/{theirs}").status_code == 403
    assert ops.get("/indbakke").status_code == 403


def test_a_browser_without_a_session_is_sent_to_log_in(web: Site) -> None:
    browser: Browser = web.browser()
    assert browser.get("/").headers["location"] == "/login"
    assert browser.get("/henvendelser/1").headers["location"] == "/login?next=/henvendelser/1"
    boosted = browser.get("/indbakke", headers={"HX-Request": "true"})
    assert boosted.headers["hx-redirect"] == "/login?next=/indbakke"
