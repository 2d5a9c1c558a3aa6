"""Queue alerts on the dashboard: ``queue_alerts`` checked against its own readings.

The dashboard shows the alerts firing (overview, ``/metrics``) without posting them:
``celeriac monitor`` or the exporter do that. In-process, on the memory broker: the
queue nobody consumes is filled directly.
"""

from __future__ import annotations

import httpx
from dash_harness import wait_for

from celeriac import App
from celeriac.brokers.base import Outgoing
from celeriac.dashboard.app import Dashboard
from celeriac.dashboard.auth import AuthConfig
from celeriac.dashboard.server import Background


def test_a_queue_over_its_threshold_shows_as_an_alert() -> None:
    app = App("alert-tests", broker="memory://", backend="memory://",
              queue_alerts={"backlog": {"max_length": 2}})
    dashboard = Dashboard(app, AuthConfig())
    server = Background(dashboard.asgi).start()
    try:
        async def fill() -> None:
            broker = await app._connected_broker()
            await broker.publish([Outgoing(f"m{i}", "backlog", b"{}") for i in range(3)])

        app._run_sync(fill())
        with httpx.Client(base_url=server.url) as client:
            alerts = wait_for(lambda: client.get("/api/overview").json()["alerts"],
                              "the backlog alert", 10)
            assert [(a["queue"], a["metric"], a["value"], a["threshold"])
                    for a in alerts] == [("backlog", "length", 3.0, 2)]
            backlog = next(q for q in client.get("/api/queues").json()
                           if q["name"] == "backlog")
            assert backlog["ready"] == 3
            metrics = client.get("/metrics").text
            assert 'celeriac_queue_alert_firing{metric="length",queue="backlog"} 1.0' \
                in metrics
    finally:
        server.close()
        app.close()
