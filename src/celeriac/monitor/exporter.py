"""The cluster-wide exporter (``celeriac -A proj exporter``): one ``/metrics`` to scrape.

Each worker node can serve its own ``/metrics`` (``--metrics-port``); some teams would
rather scrape one place, or watch queues no worker consumes yet. The exporter reads
every queue the broker knows (and those the app declares) at scrape time, as a node
does for its own queues (``monitor.probe``): ready, scheduled, in flight, dead letters,
oldest ready message's age, and ``celeriac_broker_up``.

With ``queue_alerts`` set, the exporter also checks them (``monitor.alerts``, as
``celeriac monitor`` does: logged and posted to ``alert_webhooks``) every
``queue_alerts_interval``, and serves the alerts firing now as
``celeriac_queue_alert_firing{queue, metric}``. Run either it or ``celeriac monitor``,
not both, or every alert is posted twice.

It also follows the event stream (``monitor.cluster``): the worker nodes up (by their
heartbeats), what each ran and had processed at its last heartbeat, and task outcomes by
name, counted from the events since the exporter started. With events off in the
workers (``--without-events``) those show no workers and no outcomes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celeriac.monitor.alerts import AlertChecker
from celeriac.monitor.cluster import ClusterView, EventFollower
from celeriac.monitor.endpoint import TEXT, Endpoint
from celeriac.monitor.metrics import (
    CONTENT_TYPE,
    Collector,
    alert_families,
    cluster_families,
    queue_families,
    render,
)
from celeriac.monitor.probe import QueueProbe
from celeriac.routing import default_queues

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.monitor")
WEBHOOK_FLUSH = 5.0  # seconds queued alert webhooks get when the exporter stops


class Exporter:
    def __init__(self, app: App, host: str, port: int,
                 queues: Sequence[str] | None = None) -> None:
        declared = default_queues(app.conf.task_queues, app.conf.task_default_queue)
        self.app = app
        self.probe = QueueProbe(app, queues, known=declared)
        self.checker = AlertChecker(app) if app.conf.queue_alerts else None
        self.cluster = ClusterView()
        self.follower = EventFollower(app, self.cluster)
        self._stop = threading.Event()
        self._alerts = threading.Thread(target=self._check_alerts, name="queue-alerts",
                                        daemon=True)
        collector = Collector(
            lambda: queue_families(self.probe.read()),
            lambda: alert_families(self.checker.firing.values() if self.checker else ()),
            lambda: cluster_families(self.cluster, time.time()))
        self.endpoint = Endpoint(host, port, {
            "/metrics": lambda: (200, CONTENT_TYPE, render(collector)),
            "/healthz": lambda: (200, TEXT, b"live\n"),
        })

    def start(self) -> None:
        self.follower.start()
        self.endpoint.start()
        if self.checker is not None:
            self._alerts.start()

    def close(self) -> None:
        self._stop.set()
        self.endpoint.close()
        self.follower.close()
        self.probe.close()
        if self.checker is not None and self._alerts.is_alive():
            self._alerts.join()
            self.app._run_sync(self.checker.aclose(flush=WEBHOOK_FLUSH))

    def _check_alerts(self) -> None:
        """The queue alerts, checked on the app's loop (where their webhooks go out)."""
        assert self.checker is not None
        self.checker.run_until(self._stop)
