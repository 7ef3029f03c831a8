"""The browser test kit works: Debian's Chromium opens a loopback page, axe-core finds what is wrong, and a
script that runs is caught (a dialog) while one blocked by Content-Security-Policy runs nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError

from tests.browser import axe_violations, describe_violations, new_context, watch
from tests.servers import free_port

ACCESSIBLE = """<!doctype html>
<html lang="da"><head><meta charset="utf-8"><title>Indbakke</title></head>
<body><main><h1>Indbakke</h1>
<form><label for="search">Søg i henvisninger</label><input id="search" name="q" type="search">
<button type="submit">Søg</button></form>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="Kommunens logo">
</main></body></html>"""

INACCESSIBLE = """<!doctype html>
<html><head><meta charset="utf-8"></head>
<body><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><input type="text" name="q"></body></html>"""

ALERTING = """<!doctype html><html lang="da"><head><meta charset="utf-8"><title>Besked</title></head>
<body><p>Besked fra afsender</p><script>alert("kørt")</script></body></html>"""

# The web inbox serves its pages with a CSP like this one: scripts only from our own origin.
CSP = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'"


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    """A tiny static site on a free loopback port; /csp/* pages carry the strict Content-Security-Policy."""
    pages = {"/": ACCESSIBLE, "/bad": INACCESSIBLE, "/alert": ALERTING, "/csp/alert": ALERTING}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            if body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if self.path.startswith("/csp/"):
                self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_page_opens_in_chromium(page: Page, site: str) -> None:
    page.goto(site + "/")
    assert page.get_by_role("heading", level=1).inner_text() == "Indbakke"
    assert page.get_by_label("Søg i henvisninger").is_visible()
    assert page.evaluate("navigator.language") == "da-DK"


def test_accessible_page_has_no_serious_violations(page: Page, site: str) -> None:
    page.goto(site + "/")
    violations = axe_violations(page)
    assert violations == [], describe_violations(violations)


def test_axe_finds_image_without_alt_and_input_without_label(page: Page, site: str) -> None:
    page.goto(site + "/bad")
    found = {v["id"] for v in axe_violations(page, impacts=("serious", "critical"))}
    assert {"image-alt", "label"} <= found
    assert "html-has-lang" in {v["id"] for v in axe_violations(page, impacts=("serious",))}


def test_a_running_script_is_caught_as_a_dialog(page: Page, site: str) -> None:
    events = watch(page)
    page.goto(site + "/alert")
    assert events.dialogs == ["alert: kørt"]


def test_a_script_blocked_by_csp_runs_nothing(page: Page, site: str) -> None:
    events = watch(page)
    page.goto(site + "/csp/alert")
    assert page.get_by_text("Besked fra afsender").is_visible()
    assert events.dialogs == []
    assert any("Content Security Policy" in error for error in events.console_errors), events.console_errors
    assert page.evaluate("document.scripts.length") == 1
    assert axe_violations(page) == []


def test_contexts_share_nothing(browser: Browser, site: str) -> None:
    first, second = new_context(browser), new_context(browser)
    try:
        one, other = first.new_page(), second.new_page()
        one.goto(site + "/")
        one.evaluate("localStorage.setItem('bruger', 'anna')")
        other.goto(site + "/")
        assert other.evaluate("localStorage.getItem('bruger')") is None
    finally:
        first.close()
        second.close()


def test_asyncio_runs_after_browser_tests() -> None:
    """Other tests of the session (SMTP, IMAP clients) use asyncio.run while the session's Chromium lives."""

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42


def test_only_loopback_resolves(page: Page) -> None:
    """A page that loads anything from the internet fails in tests instead of waiting on the network."""
    with pytest.raises(PlaywrightError, match="ERR_NAME_NOT_RESOLVED"):
        page.goto("http://example.org/")
