"""IMAP ingest: empty existing secure mailboxes into the store, each message exactly once.

Every configured account has a task of its own: connect, open the folder, take everything in it, then
wait for new mail (IDLE, or polling where the server has no IDLE) and take again. A message is stored
with its outbox row by the same group committer as SMTP, its place recorded, and only then moved to the
processed folder; a crash in between is undone by recognising it on the next pass (postkasse.mailbox.
imap_seen). A message that cannot be fetched, is no mail, or that the store refuses goes to the failed
folder, so it never holds up the rest. Any other trouble ends the session; the task connects again after
an exponential, jittered and capped backoff, and one account's trouble never touches another's. Where
several daemons are configured with the same account, only the one holding its lease reads it (postkasse.
mailbox.imap_lease); the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr
from typing import Any

from sqlalchemy.exc import DBAPIError

from postkasse import errors, logs, metrics
from postkasse.clock import Clock
from postkasse.config import ImapAccount
from postkasse.mailbox.committer import GroupCommitter
from postkasse.mailbox.imap_client import ImapError, ImapRefused, ImapSession
from postkasse.mailbox.imap_lease import Lease, holder_name
from postkasse.mailbox.imap_seen import CHANNEL, Place, Seen, peer
from postkasse.mailbox.smtp import has_bare_cr_or_lf
from postkasse.store import Received, Store, Stored, StoreUnavailable
from postkasse.store.messages import header_block

log = logs.get(__name__)

BATCH = 100  # messages taken, stored and moved together; on SIGTERM the batch in hand is finished
FETCH_BYTES = 16 * 1024 * 1024  # at most this much message data asked for in one FETCH
FIRST_BACKOFF = 1.0  # seconds before the first reconnection; doubled each time up to max_backoff_seconds
_HEADER_FIELD = re.compile(rb"^[!-9;-~]+:")  # RFC 5322 2.2: a message starts with a header field
_HEADERS = BytesHeaderParser(policy=compat32)


def refusal(raw: bytes, max_bytes: int) -> str | None:
    """Why these bytes are not a message we can take (a reason code), or None when they are."""
    if not raw:
        return "empty"
    if len(raw) > max_bytes:
        return "too_large"
    if has_bare_cr_or_lf(raw):
        return "bare_cr_or_lf"
    if not _HEADER_FIELD.match(raw):
        return "not_a_message"
    return None


def envelope_sender(raw: bytes) -> str:
    """The sender a receipt goes to: Return-Path (its `<>` is the null sender), else the From address."""
    headers = _HEADERS.parsebytes(header_block(raw), headersonly=True)
    return_path = headers.get("Return-Path")
    if return_path is not None:
        return parseaddr(str(return_path))[1]
    from_header = headers.get("From")
    return parseaddr(str(from_header))[1] if from_header is not None else ""


class LeaseLost(Exception):
    """Another daemon took the account's lease (ours ran out while we stalled): it reads the account now."""


class StoreDown(Exception):
    """The store does not answer: leave the mail where it is and try again later."""


@dataclass
class AccountStatus:
    """What /readyz shows of one account: kept when the error is past, with its time, for the operator."""

    connected: bool = False
    idle: bool = False
    reading: bool = False
    lease_holder: str | None = None
    last_cycle_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "idle": self.idle,
            "reading": self.reading,
            "lease_holder": self.lease_holder,
            "last_cycle_at": self.last_cycle_at.isoformat() if self.last_cycle_at else None,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
        }


@dataclass
class _Outcome:
    """What became of one batch: UID -> message id for the stored, UID -> reason for the failed."""

    stored: dict[int, int] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    store_down: bool = False


class AccountReader:
    """One account's task: its session, its backoff and its status."""

    def __init__(
        self,
        account: ImapAccount,
        committer: GroupCommitter,
        store: Store,
        clock: Clock,
        stop: asyncio.Event,
        holder: str,
    ) -> None:
        self.account = account
        self.committer = committer
        self.store = store
        self.seen = Seen(store)
        self.lease = Lease(store, account.name, holder, account.lease_seconds)
        self.renew_every = timedelta(seconds=account.lease_seconds / 3)
        self.renewed_at: datetime | None = None  # when we last took or renewed the lease; None: not ours
        self.clock = clock
        self.stop = stop
        self.status = AccountStatus()
        self.attempt = 0

    async def run(self) -> None:
        name = self.account.name
        # The stall alert counts from the start: an account that never connects is noticed too.
        metrics.IMAP_LAST_CYCLE.labels(name).set(self.clock.now().timestamp())
        metrics.IMAP_READING.labels(name).set(0)
        try:
            while not self.stop.is_set():
                await self._turn()
        finally:
            await self._give_back()

    async def _turn(self) -> None:
        """One session while we hold the lease, or one wait while another daemon does."""
        name = self.account.name
        try:
            ours = await self._hold()
        except StoreDown as exc:
            self._failed(str(exc))
            await self._back_off()
            return
        if not ours:
            await self._stand_by()
            return
        session = ImapSession(self.account)
        try:
            await self._session(session)
            return
        except LeaseLost as exc:
            log.warning("imap account taken over by another daemon", account=name, holder=str(exc))
            return
        except (ImapError, StoreDown) as exc:
            self._failed(str(exc))
        except Exception as exc:
            error = errors.describe(exc)
            log.error("imap account failed unexpectedly", account=name, error=error, stack=errors.trace(exc))
            self._failed(error)
        finally:
            session.close()
            self.status.connected = self.status.idle = False
        if not self.stop.is_set():
            await self._back_off()

    async def _hold(self) -> bool:
        """Take the lease, or renew it; True while it is ours."""
        now = self.clock.now()
        try:
            holding = await asyncio.to_thread(self.lease.take, now)
        except DBAPIError as exc:
            reason = type(exc.orig).__name__
            raise StoreDown(
                f"the store does not answer, so the account's lease cannot be held ({reason})"
            ) from exc
        if holding.held != self.status.reading or holding.holder != self.status.lease_holder:
            log.info(
                "imap account read by this daemon" if holding.held else "imap account read by another daemon",
                account=self.account.name,
                holder=holding.holder,
                until=holding.expires_at.isoformat(),
            )
        self.status.lease_holder = holding.holder
        self.renewed_at = now if holding.held else None
        self._reading(holding.held)
        return holding.held

    async def _keep(self) -> None:
        """Renew the lease once a third of it has passed, before more mail is taken; LeaseLost if gone."""
        due = self.renewed_at is None or self.clock.now() - self.renewed_at >= self.renew_every
        if due and not await self._hold():
            raise LeaseLost(self.status.lease_holder)

    async def _stand_by(self) -> None:
        """Another daemon reads the account: look again when its lease may have run out or been given back."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self.renew_every.total_seconds())

    async def _give_back(self) -> None:
        if self.renewed_at is None:
            return
        self.renewed_at = None
        self._reading(False)
        try:
            await asyncio.to_thread(self.lease.give_back, self.clock.now())
        except DBAPIError as exc:
            log.warning(
                "imap lease not given back; it runs out by itself", account=self.account.name, error=str(exc)
            )

    def _reading(self, reading: bool) -> None:
        self.status.reading = reading
        metrics.IMAP_READING.labels(self.account.name).set(1 if reading else 0)

    async def _session(self, session: ImapSession) -> None:
        account = self.account
        await session.open()
        for folder in (account.processed_folder, account.failed_folder):
            await session.ensure_folder(folder)
        place = Place(account.name, account.folder, await session.select(account.folder))
        self.status.connected = True
        log.info(
            "imap connected",
            account=account.name,
            folder=account.folder,
            idle=session.has("IDLE"),
            move=session.has("MOVE"),
        )
        while not self.stop.is_set():
            # Again until a pass finds nothing: mail that came during a pass was announced in answers to
            # its commands, which IDLE will not repeat.
            while await self._drain(session, place) and not self.stop.is_set():
                pass
            self._cycle_done()
            if self.stop.is_set():
                break
            self.status.idle = session.has("IDLE")
            await session.wait_for_mail(self.stop, within=self.renew_every.total_seconds())
            self.status.idle = False
        try:
            await session.logout()
        except ImapError as exc:
            log.info("imap logout not answered", account=account.name, error=str(exc))

    async def _drain(self, session: ImapSession, place: Place) -> bool:
        """Take everything in the folder, a batch at a time; UIDs recorded earlier are only moved.

        True when anything was stored or moved, so another pass may find more."""
        await self._keep()
        uids = await session.uids()
        if not uids:
            return False
        known = await asyncio.to_thread(self.seen.known_uids, place, uids)
        if known:
            await session.move(sorted(known), self.account.processed_folder)
            metrics.IMAP_RECOGNISED.labels(self.account.name).inc(len(known))
            log.info("imap messages already stored, moved", account=self.account.name, count=len(known))
        progress = bool(known)
        for batch in _chunks([uid for uid in uids if uid not in known], BATCH):
            await self._keep()
            progress = await self._take(session, place, batch) or progress
            if self.stop.is_set():
                break
        return progress

    async def _take(self, session: ImapSession, place: Place, uids: Sequence[int]) -> bool:
        account = self.account
        sizes = await session.sizes(uids)
        outcome = _Outcome()
        wanted: list[int] = []
        for uid in uids:
            size = sizes.get(uid)
            if size is None:
                continue  # gone since the search: another client took it
            reason = "empty" if size == 0 else "too_large" if size > account.max_message_bytes else None
            if reason:
                outcome.failed[uid] = reason
            else:
                wanted.append(uid)
        bodies = await self._fetch(session, wanted, sizes)
        good: dict[int, bytes] = {}
        for uid in wanted:
            if uid not in bodies:
                outcome.failed[uid] = "fetch_failed"
            else:
                reason = refusal(bodies[uid], account.max_message_bytes)
                if reason:
                    outcome.failed[uid] = reason
                else:
                    good[uid] = bodies[uid]
        await self._store(good, outcome)
        await asyncio.to_thread(self.seen.record, place, outcome.stored, self.clock.now())
        if outcome.stored:
            await session.move(sorted(outcome.stored), account.processed_folder)
        if outcome.failed:
            await session.move(sorted(outcome.failed), account.failed_folder)
            for uid, reason in sorted(outcome.failed.items()):
                metrics.IMAP_FAILED.labels(account.name, reason).inc()
                metrics.MESSAGES_REJECTED.labels(CHANNEL, reason).inc()
                log.warning(
                    "imap message moved to the failed folder",
                    account=account.name,
                    folder=account.failed_folder,
                    uid=uid,
                    size=sizes.get(uid),
                    reason=reason,
                )
        if outcome.store_down:
            raise StoreDown("the store does not answer; the rest of the folder waits")
        return bool(outcome.stored or outcome.failed)

    async def _fetch(
        self, session: ImapSession, uids: Sequence[int], sizes: dict[int, int]
    ) -> dict[int, bytes]:
        """The messages' bytes, in FETCHes of bounded size; a message the server will not give is left out
        on its own (it goes to the failed folder), never holding up the others."""
        bodies: dict[int, bytes] = {}
        for group in _by_bytes(uids, sizes, FETCH_BYTES):
            try:
                bodies.update(await session.bodies(group))
            except ImapRefused:
                if len(group) == 1:
                    continue  # that one message is left out
                for uid in group:
                    with contextlib.suppress(ImapRefused):
                        bodies.update(await session.bodies([uid]))
        return bodies

    async def _store(self, good: dict[int, bytes], outcome: _Outcome) -> None:
        """Store what is new; what was stored before (found by its bytes) is only mapped to its message."""
        name = self.account.name
        received = {uid: self._received(raw) for uid, raw in good.items()}
        # Hashed off the event loop, once: the writer reads the same `Received.sha256`.
        digests = await asyncio.to_thread(lambda: {uid: item.sha256 for uid, item in received.items()})
        earlier = await asyncio.to_thread(self.seen.stored_by_hash, name, digests.values())
        first: dict[str, int] = {}  # digest -> the UID whose copy is stored, for duplicates in one batch
        for uid, digest in digests.items():
            if digest in earlier:
                outcome.stored[uid] = earlier[digest]
                metrics.IMAP_RECOGNISED.labels(name).inc()
                log.info("imap message already stored, moved", account=name, uid=uid, message=earlier[digest])
            else:
                first.setdefault(digest, uid)
        new = sorted(first.values())
        results = await asyncio.gather(
            *(self.committer.save(received[uid]) for uid in new), return_exceptions=True
        )
        retry = []
        for uid, result in zip(new, results, strict=True):
            if isinstance(result, Stored):
                self._taken(uid, result, len(good[uid]), outcome)
            elif isinstance(result, StoreUnavailable):
                retry.append(uid)
            elif isinstance(result, BaseException):
                raise result
        for uid in retry:
            # A refusal while the store answers is this message's own; a store that is down refuses them all.
            if not await asyncio.to_thread(self.store.ping):
                outcome.store_down = True
                break
            try:
                self._taken(uid, await self.committer.save(received[uid]), len(good[uid]), outcome)
            except StoreUnavailable as exc:
                if await asyncio.to_thread(self.store.ping):
                    outcome.failed[uid] = "store_refused"
                    log.warning("the store refused an imap message", account=name, uid=uid, error=str(exc))
                else:
                    outcome.store_down = True
                    break
        for uid, digest in digests.items():
            original = first.get(digest)
            if original is not None and original != uid:
                if original in outcome.stored:
                    outcome.stored[uid] = outcome.stored[original]
                elif original in outcome.failed:
                    outcome.failed[uid] = outcome.failed[original]

    def _received(self, raw: bytes) -> Received:
        return Received(
            channel=CHANNEL,
            mail_from=envelope_sender(raw),
            rcpt_tos=(self.account.address,),
            peer=peer(self.account.name),
            tls=self.account.tls != "none",
            received_at=self.clock.now(),
            raw=raw,
        )

    def _taken(self, uid: int, stored: Stored, size: int, outcome: _Outcome) -> None:
        outcome.stored[uid] = stored.message_id
        metrics.IMAP_TAKEN.labels(self.account.name).inc()
        metrics.MESSAGES_ACCEPTED.labels(CHANNEL).inc()
        log.info(
            "message accepted",
            channel=CHANNEL,
            account=self.account.name,
            uid=uid,
            message=stored.message_id,
            size=size,
        )

    def _cycle_done(self) -> None:
        now = self.clock.now()
        self.status.last_cycle_at = now
        self.attempt = 0
        metrics.IMAP_LAST_CYCLE.labels(self.account.name).set(now.timestamp())

    def _failed(self, error: str) -> None:
        error = logs.CPR_SHAPE.sub(logs.CPR_MASK, error)
        self.status.last_error, self.status.last_error_at = error, self.clock.now()
        metrics.IMAP_ERRORS.labels(self.account.name).inc()
        log.warning(
            "imap session ended; connecting again after a pause", account=self.account.name, error=error
        )

    async def _back_off(self) -> None:
        """Exponential, capped, with jitter, so many daemons do not all knock at once after an outage."""
        ceiling = min(self.account.max_backoff_seconds, FIRST_BACKOFF * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not secrecy
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)


class ImapChannel:
    """All configured accounts, each read by its own task."""

    def __init__(
        self, accounts: Sequence[ImapAccount], committer: GroupCommitter, store: Store, clock: Clock
    ):
        self.stopping = asyncio.Event()
        holder = holder_name()
        self.readers = [AccountReader(a, committer, store, clock, self.stopping, holder) for a in accounts]
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(r.run(), name=f"imap-{r.account.name}") for r in self.readers]

    def status(self) -> dict[str, dict[str, Any]]:
        return {reader.account.name: reader.status.as_json() for reader in self.readers}

    async def stop(self, grace: float) -> None:
        """Finish the batch in hand and log out; whatever still runs after `grace` seconds is cancelled
        (safe: a message stored but not moved is recognised and moved next time)."""
        self.stopping.set()
        if not self.tasks:
            return
        _, running = await asyncio.wait(self.tasks, timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_bytes(uids: Sequence[int], sizes: dict[int, int], limit: int) -> Iterator[list[int]]:
    group: list[int] = []
    total = 0
    for uid in uids:
        if group and total + sizes[uid] > limit:
            yield group
            group, total = [], 0
        group.append(uid)
        total += sizes[uid]
    if group:
        yield group
