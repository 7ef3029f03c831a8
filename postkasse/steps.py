"""The steps a stored message goes through, built from the settings: parse, route, and so on."""

from __future__ import annotations

from datetime import timedelta

from postkasse.clock import Clock
from postkasse.config import Settings
from postkasse.mailbox.headers import ParseHeaders
from postkasse.pipeline import Pipeline, Step
from postkasse.routing.step import RouteMessage
from postkasse.store import Store

FIRST_STEP = ParseHeaders.name


def build(settings: Settings, store: Store, clock: Clock) -> Pipeline:
    steps: list[Step] = [ParseHeaders(), RouteMessage.from_settings(settings)]
    return Pipeline(steps, store, clock, timedelta(seconds=settings.outbox.lease_seconds))
