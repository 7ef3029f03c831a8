"""What every page needs: the actions, the store for sessions, the clock, and the templates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from postkasse.clock import COPENHAGEN, Clock
from postkasse.committee.actions import Actions
from postkasse.committee.recent import Recent
from postkasse.committee.sessions import Session
from postkasse.config import WebSettings
from postkasse.deadlines.rules import RuleBook
from postkasse.inbox.words import TEMPLATE_GLOBALS
from postkasse.routing.municipalities import Municipalities
from postkasse.store import Store

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

MONTHS = ("jan.", "feb.", "mar.", "apr.", "maj", "jun.", "jul.", "aug.", "sep.", "okt.", "nov.", "dec.")


def _moment(moment: datetime | str | None) -> datetime | None:
    """A time from the store, or as the API's views write it (ISO 8601)."""
    return datetime.fromisoformat(moment) if isinstance(moment, str) else moment


def danish_time(moment: datetime | str | None) -> str:
    """'3. dec. 2026 kl. 14.05', Copenhagen time, as Danish readers expect it."""
    found = _moment(moment)
    if found is None:
        return ""
    local = found.astimezone(COPENHAGEN)
    return f"{local.day}. {MONTHS[local.month - 1]} {local.year} kl. {local.hour:02d}.{local.minute:02d}"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES)
    # The templates ship with the code: no file is looked at again on each render (a stat per template).
    templates.env.auto_reload = False
    templates.env.filters["danish_time"] = danish_time
    templates.env.globals.update(TEMPLATE_GLOBALS)
    templates.env.globals["htmx"] = next((p.name for p in sorted(STATIC.glob("htmx-*.min.js"))), None)
    return templates


@dataclass
class Inbox:
    actions: Actions
    settings: WebSettings
    templates: Jinja2Templates = field(default_factory=_templates)
    # Sessions found a moment ago, by their cookie's digest (see guard.session_of and committee.recent).
    recent_sessions: Recent[Session] = field(default_factory=Recent)

    @property
    def store(self) -> Store:
        return self.actions.store

    @property
    def clock(self) -> Clock:
        return self.actions.clock

    @property
    def municipalities(self) -> Municipalities:
        return self.actions.municipalities

    @property
    def rules(self) -> RuleBook:
        return self.actions.rules

    @property
    def idle(self) -> timedelta:
        return timedelta(minutes=self.settings.idle_timeout_minutes)

    @property
    def absolute(self) -> timedelta:
        return timedelta(hours=self.settings.absolute_timeout_hours)

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        """A template rendered for the signed-in user (if any), with their CSRF token for its forms."""
        session = getattr(request.state, "session", None)
        context.setdefault("user", session.user if session else None)
        context.setdefault("csrf", session.csrf if session else getattr(request.state, "login_csrf", ""))
        return self.templates.TemplateResponse(request, name, context, status_code=status)


def of(request: Request) -> Inbox:
    inbox: Inbox = request.app.state.inbox
    return inbox
