"""Group commit: many received messages, one durable transaction, never an fsync on the event loop.

Sessions hand their message to `GroupCommitter.save` and wait. One writer thread takes everything that
queued while the previous commit was running and writes it in a single transaction, so under load one
fsync covers many messages, and with one client there is no added wait. Only once the commit has
returned is a session's future resolved, and only then does it say 250.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from postkasse import errors, logs, metrics
from postkasse.store import Received, Store, Stored, StoreUnavailable
from postkasse.store import messages as stored_messages

log = logs.get(__name__)

MAX_GROUP_MESSAGES = 64
MAX_GROUP_BYTES = 64 * 1024 * 1024

OnCommitted = Callable[[Sequence[Stored]], None]

_Pending = tuple[Received, "asyncio.Future[Stored]"]


class GroupCommitter:
    def __init__(self, store: Store, first_step: str, lease: timedelta, on_committed: OnCommitted) -> None:
        self.store = store
        self.first_step = first_step
        self.lease = lease
        self.on_committed = on_committed
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.after = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-dispatch")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="group-committer")

    async def save(self, item: Received) -> Stored:
        """Return once `item` and its outbox row are committed; raise StoreUnavailable if they were not."""
        if self.task is None or self.task.done():
            raise StoreUnavailable("the store writer is not running")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await asyncio.shield(future)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self.task is not None:
            await self.queue.join()
            self.task.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.writer.shutdown)
        await loop.run_in_executor(None, self.after.shutdown)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self.queue.get()]
            size = len(group[0][0].raw)
            while not self.queue.empty() and len(group) < MAX_GROUP_MESSAGES and size < MAX_GROUP_BYTES:
                group.append(self.queue.get_nowait())
                size += len(group[-1][0].raw)
            try:
                results = await loop.run_in_executor(self.writer, self._write, [item for item, _ in group])
            except Exception as exc:
                error = errors.describe(exc)
                log.error("store write failed; answering temporary failure", count=len(group), error=error)
                results = [StoreUnavailable(error)] * len(group)
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                self.queue.task_done()
            stored = [r for r in results if isinstance(r, Stored)]
            if stored:
                loop.run_in_executor(self.after, self._after_commit, stored)

    def _write(self, group: list[Received]) -> list[Stored | Exception]:
        """Write the group in one transaction; if that fails, each alone, so one bad message fails alone."""
        started = time.perf_counter()
        try:
            out: list[Stored | Exception] = list(self._commit(group))
        except Exception as exc:
            if len(group) == 1:
                raise
            log.warning(
                "group commit failed; writing one by one", count=len(group), error=errors.describe(exc)
            )
            out = []
            for item in group:
                try:
                    out.extend(self._commit([item]))
                except Exception as single:
                    out.append(StoreUnavailable(errors.describe(single)))
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.COMMIT_GROUP_SIZE.observe(len(group))
        return out

    def _commit(self, group: list[Received]) -> list[Stored]:
        lease_until = max(item.received_at for item in group) + self.lease
        with self.store.write() as conn:
            return stored_messages.save(conn, group, self.first_step, lease_until)

    def _after_commit(self, stored: list[Stored]) -> None:
        try:
            self.on_committed(stored)
        except Exception as exc:
            log.warning("after-commit hand-off failed; the outbox will resend", error=errors.describe(exc))
