"""Facts to decision against the store's reference data: the policy's lookups, kept in memory.

Used by the route flows and by `postkasse route --explain`; it decides and writes nothing.
"""

from __future__ import annotations

import threading
import time
from array import array
from datetime import datetime

from sqlalchemy import Connection

from postkasse.clock import danish_date
from postkasse.routing.extract import MailExtractor
from postkasse.routing.facts import Facts
from postkasse.routing.municipalities import Municipalities
from postkasse.routing.policy import AgeRange, Decision, decide
from postkasse.routing.refdata import Geography, imports
from postkasse.routing.registry import LocalRegistry, Registry


class StoreLookups:
    """The policy's lookups against the store: municipalities from configuration, the rest imported."""

    def __init__(self, municipalities: Municipalities, geography: Geography, registry: Registry) -> None:
        self.municipalities = municipalities
        self.geography = geography
        self.registry = registry

    def registry_municipality(self, cpr: str) -> str | None:
        return self.registry.municipality_of(cpr)

    def postal_municipalities(self, postal_code: str) -> frozenset[str]:
        return self.geography.postal_municipalities(postal_code)

    def street_municipalities(self, street: str, postal_code: str) -> frozenset[str]:
        return self.geography.street_municipalities(street, postal_code)


class ReferenceCache:
    """Geography and registry in memory, loaded again when an import changed them.

    Whether an import happened is asked at most once per `check_seconds`, not once per message."""

    def __init__(self, check_seconds: float = 1.0) -> None:
        self.lock = threading.Lock()
        self.check_seconds = check_seconds
        self.checked_at = -check_seconds
        self.version: object = None
        self.geography = Geography({}, {})
        self.registry = LocalRegistry(array("q"), array("H"), [], {})

    def get(self, conn: Connection) -> tuple[Geography, LocalRegistry]:
        with self.lock:
            if time.monotonic() - self.checked_at >= self.check_seconds:
                current = imports(conn)
                version = (current.get("postnord"), current.get("roads"), current.get("registry"))
                if version != self.version:
                    self.geography = Geography.load(conn)
                    self.registry = LocalRegistry.load(conn)
                    self.version = version
                self.checked_at = time.monotonic()
            return self.geography, self.registry


class Router:
    """Facts to decision for one message, with the reference data as of the store's last import."""

    def __init__(self, municipalities: Municipalities, ages: AgeRange) -> None:
        self.municipalities = municipalities
        self.ages = ages
        self.mail = MailExtractor(municipalities.by_name)
        self.reference = ReferenceCache()

    def lookups(self, conn: Connection) -> StoreLookups:
        geography, registry = self.reference.get(conn)
        return StoreLookups(self.municipalities, geography, registry)

    def decide_facts(self, conn: Connection, facts: Facts, received_at: datetime) -> Decision:
        return decide(facts, self.lookups(conn), danish_date(received_at), self.ages)
