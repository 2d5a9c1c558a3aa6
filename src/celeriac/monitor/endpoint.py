"""The HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` on a thread of its own.

A worker node started with ``--metrics-port`` (``worker_metrics_port``) serves it from
the node itself: the supervisor of a prefork node, or the one process of a solo worker.
It runs on a thread beside everything else, not as a node service on the node's event
loop, for two reasons: node services start only once their bus reached the broker,
and a health check must answer while the broker is down (``/healthz`` 200: restarting
the pod would not help; ``/readyz`` 503: do not send work); and a probe must not depend
on the loop it judges.

``NodeMetrics`` is a node's whole metrics setup: the directory where its processes write
their counts (``monitor.tally``; made before the first process starts, removed when the
node stops), the queue probe and the server.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from celeriac.errors import ConfigurationError
from celeriac.monitor.health import Health, liveness, readiness
from celeriac.monitor.metrics import (
    CONTENT_TYPE,
    Collector,
    node_families,
    queue_families,
    render,
    require_prometheus,
    task_families,
)
from celeriac.monitor.probe import QueueProbe
from celeriac.monitor.tally import TallyReader

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.node.base import NodeHandle, NodeSnapshot

logger = logging.getLogger("celeriac.monitor")

# A route answers (HTTP status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]
TEXT = "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.partition("?")[0])
        if route is None:
            status, kind, body = 404, TEXT, b"not found: try /metrics, /healthz, /readyz\n"
        else:
            try:
                status, kind, body = route()
            except Exception:
                logger.exception("metrics endpoint: %s failed", self.path)
                status, kind, body = 500, TEXT, b"internal error (see the worker's log)\n"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes and probes every few seconds would drown the worker's log."""


class Endpoint:
    """An HTTP server for ``routes`` on ``host:port``, bound at once, served on a thread."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: "
                                     f"{exc.strerror or exc}") from None
        self._server.routes = routes
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class NodeMetrics:
    """A worker node's metrics: counts directory, queue probe, HTTP endpoint."""

    def __init__(self, app: App, host: str, port: int, queues: list[str]) -> None:
        require_prometheus("--metrics-port (worker_metrics_port)")
        self.directory = tempfile.mkdtemp(prefix="celeriac-metrics-")
        self._node: NodeHandle | None = None
        self._tally = TallyReader(self.directory)
        self._queues = QueueProbe(app, queues)
        collector = Collector(lambda: task_families(self._tally.read()),
                              lambda: node_families(self._snapshot()),
                              lambda: queue_families(self._queues.read()))
        try:
            self._endpoint = Endpoint(host, port, {
                "/metrics": lambda: (200, CONTENT_TYPE, render(collector)),
                "/healthz": self._health(lambda: liveness(self._snapshot())),
                "/readyz": self._health(lambda: readiness(self._snapshot())),
            })
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _snapshot(self) -> NodeSnapshot:
        if self._node is None:
            raise RuntimeError("the node has not started")
        return self._node.snapshot()

    @staticmethod
    def _health(check: Callable[[], Health]) -> Route:
        def route() -> tuple[int, str, bytes]:
            health = check()
            return health.status, TEXT, f"{health.reason}\n".encode()
        return route

    def start(self, node: NodeHandle) -> None:
        """Serve, now that the node's processes write their status (``node``)."""
        self._node = node
        self._endpoint.start()
        logger.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)",
                    self._endpoint.host, self._endpoint.port)

    def close(self) -> None:
        self._endpoint.close()
        self._queues.close()
        shutil.rmtree(self.directory, ignore_errors=True)
