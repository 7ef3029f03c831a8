"""The web inbox's pages in-process over a real store: what a committee member and an operator see and
can do, and that the pages keep the API's rules (own municipality only, audit, no contents for ops)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from postkasse.clock import FixedClock
from postkasse.committee import users
from postkasse.deadlines.badges import badge
from postkasse.store import Store
from postkasse.store.schema import audit, outgoing_mail
from postkasse.store.schema import referrals as referrals_table
from tests.inbox_world import Browser, Site, site
from tests.test_api import T0, add_referral

HOSTILE = (
    b"From: Dr. Hansen <laege@klinik.example>\r\nSubject: Henvisning\r\nMessage-ID: <a1@klinik.example>\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Barnet sover d\xc3\xa5rligt.</p><script>alert(1)</script><img src=x onerror=alert(2)>\r\n"
    b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="../../x.pdf"\r\n\r\n'
    b"%PDF-1.4\r\n"
    b'--b\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename="tegning.svg"\r\n\r\n'
    b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(3)</script></svg>\r\n"
    b"--b\r\nContent-Type: application/pdf\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''journal%20%C3%A6%C3%B8.pdf\r\n\r\n"
    b"%PDF-1.4\r\n--b--\r\n"
)


@pytest.fixture
def web(store: Store) -> Site:
    return site(store, FixedClock(T0 + timedelta(hours=2)))


def member(web: Site, name: str = "anna", municipality: str | None = "0710") -> Browser:
    with web.store.write() as conn:
        password = users.add(conn, name, "committee" if municipality else "ops", municipality, T0)
    browser = web.browser()
    assert browser.login(name, password).status_code == 303
    return browser


def test_badges_say_in_words_where_a_deadline_stands() -> None:
    now = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)  # 11:00 in Copenhagen
    day = timedelta(days=1)
    assert badge("handling", now, now + day, now + 5 * day).text == "frist om 5 dage"
    assert badge("handling", now, now - day, now + day).text == "frist i morgen"
    assert badge("handling", now, now - day, now + day).level == "warning"
    assert badge("emptying", now, now - day, now + timedelta(hours=2)).text == "frist i dag"
    assert (b := badge("emptying", now, now - day, now - timedelta(hours=1))).text == "overskredet"
    assert b.level == "breach"
    assert badge("handling", now, now - 3 * day, now - 2 * day).text == "overskredet 2 dage"
    assert badge("handling", now, now - 3 * day, now - day).text == "overskredet 1 dag"
    assert badge("handling", now, now - 3 * day, now - day, stopped=True).text == "undtaget"
    # the day turns at midnight in Copenhagen, not in UTC: 23:30 UTC is already tomorrow there
    assert (
        badge("handling", now, now + day, datetime(2026, 12, 2, 23, 30, tzinfo=UTC)).text == "frist i morgen"
    )


def test_the_queue_shows_what_to_do_next_without_the_cpr(web: Site) -> None:
    plain = add_referral(web.store, "0710", sender="laege@klinik.example")
    urgent = add_referral(web.store, "0710", raw=HOSTILE)
    other = add_referral(web.store, "0751")
    with web.store.write() as conn:
        conn.execute(
            update(referrals_table)
            .where(referrals_table.c.id == urgent)
            .values(urgent=True, flags=["address_disagrees"], queued_at=T0)
        )
        conn.execute(update(referrals_table).values(queued_at=T0))
    browser = member(web)
    page = browser.get("/indbakke").text
    assert page.index(f"PK-{urgent:06d}") < page.index(f"PK-{plain:06d}")  # urgent first
    assert f"PK-{other:06d}" not in page
    assert "0102154123" not in page and "010215-4123" not in page and "Anna Hansen" not in page
    assert "laege@klinik.example" in page and "anden afsender" in page  # name and kind of sender
    assert "11 år" in page  # born 1 February 2015, seen on 28 March 2026
    assert "haster" in page and "adressen stemmer ikke" in page
    assert "Tømning:</span> frist i morgen" in page and "Behandling:</span> frist om" in page
    assert "Dagens tømning: i orden." in page and "2 nye henvendelser venter" in page
    filtered = browser.get("/indbakke?markering=urgent").text
    assert f"PK-{urgent:06d}" in filtered and f"PK-{plain:06d}" not in filtered
    flagged = browser.get("/indbakke?markering=address_disagrees").text
    assert f"PK-{urgent:06d}" in flagged and f"PK-{plain:06d}" not in flagged
    with web.store.read() as conn:
        listed = conn.execute(select(audit.c.detail).where(audit.c.action == "list")).scalars().all()
    assert listed and all(d["municipality"] == "0710" and d["via"] == "web" for d in listed)


def test_the_queue_pages_fifty_at_a_time(web: Site) -> None:
    made = [add_referral(web.store, "0710") for _ in range(51)]
    browser = member(web)
    first = browser.get("/indbakke").text
    assert "Side 1 af 2" in first and f"PK-{made[-1]:06d}" not in first
    second = browser.get("/indbakke?side=2").text
    assert f"PK-{made[-1]:06d}" in second and "Forrige side" in second


def test_a_referral_is_read_taken_noted_answered_and_decided(web: Site) -> None:
    referral = add_referral(web.store, "0710")
    browser = member(web)
    page = browser.get(f"/henvendelser/{referral}")
    assert page.status_code == 200
    assert "010215-4123" in page.text and "CPR-registret angiver kommunen." in page.text
    assert "CPR: 0102154123" in page.text  # the message text itself
    assert "Tag sagen" in page.text and 'for="outcome"' not in page.text  # decide once taken

    taken = browser.post(f"/henvendelser/{referral}/tag")
    assert (taken.status_code, taken.headers["location"]) == (303, f"/henvendelser/{referral}?ok=taget")
    page = browser.get(taken.headers["location"]).text
    assert 'role="status">Du har taget sagen.' in page and "taget af anna" in page

    assert browser.post(f"/henvendelser/{referral}/note", {"text": "Ring til skolen."}).status_code == 303
    empty = browser.post(f"/henvendelser/{referral}/svar", {"text": "   "})
    assert empty.status_code == 422 and "Feltet skal udfyldes." in empty.text
    assert browser.post(f"/henvendelser/{referral}/svar", {"text": "Hvad siger skolen?"}).status_code == 303
    with web.store.read() as conn:
        sent = conn.execute(select(outgoing_mail.c.kind, outgoing_mail.c.raw)).all()
    assert [kind for kind, _ in sent] == ["committee_message"]
    assert b"Ring til skolen" not in sent[0].raw

    unreasoned = browser.post(f"/henvendelser/{referral}/afgoerelse", {"outcome": "returned"})
    assert unreasoned.status_code == 422 and "needs the reason" in unreasoned.text
    decided = browser.post(f"/henvendelser/{referral}/afgoerelse", {"outcome": "closed", "reason_code": ""})
    assert decided.status_code == 303
    page = browser.get(decided.headers["location"]).text
    assert "<strong>behandlet</strong>: afsluttet" in page
    assert "Ring til skolen." in page and "kun internt" in page
    again = browser.post(f"/henvendelser/{referral}/afgoerelse", {"outcome": "closed"})
    assert again.status_code == 422 and "nuværende tilstand" in again.text
    with web.store.read() as conn:
        reads = conn.execute(
            select(audit.c.actor, audit.c.detail).where(
                audit.c.action == "read", audit.c.referral_id == referral
            )
        ).all()
    assert reads and all(r.actor == "anna" and r.detail == {"via": "web"} for r in reads)
    assert "læst" in page and "taget" in page  # the history shows reads and changes


def test_an_exception_stops_the_handling_clock(web: Site) -> None:
    referral = add_referral(web.store, "0710")
    browser = member(web)
    browser.get(f"/henvendelser/{referral}")
    done = browser.post(
        f"/henvendelser/{referral}/undtagelse", {"reason": "medical_reason", "note": "Indlagt."}
    )
    assert done.status_code == 303
    page = browser.get(done.headers["location"]).text
    assert "undtaget" in page and "lægefagligt hensyn" in page


def test_another_municipality_and_operations_see_nothing_of_a_referral(web: Site) -> None:
    referral = add_referral(web.store, "0710")
    aarhus = member(web, "bo", "0751")
    refused = aarhus.get(f"/henvendelser/{referral}")
    assert refused.status_code == 404 and "Anna Hansen" not in refused.text
    assert aarhus.get(f"/henvendelser/{referral}/bilag/1").status_code == 404
    assert aarhus.post(f"/henvendelser/{referral}/tag").status_code == 404
    ops = member(web, "drift", None)
    assert ops.get(f"/henvendelser/{referral}").status_code == 403
    assert ops.get("/indbakke").status_code == 403
    assert member(web, "cecilie").get("/drift").status_code == 403
    assert aarhus.post(f"/henvendelser/{referral}/tag", token=False).status_code == 403


def test_the_html_part_is_shown_as_text_and_attachments_get_safe_names(web: Site) -> None:
    referral = add_referral(web.store, "0710", raw=HOSTILE)
    browser = member(web)
    page = browser.get(f"/henvendelser/{referral}").text
    assert "Barnet sover dårligt." in page
    assert "<script>" not in page.split("<main", 1)[1] and "onerror=" not in page
    download = browser.get(f"/henvendelser/{referral}/bilag/1")
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "/" not in disposition.split("filename*")[0]
    assert "vedhaeftning-1.bin" in disposition
    assert download.headers["content-type"] == "application/octet-stream"
    svg = browser.get(f"/henvendelser/{referral}/bilag/2?vis=1")
    assert svg.headers["content-type"] == "application/octet-stream"  # never shown: it could run script
    assert svg.headers["content-disposition"].startswith("attachment;")
    danish = browser.get(f"/henvendelser/{referral}/bilag/3?vis=1")
    assert danish.headers["content-type"] == "application/pdf"
    assert danish.headers["content-disposition"] == (
        "inline; filename=\"journal __.pdf\"; filename*=utf-8''journal%20%C3%A6%C3%B8.pdf"
    )
    assert "default-src 'none'" in danish.headers["content-security-policy"]
    assert browser.get(f"/henvendelser/{referral}/bilag/9").status_code == 404
    with web.store.read() as conn:
        fetched = conn.execute(
            select(audit.c.actor).where(audit.c.action == "read_attachment", audit.c.referral_id == referral)
        ).scalars()
        assert set(fetched) == {"anna"}


def test_due_lists_late_referrals_and_the_week_ahead(web: Site) -> None:
    now = web.clock.now()
    far, soon, late = (add_referral(web.store, "0710") for _ in range(3))
    with web.store.write() as conn:
        for referral, due in ((far, now + timedelta(days=9)), (soon, now + timedelta(days=3)), (late, now)):
            conn.execute(
                update(referrals_table)
                .where(referrals_table.c.id == referral)
                .values(warn_at=due - timedelta(days=1), due_at=due)
            )
    page = member(web).get("/frister").text
    late_part, coming = page.split("næste 7 dage")
    assert f"PK-{late:06d}" in late_part and "overskredet" in late_part
    assert f"PK-{soon:06d}" in coming and f"PK-{soon:06d}" not in late_part
    assert f"PK-{far:06d}" not in page


def test_operations_see_queues_sort_triage_and_get_the_statistics(web: Site) -> None:
    add_referral(web.store, "0710")
    triaged = add_referral(web.store, None)
    with web.store.write() as conn:
        conn.execute(update(referrals_table).values(queued_at=T0))
    ops = member(web, "drift", None)
    overview = ops.get("/drift").text
    assert "Favrskov Kommune (0710)" in overview and "Til manuel sortering (triage): 1" in overview
    page = ops.get("/drift/triage").text
    assert f"PK-{triaged:06d}" in page and "CPR-registret angiver kommunen." in page
    assert "Anna Hansen" not in page and "0102154123" not in page and "Henvisning" not in page
    refused = ops.post(f"/drift/triage/{triaged}/tildel", {"municipality": "0710", "note": ""})
    assert refused.status_code == 422 and "skriv en begrundelse" in refused.text
    done = ops.post(f"/drift/triage/{triaged}/tildel", {"municipality": "0710", "note": "Ringede."})
    assert (done.status_code, done.headers["location"]) == (303, "/drift/triage?ok=tildelt")
    assert "Intet venter på sortering." in ops.get(done.headers["location"]).text
    assert ops.get("/drift/fejlet-post").status_code == 200

    stats = ops.get("/drift/statistik?fra=2026-03-01&til=2026-03-31")
    assert (
        stats.status_code == 200
        and 'src="/drift/statistik.svg?fra=2026-03-01&amp;til=2026-03-31"' in stats.text
    )
    chart = ops.get("/drift/statistik.svg?fra=2026-03-01&til=2026-03-31")
    assert chart.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in chart.content and b"<script" not in chart.content and b"Favrskov" in chart.content
    table = ops.get("/drift/statistik.csv?fra=2026-03-01&til=2026-03-31")
    assert table.headers["content-disposition"] == (
        'attachment; filename="postkasse-statistik-2026-03-01-2026-03-31.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert rows[-1]["municipality"] == "total" and int(rows[-1]["received"]) == 2
    assert ops.get("/drift/statistik?fra=2026-04-01&til=2026-03-01").status_code == 422
    assert ops.get("/drift/statistik?fra=igaar").status_code == 422


def test_a_joint_pathway_is_decided_and_its_meetings_recorded_in_the_browser(web: Site) -> None:
    referral = add_referral(web.store, "0710")
    browser = member(web)
    browser.get(f"/henvendelser/{referral}")
    browser.post(f"/henvendelser/{referral}/tag")
    missing = browser.post(f"/henvendelser/{referral}/afgoerelse", {"outcome": "joint_pathway"})
    assert missing.status_code == 422 and "indsatsansvarlig" in missing.text
    decided = browser.post(
        f"/henvendelser/{referral}/afgoerelse",
        {
            "outcome": "joint_pathway",
            "responsible_name": "Mette Sørensen",
            "responsible_title": "Sundhedsplejerske",
            "responsible_telephone": "87654321",
        },
    )
    assert decided.status_code == 303
    page = browser.get(decided.headers["location"]).text
    assert "Fælles forpligtende forløb" in page and "Mette Sørensen" in page and "opstartsmøde" in page
    recorded = browser.post(
        f"/henvendelser/{referral}/moede",
        {
            "kind": "opstart",
            "held_at": "2026-04-10T10:00",
            "place": "Hinnerup Skole",
            "participants": "Hanne Hansen | mor\nLars | lærer",
            "guardians": "Hanne Hansen | mor | Skolevej 12, 8382 Hinnerup | ja",
            "custody": "Fælles",
            "what_works": "En god ven",
            "what_is_hard": "Morgener",
            "goals": "Komme i skole\nSove hele natten",
            "agreements": "Samtaler | hver onsdag | PPR",
            "expectations": "Alle melder tilbage",
            "next_meeting": "",
        },
    )
    assert recorded.status_code == 303, recorded.text
    page = browser.get(recorded.headers["location"]).text
    assert "Mødet og handleplanen er gemt." in page and "Komme i skole" in page
    assert "Samtaler: hver onsdag (ansvarlig: PPR)" in page
    assert "Hanne Hansen | mor | Skolevej 12, 8382 Hinnerup | ja" in page  # the next meeting starts from it
    explained = browser.post(f"/henvendelser/{referral}/forklaring", {"text": "Familien er bortrejst."})
    assert explained.status_code == 303
    assert "Familien er bortrejst." in browser.get(explained.headers["location"]).text
    pdf = browser.get(f"/henvendelser/{referral}/handleplan.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
    assert member(web, "bo", "0751").get(f"/henvendelser/{referral}/handleplan.pdf").status_code == 404


def test_a_referral_is_transferred_from_the_referral_page(web: Site) -> None:
    referral = add_referral(web.store, "0710")
    anna = member(web)
    page = anna.get(f"/henvendelser/{referral}").text
    assert "Overfør til anden kommune" in page and 'value="0751"' in page
    missing = anna.post(f"/henvendelser/{referral}/overfoer", {"municipality": "0751", "reason": "moved"})
    assert missing.status_code == 422 and "Henvendelsen blev ikke overført" in missing.text
    moved = anna.post(
        f"/henvendelser/{referral}/overfoer", {"municipality": "0751", "reason": "moved", "note": "Flyttet."}
    )
    assert (moved.status_code, moved.headers["location"]) == (303, "/indbakke?ok=overfoert")
    assert "overført til den anden kommune" in anna.get(moved.headers["location"]).text
    assert anna.get(f"/henvendelser/{referral}").status_code == 404
    bo = member(web, "bo", "0751")
    assert f"PK-{referral:06d}" in bo.get("/indbakke").text
    page = bo.get(f"/henvendelser/{referral}").text
    assert "Overført fra kommune 0710 til 0751" in page and "barnet er flyttet" in page and "Flyttet." in page
