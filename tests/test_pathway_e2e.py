"""A joint pathway on a running daemon: a mailed referral is decided `joint_pathway` through the API,
`deadlines report --at` a month later shows the start-up meeting breached, and once the meeting is recorded
the report shows the follow-up meeting due 42 days after it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from postkasse.committee.client import ApiClient
from tests.servers import Daemon, wait_until
from tests.test_routing_e2e import CHILD_IN_FAVRSKOV, mail, prepare
from tests.test_thread_e2e import send

pytestmark = pytest.mark.slow


def cli(daemon: Daemon, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "postkasse", "--config", str(daemon.config), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=daemon.workdir,
    )
    return done.stdout


def report(daemon: Daemon, at: datetime) -> Any:
    return json.loads(cli(daemon, "deadlines", "report", "--at", at.isoformat(), "--json"))


def test_a_pathways_meetings_are_due_in_the_report(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    prepare(tmp_path, database_url).dispose()
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    send(daemon, mail(f"CPR: {CHILD_IN_FAVRSKOV}\nAdresse: Skolevej 12, 8382 Hinnerup\n"))
    token = cli(daemon, "token", "new", "--municipality", "0710", "--name", "sag").strip().splitlines()[-1]
    api = ApiClient(f"http://127.0.0.1:{daemon.http_port}", token)
    wait_until(
        lambda: bool(api.json("GET", "/api/v1/municipalities/0710/referrals")["items"]), 60, "the referral"
    )
    api.json("POST", "/api/v1/referrals/1/pull")
    decided = api.json(
        "POST",
        "/api/v1/referrals/1/decision",
        {
            "outcome": "joint_pathway",
            "responsible": {"name": "Mette", "title": "PPR", "telephone": "12345678"},
        },
    )
    decided_at = datetime.fromisoformat(decided["pathway"]["started_at"])

    late = report(daemon, decided_at + timedelta(days=29))
    assert [(f["reference"], f["deadline"], f["level"]) for f in late["referrals"]] == [
        ("PK-000001", "startup_meeting", "breach")
    ]
    text = cli(daemon, "deadlines", "report", "--at", (decided_at + timedelta(days=29)).isoformat())
    assert "opstartsmøde" in text and "OVERSKREDET" in text

    held = decided_at + timedelta(days=30)
    api.json(
        "POST",
        "/api/v1/referrals/1/meetings",
        {"kind": "opstart", "held_at": held.isoformat(), "place": "Skolen", "plan": {"goals": ["Trives"]}},
    )
    assert report(daemon, held + timedelta(days=34))["referrals"] == []  # not yet warned
    warned = report(daemon, held + timedelta(days=36))["referrals"]
    assert [(f["deadline"], f["level"]) for f in warned] == [("follow_up_meeting", "warning")]
    assert datetime.fromisoformat(warned[0]["due"]) == held + timedelta(days=42)
