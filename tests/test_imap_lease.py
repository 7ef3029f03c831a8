"""The IMAP account lease: one daemon reads an account, another takes over only when it is gone."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from postkasse.mailbox.imap_lease import Lease
from postkasse.store import Store
from postkasse.store.schema import imap_leases

T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
SECONDS = 180


def lease(store: Store, holder: str, account: str = "favrskov") -> Lease:
    return Lease(store, account, holder, SECONDS)


def test_the_first_daemon_takes_the_lease_and_the_second_stands_by(store: Store) -> None:
    first, second = lease(store, "a:1:x"), lease(store, "b:2:y")
    taken = first.take(T0)
    assert (taken.held, taken.holder, taken.expires_at) == (True, "a:1:x", T0 + timedelta(seconds=SECONDS))
    refused = second.take(T0 + timedelta(seconds=1))
    assert (refused.held, refused.holder) == (False, "a:1:x")


def test_renewing_keeps_the_lease_past_its_first_term(store: Store) -> None:
    first, second = lease(store, "a:1:x"), lease(store, "b:2:y")
    first.take(T0)
    for minutes in (1, 2, 3, 4, 5):
        assert first.take(T0 + timedelta(minutes=minutes)).held
    assert not second.take(T0 + timedelta(minutes=6, seconds=59)).held
    with store.read() as conn:
        taken_at = conn.execute(select(imap_leases.c.taken_at)).scalar_one()
    assert taken_at == T0  # renewals keep the time it was taken


def test_a_lease_that_ran_out_is_taken_over_and_the_old_holder_learns_it(store: Store) -> None:
    first, second = lease(store, "a:1:x"), lease(store, "b:2:y")
    first.take(T0)
    later = T0 + timedelta(seconds=SECONDS)
    assert second.take(later).held
    again = first.take(later + timedelta(seconds=1))
    assert (again.held, again.holder) == (False, "b:2:y")


def test_a_lease_given_back_is_taken_over_at_once(store: Store) -> None:
    first, second = lease(store, "a:1:x"), lease(store, "b:2:y")
    first.take(T0)
    first.give_back(T0 + timedelta(seconds=10))
    assert second.take(T0 + timedelta(seconds=10)).held


def test_giving_back_a_lease_another_daemon_holds_changes_nothing(store: Store) -> None:
    first, second = lease(store, "a:1:x"), lease(store, "b:2:y")
    first.take(T0)
    second.give_back(T0)
    assert not second.take(T0 + timedelta(seconds=1)).held


def test_each_account_has_its_own_lease(store: Store) -> None:
    assert lease(store, "a:1:x", "favrskov").take(T0).held
    assert lease(store, "b:2:y", "silkeborg").take(T0).held
    assert not lease(store, "b:2:y", "favrskov").take(T0).held


def test_of_daemons_racing_for_a_free_lease_exactly_one_gets_it(store: Store) -> None:
    contenders = [lease(store, f"host:{n}:t") for n in range(8)]
    start = threading.Barrier(len(contenders))
    held: list[str] = []

    def race(contender: Lease) -> None:
        start.wait()
        if contender.take(T0).held:
            held.append(contender.holder)

    threads = [threading.Thread(target=race, args=(c,)) for c in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(held) == 1
    with store.read() as conn:
        assert conn.execute(select(imap_leases.c.holder)).scalar_one() == held[0]
