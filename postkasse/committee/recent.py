"""Credentials checked a moment ago, remembered for a few seconds in this process.

Every API call and page view names its caller by a token or a session cookie, and looking that up in the
store was a read transaction and a query per request: about a fifth of a page's CPU. A found credential
is therefore kept for `TTL` seconds. What that costs is promptness, and only across processes:

* logging out forgets the session here at once (`forget`), so this process refuses the cookie at once;
* another process (a second `serve`, or `postkasse token revoke` / `user disable`, which run on their own)
  cannot reach this memory, so a revoked token, an ended session or a disabled user is refused by this
  process at the latest `TTL` seconds later, when the entry has expired and the store is asked again.

Only credentials that were found are kept (a guessed cookie never enters), the memory is bounded, and
the key is a digest of the secret, never the secret itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

TTL = 5.0  # seconds a found credential is trusted without asking the store again
LIMIT = 10_000  # entries at most; past it, the memory starts over (a burst of logins, not an attack path)


class Recent(Generic[V]):
    """A small map from a credential's digest to what it names, each entry good for `ttl` seconds."""

    def __init__(
        self, ttl: float = TTL, limit: int = LIMIT, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.limit, self.monotonic = ttl, limit, monotonic
        self.entries: dict[bytes, tuple[float, V]] = {}
        self.lock = threading.Lock()

    def get(self, key: bytes) -> V | None:
        """What `key` named, if it was found less than `ttl` seconds ago."""
        with self.lock:
            found = self.entries.get(key)
            if found is None:
                return None
            if self.monotonic() >= found[0]:
                del self.entries[key]
                return None
            return found[1]

    def put(self, key: bytes, value: V) -> None:
        with self.lock:
            if len(self.entries) >= self.limit:
                self.entries.clear()
            self.entries[key] = (self.monotonic() + self.ttl, value)

    def forget(self, key: bytes) -> None:
        """Drop `key` now: the credential was ended in this process."""
        with self.lock:
            self.entries.pop(key, None)

    def forget_where(self, ended: Callable[[V], bool]) -> None:
        """Drop every entry whose value `ended` says is no longer good."""
        with self.lock:
            for key in [key for key, (_, value) in self.entries.items() if ended(value)]:
                del self.entries[key]
