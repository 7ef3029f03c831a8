"""The committees' web inbox: server-rendered pages over the same actions as the JSON API.

Plain forms do every action without JavaScript; the vendored htmx only makes them smoother. Pages know
no rule of their own: they translate a form into one call of `committee.actions` and its answer into HTML.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from postkasse.inbox import guard, login, oidc, ops, pages
from postkasse.inbox.context import STATIC, Inbox

__all__ = ["Inbox", "install"]


def install(app: FastAPI, inbox: Inbox) -> None:
    app.state.inbox = inbox
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(login.router)
    if inbox.settings.oidc is not None:
        app.include_router(oidc.router)
        inbox.templates.env.globals["oidc_button"] = inbox.settings.oidc.button
    app.include_router(pages.router)
    app.include_router(ops.router)
    guard.install(app)
