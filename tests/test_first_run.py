"""A first run explains itself: with no relay, mail is written to the pickup directory as files and said
so in one readable line; logs are readable on a terminal and JSON elsewhere; `status` shows the whole
mailbox at a glance."""

from __future__ import annotations

import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from postkasse.config import LogSettings
from tests.servers import Daemon, wait_until
from tests.test_routing_e2e import CHILD_IN_FAVRSKOV, mail, prepare
from tests.test_thread_e2e import send

pytestmark = pytest.mark.slow


def test_without_a_relay_the_receipt_is_a_file_and_the_log_says_where(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    prepare(tmp_path, database_url).dispose()
    daemon = daemon_factory(tmp_path, database_url, log={"format": "console"})
    daemon.start()
    send(daemon, mail(f"CPR: {CHILD_IN_FAVRSKOV}\nAdresse: Skolevej 12, 8382 Hinnerup\n"))
    pickup = tmp_path / "var" / "outgoing"
    wait_until(lambda: any(pickup.glob("*.eml")), 60, "the receipt in var/outgoing")
    (written,) = pickup.glob("*.eml")
    receipt = message_from_bytes(written.read_bytes(), policy=policy.default)
    assert "[PK-000001]" in str(receipt["Subject"]) and receipt["X-Original-To"] == "<laege@klinik.example>"
    log = daemon.log()
    wait_until(lambda: "mail written to a file" in daemon.log(), 30, "the log line")
    assert "Traceback" not in log and not log.lstrip().startswith("{")  # readable lines, not JSON

    config = daemon.config
    status = cli_output(config, "status")
    assert "Triage: 0" in status and "Fristkontrol sidst" in status


def cli_output(config: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "postkasse", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_log_format_follows_the_terminal_unless_told() -> None:
    assert LogSettings().renders_json(terminal=False) and not LogSettings().renders_json(terminal=True)
    assert LogSettings(format="json").renders_json(terminal=True)
    assert not LogSettings(format="console").renders_json(terminal=False)
    assert LogSettings.model_validate({"json": True}).renders_json(terminal=True)  # the older spelling
