"""Forwarding to a municipal unit on a running daemon with a real relay: the unit gets one mail per
forward with the original attached byte for byte and the action plan's PDF; a relay that refuses for good
leaves the referral visibly undelivered, and a retry once it is back delivers exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from postkasse.committee.client import ApiClient
from postkasse.config import DEFAULT_MUNICIPALITIES
from tests.servers import Daemon, wait_until
from tests.sink import Delivered, Sink
from tests.test_compose_forward import original_bytes
from tests.test_routing_e2e import CHILD_IN_FAVRSKOV, mail, prepare
from tests.test_thread_e2e import send

pytestmark = pytest.mark.slow

PPR = "ppr@favrskov.example"


class Relay(Sink):
    """A relay that can be told to refuse every mail for good (550), as one that is misconfigured does."""

    refusing = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refusing:
            return "550 5.7.1 relaying denied"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def relay() -> Iterator[Relay]:
    sink = Relay()
    sink.start()
    yield sink
    sink.stop()


def with_units(tmp_path: Path) -> Path:
    text = DEFAULT_MUNICIPALITIES.read_text(encoding="utf-8")
    block = 'code = "0710"\nname = "Favrskov Kommune"\nregion = 1082\n'
    assert block in text
    units = (
        f'\n[[municipality.unit]]\nid = "ppr"\nname = "PPR Favrskov"\nkind = "PPR"\naddress = "{PPR}"\n'
        '\n[[municipality.unit]]\nid = "familie"\nname = "Familieafdelingen"\n'
    )
    copy = tmp_path / "municipalities.toml"
    copy.write_text(text.replace(block, block + units), encoding="utf-8")
    return copy


def to_unit(relay: Sink) -> list[Delivered]:
    return [d for d in relay.mails() if PPR in d.recipients]


def attachment(delivered: Delivered, content_type: str) -> bytes:
    (part,) = [p for p in delivered.mail.iter_attachments() if p.get_content_type() == content_type]
    if content_type == "message/rfc822":
        return original_bytes(part)
    found = part.get_payload(decode=True)
    assert isinstance(found, bytes)
    return found


def test_forward_to_a_unit_and_its_retry_after_a_refusal(
    daemon_factory: type[Daemon], tmp_path: Path, relay: Relay
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    prepare(tmp_path, database_url).dispose()
    daemon = daemon_factory(
        tmp_path,
        database_url,
        routing={"municipalities_file": str(with_units(tmp_path))},
        outbound={
            "host": "127.0.0.1",
            "port": relay.port,
            "tls": "none",
            "from_address": "postkasse@localhost",
        },
    )
    daemon.start()

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "postkasse", "--config", str(daemon.config), *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=daemon.workdir,
        )
        return done.stdout.strip().splitlines()[-1]

    api = ApiClient(
        f"http://127.0.0.1:{daemon.http_port}", cli("token", "new", "--municipality", "0710", "--name", "sag")
    )
    ops = ApiClient(f"http://127.0.0.1:{daemon.http_port}", cli("token", "new", "--ops", "--name", "drift"))
    for n in (1, 2):
        send(daemon, mail(f"CPR: {CHILD_IN_FAVRSKOV}\nAdresse: Skolevej 12, 8382 Hinnerup\nHenvisning {n}\n"))
    wait_until(lambda: len(relay.mails()) >= 2, 60, "the two receipts")
    units = api.json("GET", "/api/v1/municipalities/0710/units")["items"]
    assert [(u["id"], u["can_receive"]) for u in units] == [("ppr", True), ("familie", False)]

    original = api.request("GET", "/api/v1/referrals/1/raw", None)[0]
    api.json("POST", "/api/v1/referrals/1/pull")
    decided = api.json(
        "POST",
        "/api/v1/referrals/1/decision",
        {"outcome": "forwarded", "unit": "ppr", "note": "Haster lidt."},
    )
    assert decided["outcome_detail"] == "PPR Favrskov"
    wait_until(lambda: len(to_unit(relay)) >= 1, 60, "the unit's mail")
    wait_until(lambda: len(relay.mails()) >= 4, 60, "the sender's notice")
    (forwarded,) = to_unit(relay)
    assert "[PK-000001]" in str(forwarded.mail["Subject"])
    assert attachment(forwarded, "message/rfc822") == original
    notice = (
        [d for d in relay.mails() if "laege@klinik.example" in d.recipients][-1].mail.get_body().get_content()
    )  # type: ignore[union-attr]
    assert "videresendt" in notice and "PPR" in notice and CHILD_IN_FAVRSKOV not in notice
    wait_until(lambda: api.json("GET", "/api/v1/referrals/1")["forward"]["delivery"] == "sent", 60, "sent")

    api.json("POST", "/api/v1/referrals/2/pull")
    relay.refusing = True
    api.json("POST", "/api/v1/referrals/2/decision", {"outcome": "forwarded", "unit": "ppr"})
    wait_until(
        lambda: api.json("GET", "/api/v1/referrals/2")["forward"]["delivery"] == "failed", 60, "failed"
    )
    triage = ops.json("GET", "/api/v1/triage")
    assert [(u["reference"], u["why"]) for u in triage["undelivered_forwards"]] == [("PK-000002", "refused")]
    failed = [m for m in triage["failed_mail"] if m["kind"] == "forward"]
    assert [m["referral"] for m in failed] == ["PK-000002"]

    relay.refusing = False
    ops.json("POST", f"/api/v1/triage/mail/{failed[0]['id']}/retry")
    wait_until(
        lambda: api.json("GET", "/api/v1/referrals/2")["forward"]["delivery"] == "sent", 60, "sent again"
    )
    assert len(to_unit(relay)) == 2  # one per forward: the refused one delivered once, on its retry
    assert ops.json("GET", "/api/v1/triage")["undelivered_forwards"] == []
