"""The HTTP surface: the committee API, and health, readiness and metrics for operations."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from postkasse import __version__
from postkasse.committee.api import Api, install
from postkasse.store import Store


def create_app(store: Store, api: Api | None = None) -> FastAPI:
    app = FastAPI(
        title="postkasse",
        version=__version__,
        description="The central mailbox for children and young people: committee queues and operations.",
    )
    if api is not None:
        install(app, api)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(response: Response) -> dict[str, str]:
        """The store answers; a load balancer sends no mail here while it does not."""
        if await run_in_threadpool(store.ping):
            return {"status": "ready"}
        response.status_code = 503
        return {
            "status": "unavailable",
            "code": "store_unavailable",
            "detail": "The database does not answer.",
        }

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
