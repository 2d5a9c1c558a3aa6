"""The cluster-wide exporter (``celeriac -A proj exporter``): one ``/metrics`` to scrape.

Each worker node can serve its own ``/metrics`` (``--metrics-port``); some teams would
rather scrape one place, or watch queues no worker consumes yet. The exporter reads
every queue the broker knows (and those the app declares) at scrape time, as a node
does for its own queues (``monitor.probe``): ready, scheduled, in flight, dead letters,
oldest ready message's age, and ``celeriac_broker_up``.

Workers up and task counts by type from the worker events are not served yet: they need
the events (``app.events``), which are not part of celeriac yet; until then, count
workers with Prometheus's own ``up`` over the nodes' ``--metrics-port`` endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from celeriac.monitor.endpoint import TEXT, Endpoint
from celeriac.monitor.metrics import CONTENT_TYPE, Collector, queue_families, render
from celeriac.monitor.probe import QueueProbe
from celeriac.routing import default_queues

if TYPE_CHECKING:
    from celeriac.app import App


class Exporter:
    def __init__(self, app: App, host: str, port: int,
                 queues: Sequence[str] | None = None) -> None:
        declared = default_queues(app.conf.task_queues, app.conf.task_default_queue)
        self.probe = QueueProbe(app, queues, known=declared)
        collector = Collector(lambda: queue_families(self.probe.read()))
        self.endpoint = Endpoint(host, port, {
            "/metrics": lambda: (200, CONTENT_TYPE, render(collector)),
            "/healthz": lambda: (200, TEXT, b"live\n"),
        })

    def start(self) -> None:
        self.endpoint.start()

    def close(self) -> None:
        self.endpoint.close()
        self.probe.close()
