"""A real browser for the web inbox tests: Debian's Chromium driven by Playwright's sync API, plus axe-core.

Playwright's own browser downloads are unreachable, so it launches /usr/bin/chromium (installed by
`make services`); never run `playwright install`. One browser serves the whole test session and each test
gets a fresh context (no cookies, storage or session shared between tests). Without Chromium the tests error,
they do not skip: a browser test that silently does not run proves nothing.

Fixtures (registered in tests/conftest.py): `browser`, `browser_context` and `page`, each per test; the
browser behind `browser` is started once per session.
Plain helpers: `launch_chromium`, `new_context`, `axe_violations`, `describe_violations`, `watch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Playwright,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Only loopback resolves: a page that pulls a font, script or tracker from elsewhere fails loudly in tests
    # instead of waiting on an unreachable network.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)
# Playwright waits 30 s by default; a page of ours answers in well under a second, so fail sooner.
TIMEOUT_MS = 10_000

_AXE = Axe()


def launch_chromium(playwright: Playwright) -> Browser:
    """Start headless Chromium; fail with the fix when it is missing."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make services` (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True)


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    """A fresh context as a Danish user sees the inbox: Danish locale, Copenhagen time, short timeouts."""
    options.setdefault("locale", "da-DK")
    options.setdefault("timezone_id", "Europe/Copenhagen")
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    return context


def axe_violations(
    page: Page, impacts: Iterable[str] = ("serious", "critical"), context: str | None = None
) -> list[dict[str, Any]]:
    """The axe-core violations of the given impacts on the page as it stands now.

    axe-core's rules (bundled by axe-playwright-python, no network needed) cover WCAG 2.0/2.1 A and AA plus
    best practices; each violation is axe's dict: `id`, `impact`, `help`, `helpUrl`, `nodes` (with `target`
    and `html`). `context` is an optional CSS selector to check only part of the page.
    """
    wanted = set(impacts)
    results = _AXE.run(page, context=context)
    violations: list[dict[str, Any]] = results.response["violations"]
    return [v for v in violations if v.get("impact") in wanted]


def describe_violations(violations: list[dict[str, Any]]) -> str:
    """One line per violation and element, for an assertion message a developer can act on."""
    lines = []
    for violation in violations:
        for node in violation["nodes"]:
            target = " ".join(str(t) for t in node["target"])
            lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {target}")
    return "\n".join(lines)


@dataclass
class PageEvents:
    """What a page did that a user would notice or a script could cause: console errors, dialogs, crashes.

    Dialogs are dismissed as they open (a test never hangs on an `alert()`); their messages are kept. An
    inline script blocked by Content-Security-Policy shows up in `console_errors` ("Refused to execute ...").
    """

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _page_error(self, error: Exception) -> None:
        self.page_errors.append(str(error))


def watch(page: Page) -> PageEvents:
    """Start recording the page's console errors, uncaught script errors and dialogs; call before `goto`."""
    events = PageEvents()
    page.on("console", events._console)
    page.on("dialog", events._dialog)
    page.on("pageerror", events._page_error)
    return events


@dataclass
class _Chromium:
    browser: Browser
    loop: asyncio.AbstractEventLoop


@contextmanager
def _playwright_loop(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Let Playwright's sync API run, then hide its event loop again.

    The sync API keeps its asyncio loop suspended mid-run in a greenlet of the main thread, so between its
    calls asyncio sees a running loop and `asyncio.run()` in any later test of the session fails ("cannot be
    called from a running event loop"). So the browser's loop is marked as running only during browser tests.
    """
    asyncio._set_running_loop(loop)
    try:
        yield
    finally:
        asyncio._set_running_loop(None)


@pytest.fixture(scope="session")
def _chromium() -> Iterator[_Chromium]:
    """One Chromium for the whole test session (starting it takes about half a second)."""
    with sync_playwright() as playwright:
        loop = asyncio.get_running_loop()
        chromium = _Chromium(launch_chromium(playwright), loop)
        asyncio._set_running_loop(None)
        yield chromium
        asyncio._set_running_loop(loop)
        chromium.browser.close()


@pytest.fixture
def browser(_chromium: _Chromium) -> Iterator[Browser]:
    """The session's Chromium, for a test that needs contexts of its own (two users side by side)."""
    with _playwright_loop(_chromium.loop):
        yield _chromium.browser


@pytest.fixture
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh context per test: no cookies or storage from another test."""
    context = new_context(browser)
    yield context
    context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Page:
    """A new tab in the test's own context."""
    return browser_context.new_page()
