"""The whole conversation with real processes: a referral in over SMTP, a receipt out through the relay,
the committee asks over HTTP, the sender answers by mail, the committee returns it with a reason."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from postkasse.committee.client import ApiClient, ApiClientError
from tests.helpers import RCPT
from tests.servers import Daemon, wait_until
from tests.sink import Delivered, Sink
from tests.test_routing_e2e import CHILD_IN_FAVRSKOV, prepare


@pytest.fixture
def relay() -> Iterator[Sink]:
    sink = Sink().start()
    yield sink
    sink.stop()


def new_token(daemon: Daemon, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "postkasse", "--config", str(daemon.config), "token", "new", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=daemon.workdir,
    )
    return done.stdout.strip().splitlines()[-1]


def send(daemon: Daemon, raw: bytes, sender: str = "laege@klinik.example") -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(sender, [RCPT], raw)


def arrived(relay: Sink, count: int) -> list[Delivered]:
    wait_until(lambda: len(relay.mails()) >= count, 60, f"{count} mails at the relay")
    return relay.mails()


def test_a_question_and_its_answer_stay_on_the_referral(
    daemon_factory: type[Daemon], tmp_path: Path, relay: Sink
) -> None:
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
    favrskov = ApiClient(
        f"http://127.0.0.1:{daemon.http_port}",
        new_token(daemon, "--municipality", "0710", "--name", "favrskov"),
    )
    aarhus = ApiClient(
        f"http://127.0.0.1:{daemon.http_port}",
        new_token(daemon, "--municipality", "0751", "--name", "aarhus"),
    )

    send(
        daemon,
        (
            f"From: laege@klinik.example\r\nSubject: Henvisning\r\nMessage-ID: <henv-1@klinik.example>\r\n"
            f"\r\nCPR: {CHILD_IN_FAVRSKOV}\r\nBarnet har ondt i maven hver morgen.\r\n"
        ).encode(),
    )
    (receipt,) = arrived(relay, 1)
    assert receipt.mail["In-Reply-To"] == "<henv-1@klinik.example>"
    assert receipt.mail["Subject"] == "Kvittering for modtagelse [PK-000001]"

    queue = favrskov.json("GET", "/api/v1/municipalities/0710/referrals")
    assert [item["reference"] for item in queue["items"]] == ["PK-000001"]
    with pytest.raises(ApiClientError, match="404 not_found"):
        aarhus.json("GET", "/api/v1/referrals/1")
    favrskov.json("POST", "/api/v1/referrals/1/messages", {"text": "Hvad har skolen allerede gjort?"})
    question = arrived(relay, 2)[1]
    assert question.envelope_sender == "postkasse@localhost"
    assert "[PK-000001]" in question.mail["Subject"]
    assert question.mail["In-Reply-To"] == "<henv-1@klinik.example>"

    send(
        daemon,
        (
            f"From: laege@klinik.example\r\nSubject: Re: {question.mail['Subject']}\r\n"
            f"In-Reply-To: {question.mail['Message-ID']}\r\nMessage-ID: <svar-1@klinik.example>\r\n"
            "\r\nSkolen har holdt et møde med forældrene.\r\n"
        ).encode(),
    )
    reply_receipt = arrived(relay, 3)[2]
    assert "Dit svar er lagt på sagen" in reply_receipt.mail.get_content()
    assert "PK-000001" in reply_receipt.mail["Subject"]
    referral = favrskov.json("GET", "/api/v1/referrals/1")
    assert [(e["direction"], e["text"]) for e in referral["thread"]] == [
        ("to_sender", "Hvad har skolen allerede gjort?"),
        ("from_sender", "Skolen har holdt et møde med forældrene."),
    ]
    assert referral["unread_reply"] is True  # as listed; reading it has now cleared it
    assert favrskov.json("GET", "/api/v1/referrals/1")["unread_reply"] is False
    assert (
        favrskov.json("GET", "/api/v1/municipalities/0710/referrals")["items"][0]["id"] == 1
    )  # no new referral

    favrskov.json("POST", "/api/v1/referrals/1/pull")
    favrskov.json(
        "POST",
        "/api/v1/referrals/1/decision",
        {"outcome": "returned", "reason": "Familien er allerede i forløb hos PPR."},
    )
    returned = arrived(relay, 4)[3]
    assert "tilbagevist" in returned.mail.get_content()
    assert "Familien er allerede i forløb hos PPR." in returned.mail.get_content()
    receipts = [d for d in relay.mails() if d.mail["Auto-Submitted"] == "auto-replied"]
    assert sorted(d.mail["In-Reply-To"] for d in receipts) == [
        "<henv-1@klinik.example>",
        "<svar-1@klinik.example>",
    ]


def test_queue_pull_from_the_shell(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    prepare(tmp_path, database_url).dispose()
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    token = new_token(daemon, "--municipality", "0710", "--name", "favrskov")
    raw = (
        f"Subject: Henvisning\r\nMessage-ID: <q1@klinik.example>\r\n\r\nCPR: {CHILD_IN_FAVRSKOV}\r\n".encode()
    )
    send(daemon, raw)
    client = ApiClient(f"http://127.0.0.1:{daemon.http_port}", token)
    wait_until(
        lambda: bool(client.json("GET", "/api/v1/municipalities/0710/referrals")["items"]),
        60,
        "the referral in the queue",
    )
    out = tmp_path / "sagssystem"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "postkasse",
            "--config",
            str(daemon.config),
            "queue",
            "pull",
            "--municipality",
            "0710",
            "--out",
            str(out),
            "--token",
            token,
        ],
        capture_output=True,
        text=True,
        cwd=daemon.workdir,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["PK-000001"]
    assert (out / "PK-000001.eml").read_bytes() == raw
    assert '"cpr": "0102154123"' in (out / "PK-000001.json").read_text()
    assert client.json("GET", "/api/v1/municipalities/0710/referrals")["items"] == []
    assert client.json("GET", "/api/v1/municipalities/0710/referrals?state=pulled")["items"][0]["id"] == 1
