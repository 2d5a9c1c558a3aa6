"""``celeriac -A proj exporter``: one Prometheus endpoint for the whole cluster's queues."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click

from celeriac.cli.common import client_app, parse_queues
from celeriac.monitor.exporter import Exporter
from celeriac.monitor.metrics import require_prometheus
from celeriac.urls import safe_url

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec


@click.command("exporter", short_help="Serve one /metrics for the cluster's queues.")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True,
              help="The port to serve /metrics on.")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="The address to serve on (127.0.0.1 keeps it local).")
@click.option("-Q", "--queues", "names",
              help="Only these comma-separated queues (default: every queue the broker "
                   "knows and the app declares).")
@click.pass_obj
def exporter_command(spec: AppSpec, port: int, host: str, names: str | None) -> None:
    """Serve Prometheus metrics of every queue, read from the broker when scraped.

    Ready, scheduled, in-flight and dead-lettered messages and the age of the oldest
    ready one, per queue (docs/operations.md, "Metrics"). With queue_alerts set, it
    checks them too (as celeriac monitor) and serves the firing ones as a metric.
    Stops on SIGTERM or Ctrl-C.
    """
    require_prometheus("the exporter")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    with client_app(spec) as app:
        exporter = Exporter(app, host, port, parse_queues(names) or None)
        previous = {sig: signal.signal(sig, on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        exporter.start()
        click.echo(f"celeriac exporter: queues of {safe_url(app.conf.effective_broker_url)} "
                   f"on http://{host}:{port}/metrics", err=True)
        try:
            while not stop.wait(1.0):  # a timed wait: signals are handled between waits
                pass
        finally:
            exporter.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
