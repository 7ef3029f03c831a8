"""The periodic purge (`retention` decides what is due): a read, a short write, and on SQLite the
write-ahead log truncated so that what was removed is gone from the files too. Logs counts only."""

from __future__ import annotations

from datetime import datetime

from postkasse import logs
from postkasse.retention.purge import Policy, apply, survey
from postkasse.store import Store

log = logs.get(__name__)


def run_purge(store: Store, now: datetime, policy: Policy, dry_run: bool = False) -> dict[str, int] | None:
    """What was removed (or, for a dry run, would be), by kind; None when another daemon was purging."""
    with store.read() as conn:
        found = survey(conn, now, policy)
    if dry_run:
        return found.counts
    with store.write() as conn:
        removed = apply(conn, found, policy)
    if removed is None:
        log.info("purge skipped: another daemon is purging")
        return None
    store.truncate_log()
    log.info("purge", **removed)
    return removed
