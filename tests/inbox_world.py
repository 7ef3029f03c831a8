"""A web inbox in-process over a real store, and a browser-like client that logs in through the form."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from postkasse.clock import FixedClock
from postkasse.committee.api import Api
from postkasse.committee.audit import AuditLog
from postkasse.committee.recent import Recent
from postkasse.committee.tokens import Authenticator
from postkasse.config import DEFAULT_MUNICIPALITIES, WebSettings
from postkasse.deadlines.rules import RuleBook
from postkasse.inbox import Inbox
from postkasse.pipeline import Next, Pipeline
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store
from postkasse.web import create_app

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Site:
    app: FastAPI
    store: Store
    clock: FixedClock
    dispatched: list[Next] = field(default_factory=list)

    def browser(self, base_url: str = "http://testserver") -> Browser:
        return Browser(TestClient(self.app, base_url=base_url, follow_redirects=False))


def site(store: Store, clock: FixedClock, web: WebSettings | None = None) -> Site:
    dispatched: list[Next] = []
    api = Api(
        store,
        Authenticator(store, Recent(monotonic=ticks(clock))),
        clock,
        Municipalities.load(DEFAULT_MUNICIPALITIES),
        Pipeline([], store, clock, timedelta(minutes=5)),
        dispatched.extend,
        "postkasse@favrskov.example",
        AuditLog(store),
        RuleBook(),
    )
    inbox = Inbox(api.actions, web or WebSettings(), recent_sessions=Recent(monotonic=ticks(clock)))
    app = create_app(store, api, inbox=inbox)
    return Site(app, store, clock, dispatched)


def ticks(clock: FixedClock) -> Callable[[], float]:
    """The test's clock as the seconds a `Recent` memory counts its entries' lives in."""
    return lambda: clock.now().timestamp()


@dataclass
class Browser:
    """Cookies kept like a browser's; every form carries the token of the page it came from."""

    client: TestClient
    csrf: str = ""

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(path, **kwargs)
        found = CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str] | None = None, *, token: bool = True) -> Any:
        form = {**({"csrf_token": self.csrf} if token else {}), **(data or {})}
        response = self.client.post(path, data=form)
        found = CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def login(self, name: str, password: str, next_path: str = "") -> Any:
        self.get("/login")
        return self.post("/login", {"username": name, "password": password, "next": next_path})
