"""The web inbox in a real browser (Debian's Chromium) against a real `postkasse serve` and a relay sink:
a committee member's working day, another municipality's member shut out, operations sorting triage, no
script from a message ever running, and axe-core's accessibility rules on every page."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from postkasse.committee.client import ApiClient
from tests.browser import axe_violations, describe_violations, new_context, watch
from tests.servers import Daemon, wait_until
from tests.sink import Delivered, Sink
from tests.test_routing_e2e import CHILD_IN_FAVRSKOV, prepare
from tests.test_thread_e2e import send

pytestmark = pytest.mark.slow

HOSTILE_HTML = (
    "From: Laege <laege@klinik.example>\r\nSubject: Henvisning\r\nMessage-ID: <html-1@klinik.example>\r\n"
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    f"<p>CPR: {CHILD_IN_FAVRSKOV}</p><script>alert('script')</script>"
    "<img src=x onerror=\"alert('onerror')\"><a href=\"javascript:alert('link')\">klik</a>\r\n"
    '--b\r\nContent-Type: application/pdf; name="../../x.pdf"\r\n'
    'Content-Disposition: attachment; filename="../../x.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    "JVBERi0xLjQKJcOkw7zDtsOfCjEgMCBvYmoKPDw+PgplbmRvYmoKdHJhaWxlcgo8PD4+CiUlRU9GCg==\r\n--b--\r\n"
)


@dataclass
class Inbox:
    daemon: Daemon
    relay: Sink
    passwords: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http_port}"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "postkasse", "--config", str(self.daemon.config), *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=self.daemon.workdir,
        )
        return done.stdout.strip().splitlines()[-1]

    def login(self, page: Page, name: str) -> None:
        page.goto(f"{self.url}/login")
        page.get_by_label("Brugernavn").fill(name)
        page.get_by_label("Adgangskode").fill(self.passwords[name])
        page.get_by_role("button", name="Log ind").click()
        page.wait_for_url(re.compile(r"/(indbakke|drift)"))

    def mails(self, count: int) -> list[Delivered]:
        wait_until(lambda: len(self.relay.mails()) >= count, 60, f"{count} mails at the relay")
        return self.relay.mails()


@pytest.fixture
def inbox(daemon_factory: type[Daemon], tmp_path: Path) -> Iterator[Inbox]:
    relay = Sink().start()
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    prepare(tmp_path, database_url).dispose()
    daemon = daemon_factory(
        tmp_path,
        database_url,
        outbound={
            "host": "127.0.0.1",
            "port": relay.port,
            "tls": "none",
            "from_address": "postkasse@localhost",
        },
    )
    daemon.start()
    site = Inbox(daemon, relay, {})
    for name, role in (("anna", ["--municipality", "0710"]), ("bo", ["--municipality", "0751"])):
        site.passwords[name] = site.cli("user", "add", name, *role)
    site.passwords["drift"] = site.cli("user", "add", "drift", "--ops")
    yield site
    relay.stop()


@pytest.fixture
def second(browser: Browser) -> Iterator[BrowserContext]:
    """A second person's browser, beside the first."""
    context = new_context(browser)
    yield context
    context.close()


def accessible(page: Page) -> None:
    found = axe_violations(page)
    assert not found, f"{page.url}:\n{describe_violations(found)}"


def test_a_committee_member_works_a_referral_in_the_browser(
    inbox: Inbox, page: Page, second: BrowserContext
) -> None:
    send(
        inbox.daemon,
        (
            "From: Dr. Hansen <laege@klinik.example>\r\nSubject: Henvisning\r\n"
            "Message-ID: <henv-1@klinik.example>\r\n\r\n"
            f"CPR: {CHILD_IN_FAVRSKOV}\r\nBarnet har ondt i maven hver morgen.\r\n"
        ).encode(),
    )
    inbox.mails(1)  # the receipt

    page.goto(f"{inbox.url}/login")
    accessible(page)
    inbox.login(page, "anna")
    row = page.get_by_role("row").filter(has_text="PK-000001")
    expect(row).to_be_visible()
    expect(row.locator(".badge").first).to_contain_text(re.compile(r"frist|overskredet"))
    assert CHILD_IN_FAVRSKOV not in page.content()
    accessible(page)

    row.get_by_role("link", name="PK-000001").click()
    expect(page.get_by_text("010215-4123").or_(page.get_by_text(CHILD_IN_FAVRSKOV)).first).to_be_visible()
    expect(page.get_by_text("Barnet har ondt i maven hver morgen.")).to_be_visible()
    accessible(page)
    page.get_by_role("button", name="Tag sagen").click()
    expect(page.get_by_role("button", name="Tag sagen")).to_have_count(0)

    page.get_by_label(re.compile("Intern note")).fill("Ring til skolen i morgen.")
    page.get_by_role("button", name="Gem note").click()
    note = page.locator(".note").filter(has_text="Ring til skolen i morgen.")
    expect(note).to_contain_text("kun internt")

    page.get_by_label("Svar til afsender").fill("Hvad har skolen allerede gjort?")
    page.get_by_role("button", name="Send svar").click()
    answer = inbox.mails(2)[1]
    assert "[PK-000001]" in answer.mail["Subject"]
    assert "Hvad har skolen allerede gjort?" in answer.mail.get_content()
    assert all("Ring til skolen" not in d.mail.as_string() for d in inbox.relay.mails())

    page.get_by_label("Afgørelse").select_option("closed")
    page.get_by_role("button", name="Gem afgørelse").click()
    expect(page.get_by_text("behandlet", exact=False).first).to_be_visible()
    accessible(page)

    page.goto(f"{inbox.url}/frister")
    accessible(page)

    api = ApiClient(inbox.url, inbox.cli("token", "new", "--municipality", "0710", "--name", "sag"))
    shown = api.json("GET", "/api/v1/referrals/1")
    assert (shown["state"], shown["outcome"], shown["pulled_by"]) == ("handled", "closed", "anna")
    assert [n["text"] for n in shown["notes"]] == ["Ring til skolen i morgen."]
    assert [(e["direction"], e["text"]) for e in shown["thread"]] == [
        ("to_sender", "Hvad har skolen allerede gjort?")
    ]
    assert len(inbox.relay.mails()) == 2  # the receipt and the answer: the note went nowhere

    other = second.new_page()
    inbox.login(other, "bo")
    refused = other.goto(f"{inbox.url}/henvendelser/1")
    assert refused is not None and refused.status == 404
    assert "Barnet har ondt" not in other.content()


def test_operations_assign_a_triaged_referral(inbox: Inbox, page: Page) -> None:
    send(inbox.daemon, b"From: laege@klinik.example\r\nSubject: Henvisning\r\n\r\nIngen CPR her.\r\n")
    inbox.mails(1)
    inbox.login(page, "drift")
    page.goto(f"{inbox.url}/drift/triage")
    accessible(page)
    row = page.get_by_role("row").filter(has_text="PK-000001")
    row.get_by_label("Kommune").select_option("0710")
    row.get_by_label("Begrundelse").fill("Lægen oplyste kommunen i telefonen.")
    row.get_by_role("button", name="Tildel").click()
    expect(page.get_by_role("status")).to_be_visible()
    api = ApiClient(inbox.url, inbox.cli("token", "new", "--municipality", "0710", "--name", "sag"))
    assert [i["reference"] for i in api.json("GET", "/api/v1/municipalities/0710/referrals")["items"]] == [
        "PK-000001"
    ]
    for path in ("/drift", "/drift/statistik"):
        page.goto(f"{inbox.url}{path}")
        accessible(page)


def test_a_message_with_scripts_runs_nothing_and_a_hostile_file_name_is_made_safe(
    inbox: Inbox, page: Page
) -> None:
    send(inbox.daemon, HOSTILE_HTML.encode())
    inbox.mails(1)
    events = watch(page)
    inbox.login(page, "anna")
    page.get_by_role("link", name="PK-000001").click()
    page.wait_for_load_state("load")
    assert events.dialogs == [] and events.page_errors == []
    assert page.locator("main script").count() == 0 and page.locator("main img[src='x']").count() == 0
    link = page.get_by_role("link", name=re.compile(r"Hent|x\.pdf|bilag", re.IGNORECASE)).first
    with page.expect_download() as download:
        link.click()
    name = download.value.suggested_filename
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert events.dialogs == [] and events.page_errors == []
