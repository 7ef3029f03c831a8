"""The store: schema, migrations and the few operations on it. SQLite by default, PostgreSQL in production."""

from postkasse.store.engine import Store, StoreUnavailable, insert_ignoring_duplicates, insert_on_conflict
from postkasse.store.messages import Received, Stored

__all__ = [
    "Received",
    "Store",
    "StoreUnavailable",
    "Stored",
    "insert_ignoring_duplicates",
    "insert_on_conflict",
]
