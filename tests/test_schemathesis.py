"""Schemathesis against the API's own /openapi.json: whatever it sends, no answer is a 500."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from postkasse.clock import FixedClock
from postkasse.committee import tokens
from postkasse.committee.api import Api
from postkasse.committee.audit import AuditLog
from postkasse.committee.tokens import Authenticator
from postkasse.config import DEFAULT_MUNICIPALITIES
from postkasse.deadlines.rules import RuleBook
from postkasse.pipeline import Pipeline
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.store.migrate import upgrade
from postkasse.web import create_app
from tests.test_api import add_referral

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'pk.db'}")
    upgrade(store)
    clock = FixedClock(T0)
    api = Api(
        store,
        Authenticator(store),
        clock,
        Municipalities.load(DEFAULT_MUNICIPALITIES),
        Pipeline([], store, clock, timedelta(minutes=5)),
        lambda work: None,
        "postkasse@localhost",
        AuditLog(store),
        RuleBook(),
    )
    with store.write() as conn:
        committee = tokens.create(conn, "favrskov", "committee", "0710", T0)
        ops = tokens.create(conn, "drift", "ops", None, T0)
        sender = tokens.create(conn, "epj", "sender", None, T0)
    for municipality in ("0710", "0710", "0751", None):
        add_referral(store, municipality)
    return {"app": create_app(store, api), "committee": committee, "ops": ops, "sender": sender}


@pytest.mark.parametrize("who", ["committee", "ops", "sender"])
def test_no_request_makes_a_server_error(world: dict[str, Any], who: str) -> None:
    """Each operation of the schema, with cases generated from it; every answer must be below 500."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", world["app"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        fuzz(operation, {"Authorization": f"Bearer {world[who]}"})


def fuzz(operation: Any, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        response = case.call(headers=headers)
        assert response.status_code < 500, f"{operation.label}: {response.status_code} {response.text}"

    call()
