"""The HTTP surface: the committee API, the web inbox, and health, readiness and metrics for operations."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from postkasse import __version__, metrics_dir
from postkasse.committee.api import Api, install
from postkasse.inbox import Inbox
from postkasse.inbox import install as install_inbox
from postkasse.store import Store


def create_app(
    store: Store,
    api: Api | None = None,
    gauges: Collector | None = None,
    imap_status: Callable[[], dict[str, dict[str, Any]]] | None = None,
    inbox: Inbox | None = None,
) -> FastAPI:
    """`gauges` are read at scrape time from a registry of this app's own, beside the process counters.

    `imap_status` gives each IMAP account's state and last error for /readyz. An IMAP server in trouble
    does not make this instance unready: SMTP and the API still work, and taking the instance out of a
    load balancer would not bring the IMAP server back; PostkasseImapStalled alerts instead."""
    app = FastAPI(
        title="postkasse",
        version=__version__,
        description="The central mailbox for children and young people: committee queues and operations.",
    )
    if api is not None:
        install(app, api)
    if inbox is not None:
        install_inbox(app, inbox)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(response: Response) -> dict[str, Any]:
        """The store answers; a load balancer sends no mail here while it does not."""
        accounts = imap_status() if imap_status is not None else {}
        imap = {"imap": accounts} if accounts else {}
        if await run_in_threadpool(store.ping):
            return {"status": "ready", **imap}
        response.status_code = 503
        return {
            "status": "unavailable",
            "code": "store_unavailable",
            "detail": "The database does not answer.",
            **imap,
        }

    own = CollectorRegistry(auto_describe=False)
    if gauges is not None:
        own.register(gauges)
    counted = REGISTRY
    if os.environ.get(metrics_dir.ENV):  # `serve` with children: the counts of all its processes, summed
        counted = CollectorRegistry()
        MultiProcessCollector(counted)  # type: ignore[no-untyped-call]

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(counted) + generate_latest(own), media_type=CONTENT_TYPE_LATEST)

    return app
