"""The dashboard's Starlette application: the API, the pages, the static files, /metrics.

``create_app(app, auth)`` opens the history store the app's settings choose
(``history_open``), and returns the ASGI application whose lifespan runs the rest:
at start the ingest thread (events into the store) and the queue sampler, at the end
both stopped and the store closed. The CLI serves it under uvicorn (``server.py``);
tests serve it in-process the same way.

Routes: ``/api/...`` (``api.py``, described at ``/api/openapi.json``), the HTML pages
(``pages.py``), ``/static`` (the package's own CSS and JS: no build step, nothing from a
CDN), ``/metrics`` (the exporter's queue, alert and cluster families, from the
dashboard's own readings: one scrape target for a cluster) and ``/healthz`` (open, for
load balancers). Every route but ``/healthz`` is behind ``auth.AuthMiddleware``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from celeriac.dashboard.api import api_routes
from celeriac.dashboard.auth import AuthConfig, AuthMiddleware
from celeriac.dashboard.service import DashboardService
from celeriac.errors import ConfigurationError
from celeriac.monitor.metrics import require_prometheus

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.dashboard.history import HistoryStore
    from celeriac.dashboard.ingest import HistoryIngest

logger = logging.getLogger("celeriac.dashboard")

STATIC = Path(__file__).parent / "static"


class Dashboard:
    """The parts of one dashboard process: store, ingest, service, ASGI app."""

    def __init__(self, app: App, auth: AuthConfig | None = None,
                 store: HistoryStore | None = None) -> None:
        from celeriac.dashboard.history_open import open_history
        from celeriac.dashboard.ingest import HistoryIngest

        self.app = app
        self.auth = auth or AuthConfig()
        self.store = store if store is not None else open_history(app)
        self.ingest: HistoryIngest = HistoryIngest(app, self.store)
        self.service = DashboardService(app, self.store, self.ingest)
        self.asgi = Starlette(routes=self._routes(),
                              middleware=[Middleware(AuthMiddleware, config=self.auth)],
                              lifespan=self._lifespan)

    def _routes(self) -> list[BaseRoute]:
        from celeriac.dashboard.pages import page_routes

        return [*api_routes(self.service),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/healthz", _healthz, methods=["GET"]),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
                *page_routes(self.service)]

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        self.ingest.start()
        await self.service.start()
        try:
            yield
        finally:
            await self.service.close()
            self.ingest.close()
            await self.store.close()

    async def _metrics(self, request: Request) -> Response:
        try:
            require_prometheus("/metrics")
        except ConfigurationError as exc:
            return PlainTextResponse(f"{exc}\n", 501)
        from celeriac.monitor.metrics import (
            CONTENT_TYPE,
            Collector,
            alert_families,
            cluster_families,
            queue_families,
            render,
        )

        snapshot = await self.service.metrics_snapshot()
        checker = self.service.sampler.checker
        collector = Collector(
            lambda: queue_families(snapshot),
            lambda: alert_families(checker.firing.values() if checker else ()),
            lambda: cluster_families(self.ingest.view, time.time()))
        return Response(render(collector), media_type=CONTENT_TYPE)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("live\n")
