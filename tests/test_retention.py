"""Retention on both stores with the clock in the test's hand: content leaves when its purpose has lapsed,
what statistics and the audit need stays, and a person's data can be exported or erased on request."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from postkasse import cli
from postkasse.committee import audit, pathways, referrals, tokens
from postkasse.committee.stats import statistics
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.rules import RuleBook
from postkasse.flows.purge import run_purge
from postkasse.pathway.plan import Responsible
from postkasse.retention import subjects
from postkasse.retention.purge import Policy, apply, survey
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.store.schema import audit as audit_table
from postkasse.store.schema import messages, thread
from postkasse.store.schema import referrals as referrals_table
from tests.test_api import add_referral, make_world

T0 = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=60)
MUNICIPALITIES = Municipalities.load(DEFAULT_MUNICIPALITIES)


def mail(marker: str, cpr: str = "0102154123") -> bytes:
    return (
        "From: laege@klinik.example\r\nSubject: Henvisning\r\n"
        f"Message-ID: <{marker[::-1]}@klinik.example>\r\n\r\n"
        f"CPR: {cpr}\r\nSaerligt kendetegn: {marker}\r\n"
    ).encode()


def handled(store: Store, marker: str, days_ago: int, outcome: str = "closed", where: str = "0710") -> int:
    referral = add_referral(store, where, raw=mail(marker))
    at = NOW - timedelta(days=days_ago)
    with store.write() as conn:
        referrals.pull(conn, referral, at, "sag")
        referrals.decide(conn, referral, outcome, None, None, at, "sag")
        conn.execute(
            thread.insert().values(
                referral_id=referral, at=at, direction="to_sender", author="sag", text=marker
            )
        )
        if outcome == "joint_pathway":
            who = Responsible(name="Mette", title="PPR", telephone="1234")
            pathways.start(conn, referral, where, who, at, RuleBook())
    return referral


def content_of(store: Store, referral: int) -> tuple[bytes, str | None, list[str]]:
    with store.read() as conn:
        row = conn.execute(
            select(messages.c.raw, referrals_table.c.cpr)
            .join(referrals_table, referrals_table.c.message_id == messages.c.id)
            .where(referrals_table.c.id == referral)
        ).one()
        texts = list(conn.execute(select(thread.c.text).where(thread.c.referral_id == referral)).scalars())
    return bytes(row.raw), row.cpr, texts


def numbers(store: Store) -> dict[str, object]:
    with store.read() as conn:
        return statistics(conn, date(2026, 3, 1), date(2026, 3, 31), MUNICIPALITIES).as_json()


def test_content_leaves_after_its_period_and_the_statistics_stay(store: Store, tmp_path: Path) -> None:
    old = handled(store, "GAMMEL-7f3a9c", 31)
    recent = handled(store, "NYLIG-51b2e0", 29)
    pathway = handled(store, "FORLOEB-c4d8e1", 45, outcome="joint_pathway")
    waiting = add_referral(store, "0710", raw=mail("VENTER-9e0f22"))
    before = numbers(store)

    with store.read() as conn:
        planned = survey(conn, NOW, Policy())
    assert planned.counts["referrals"] == 1 and planned.referrals == [old]
    removed = run_purge(store, NOW, Policy())
    assert removed is not None and removed["referrals"] == 1

    raw, cpr, texts = content_of(store, old)
    assert (raw, cpr, texts) == (b"", None, [""])
    for kept, marker in (
        (recent, b"NYLIG-51b2e0"),
        (pathway, b"FORLOEB-c4d8e1"),
        (waiting, b"VENTER-9e0f22"),
    ):
        assert marker in content_of(store, kept)[0]
    assert numbers(store) == before
    assert run_purge(store, NOW, Policy()) == dict.fromkeys(removed, 0)  # nothing twice

    if store.dialect == "sqlite":
        path = Path(store.engine.url.database or "")
        files = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"GAMMEL-7f3a9c" not in files and b"NYLIG-51b2e0" in files


def test_purges_at_once_remove_each_item_once(store: Store) -> None:
    made = [handled(store, f"SAMTIDIG-{n}", 40) for n in range(6)]
    with store.read() as conn:
        surveys = [survey(conn, NOW, Policy()) for _ in range(3)]  # three daemons read, then write in turn
    counts = []
    for found in surveys:
        with store.write() as conn:
            done = apply(conn, found, Policy())
        counts.append(done["referrals"] if done else 0)
    assert sum(counts) == len(made) and counts[0] == len(made)


def test_audit_and_bookkeeping_go_after_their_own_periods(store: Store) -> None:
    with store.write() as conn:
        audit.record(conn, "sag", "read", None, NOW - timedelta(days=1826))
        audit.record(conn, "sag", "read", None, NOW - timedelta(days=10))
    removed = run_purge(store, NOW, Policy())
    assert removed is not None and removed["audit"] == 1
    with store.read() as conn:
        assert len(conn.execute(select(audit_table)).all()) == 1


def test_a_persons_data_is_exported_and_erased_on_request(store: Store, tmp_path: Path) -> None:
    first = add_referral(store, "0710", raw=mail("EKSPORT-a1"))
    second = add_referral(store, "0751", raw=mail("EKSPORT-b2"))
    other = add_referral(store, "0710", raw=mail("ANDEN-c3", cpr="0103154122"))
    with store.write() as conn:
        conn.execute(referrals_table.update().where(referrals_table.c.id == other).values(cpr="0103154122"))
        audit.record(conn, "aarhus-sag", "read", second, NOW)
        written = subjects.export(conn, "0102154123", tmp_path, MUNICIPALITIES, "jens", "Aktindsigt", NOW)
    assert written == [f"PK-{first:06d}", f"PK-{second:06d}"]
    record = json.loads((tmp_path / f"PK-{second:06d}" / "henvendelse.json").read_text(encoding="utf-8"))
    assert record["municipality"] == "0751" and record["facts"]["cpr"] == "0102154123"
    assert [(a["actor"], a["action"]) for a in record["audit"]] == [("aarhus-sag", "read")]
    assert b"EKSPORT-b2" in (tmp_path / f"PK-{second:06d}" / "besked-1.eml").read_bytes()
    assert not (tmp_path / f"PK-{other:06d}").exists()
    with store.read() as conn:
        exported = conn.execute(
            select(audit_table.c.actor, audit_table.c.detail).where(audit_table.c.action == "subject_export")
        ).all()
    assert [(a.actor, a.detail["reason"]) for a in exported] == [("ops:jens", "Aktindsigt")] * 2

    before = numbers(store)
    with store.write() as conn:
        erased = subjects.erase(conn, "0102154123", "jens", "Sendt til forkert postkasse", NOW)
    assert erased == written
    assert content_of(store, first)[:2] == (b"", None) and content_of(store, second)[:2] == (b"", None)
    assert b"ANDEN-c3" in content_of(store, other)[0]
    assert numbers(store) == before


def test_the_commands_count_by_kind_and_an_erasure_asks_first(
    store: Store,
    tmp_path: Path,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled(store, "KOMMANDO-1", 40)
    config = tmp_path / "postkasse.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[log]\njson = false\n', encoding="utf-8")
    at = NOW.isoformat()
    assert cli.main(["--config", str(config), "purge", "--at", at, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "referrals              1" in out
    assert cli.main(["--config", str(config), "purge", "--at", at]) == 0
    assert "removed" in capsys.readouterr().out
    assert cli.main(["--config", str(config), "purge", "--at", "yesterday"]) == 2

    add_referral(store, "0710", raw=mail("SLET-2"))
    monkeypatch.setattr("builtins.input", lambda _: "no")
    args = ["subject", "erase", "--cpr", "010215-4123", "--reason", "fejl", "--operator", "jens"]
    assert cli.main(["--config", str(config), *args]) == 1
    assert cli.main(["--config", str(config), *args, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "erased the content of" in out and "0102154123" not in out and "010215" not in out


def test_subject_access_through_the_api_needs_the_right_and_a_reason(store: Store) -> None:
    world = next(make_world(store))
    with store.write() as conn:
        world.tokens["dpo"] = tokens.create(conn, "dpo", "ops", None, T0, ("subject_access",))
    url = "/api/v1/subjects/010215-4123"
    assert world.call("GET", f"{url}?reason=x", "ops").status_code == 403  # ops without the right
    assert world.call("GET", url, "dpo").status_code == 422  # no reason
    found = world.call("GET", f"{url}?reason=Aktindsigt", "dpo").json()["referrals"]
    assert sorted(str(r["municipality"]) for r in found) == ["0710", "0751", "None"]  # one in triage
    assert all(r["messages"][0]["name"] == "besked-1.eml" for r in found)
    with store.read() as conn:
        rows = conn.execute(select(audit_table.c.actor).where(audit_table.c.action == "subject_export")).all()
    assert [r.actor for r in rows] == ["dpo"] * 3
