"""The audit trail: every read of a referral and every change, with who, when and what.

A change writes its audit row in the change's own transaction (`record`). A read changes nothing, so
its row goes through `AuditLog`: one writer thread that commits the rows of concurrent reads together
and lets each reader go on only once its row is durable. Nothing is shown that was not audited, and
twenty readers cost one commit, not twenty queued for the database's write lock.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from postkasse import errors, logs
from postkasse.store import Store, StoreUnavailable
from postkasse.store.schema import audit

log = logs.get(__name__)

MAX_GROUP = 256


def row(actor: str, action: str, referral_id: int | None, now: datetime, **detail: Any) -> dict[str, Any]:
    return {"at": now, "actor": actor, "action": action, "referral_id": referral_id, "detail": detail}


def record(
    conn: Connection, actor: str, action: str, referral_id: int | None, now: datetime, **detail: Any
) -> None:
    """An audit row inside the caller's transaction, for changes."""
    conn.execute(insert(audit).values(**row(actor, action, referral_id, now, **detail)))


def of_referral(conn: Connection, referral_id: int) -> list[Any]:
    return list(
        conn.execute(select(audit).where(audit.c.referral_id == referral_id).order_by(audit.c.id)).all()
    )


class AuditLog:
    """Group-committed audit rows for reads; `record` returns once the row is committed."""

    def __init__(self, store: Store, timeout: float = 30.0) -> None:
        self.store = store
        self.timeout = timeout
        self.pending: queue.Queue[tuple[dict[str, Any], Future[None]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self.thread.start()

    def record(self, actor: str, action: str, referral_id: int | None, now: datetime, **detail: Any) -> None:
        done: Future[None] = Future()
        self.pending.put((row(actor, action, referral_id, now, **detail), done))
        try:
            done.result(self.timeout)
        except Exception as exc:
            raise StoreUnavailable(f"the audit trail could not be written: {errors.describe(exc)}") from None

    def close(self) -> None:
        self.pending.put(None)
        self.thread.join(self.timeout)

    def _run(self) -> None:
        while True:
            first = self.pending.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.pending.put(None)
                    break
                group.append(item)
            try:
                with self.store.write() as conn:
                    conn.execute(insert(audit), [rows for rows, _ in group])
            except Exception as exc:
                log.error(
                    "audit rows could not be written; the reads are refused",
                    count=len(group),
                    error=errors.describe(exc),
                )
                for _, done in group:
                    done.set_exception(exc)
                continue
            for _, done in group:
                done.set_result(None)
