"""Mail in over SMTP, referral out in the right queue, or in triage with the right reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from postkasse.clock import SystemClock
from postkasse.committee import referrals
from postkasse.routing.refdata import import_file
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from postkasse.store.schema import referrals as referrals_table
from tests.conftest import REDIS_URL
from tests.helpers import send, stored_id
from tests.refdata_files import POSTNORD, registry_file, roads_file
from tests.servers import Daemon, Worker, wait_until

CHILD_IN_FAVRSKOV = "0102154123"


def prepare(tmp_path: Path, database_url: str) -> Store:
    store = Store(database_url)
    upgrade(store)
    now = SystemClock().now()
    import_file(store, "postnord", POSTNORD, now)
    import_file(store, "roads", roads_file(tmp_path), now)
    import_file(
        store,
        "registry",
        registry_file(tmp_path, [(CHILD_IN_FAVRSKOV, "710", "Skolevej", "12", "8382")]),
        now,
    )
    return store


def mail(body: str, subject: str = "Henvisning", message_id: str | None = None) -> bytes:
    headers = f"From: Laege <laege@klinik.example>\r\nSubject: {subject}\r\n"
    if message_id:
        headers += f"Message-ID: <{message_id}>\r\n"
    headers += "Content-Type: text/plain; charset=utf-8\r\n"
    return (headers + "\r\n" + body.replace("\n", "\r\n")).encode()


def referral_of(store: Store, message_id: int) -> Any:
    with store.read() as conn:
        return referrals.for_message(conn, message_id)


def wait_for_referral(store: Store, message_id: int) -> Any:
    wait_until(lambda: referral_of(store, message_id) is not None, 60, f"a referral for message {message_id}")
    return referral_of(store, message_id)


@pytest.mark.parametrize(
    ("body", "state", "municipality", "reason"),
    [
        (f"CPR: {CHILD_IN_FAVRSKOV}\nAdresse: Bakkevej 3, 8000 Aarhus C", "new", "0710", None),
        ("CPR: 020317-4222\nAdresse: Søtoftevej 5, 4100 Ringsted", "new", "0316", None),
        ("CPR: 020317-4222\nAdresse: Ringstedgade 1, 4100 Ringsted", "triage", None, "ambiguous_postal_code"),
        ("Vedr. en dreng i 3. klasse, ingen CPR", "triage", None, "no_cpr"),
        ("CPR: 020317-4222 og 030418-4111", "triage", None, "several_patients"),
    ],
    ids=["registry", "street", "ambiguous", "no-cpr", "two-children"],
)
def test_mail_reaches_the_right_queue(
    daemon_factory: type[Daemon],
    tmp_path: Path,
    body: str,
    state: str,
    municipality: str | None,
    reason: str | None,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    store = prepare(tmp_path, database_url)
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    code, reply = send(daemon.smtp_port, mail(body))
    assert code == 250
    referral = wait_for_referral(store, stored_id(reply))
    assert (referral.state, referral.municipality, referral.triage_reason) == (state, municipality, reason)
    if municipality == "0710":
        assert referral.flags == ["address_disagrees"]
    store.dispose()


def test_a_resent_message_is_shown_once(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'pk.db'}"
    store = prepare(tmp_path, database_url)
    daemon = daemon_factory(tmp_path, database_url)
    daemon.start()
    raw = mail(f"CPR: {CHILD_IN_FAVRSKOV}", message_id="henv-1@klinik.example")
    first = stored_id(send(daemon.smtp_port, raw)[1])
    second = stored_id(send(daemon.smtp_port, raw)[1])
    wait_for_referral(store, first)

    def duplicate_noted() -> bool:
        with store.read() as conn:
            return any(
                e.action == "duplicate_received" for e in referrals.events(conn, referral_of(store, first).id)
            )

    wait_until(duplicate_noted, 60, "the duplicate to be noted")
    assert referral_of(store, second) is None
    with store.read() as conn:
        assert len(conn.execute(select(referrals_table)).all()) == 1
    store.dispose()


@pytest.mark.slow
def test_routing_through_redis_workers(
    daemon_factory: type[Daemon], tmp_path: Path, database_url: str, redis_namespace: str
) -> None:
    store = prepare(tmp_path, database_url)
    daemon = daemon_factory(tmp_path, database_url, broker={"url": REDIS_URL, "namespace": redis_namespace})
    daemon.start()
    worker = Worker(tmp_path, daemon.config)
    worker.start()
    try:
        code, reply = send(daemon.smtp_port, mail(f"CPR: {CHILD_IN_FAVRSKOV}"))
        assert code == 250
        referral = wait_for_referral(store, stored_id(reply))
        assert (referral.state, referral.municipality) == ("new", "0710")
    finally:
        worker.terminate()
        store.dispose()
