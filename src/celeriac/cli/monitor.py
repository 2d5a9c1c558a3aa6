"""``celeriac -A proj monitor``: check ``queue_alerts`` every interval; log and post alerts.

``--once`` checks once and exits 1 when any alert fires (0 when none), for cron jobs
and CI; webhooks are given a few seconds to be delivered before it exits. A broker that
cannot be read is a one-line error and exit 1 too (nobody can say the queues are fine);
a bad setting exits 2.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

import click

from celeriac.cli.common import client_app, run
from celeriac.errors import ConfigurationError
from celeriac.logs import FORMAT, JSON, configure_logging
from celeriac.monitor.alerts import AlertChecker
from celeriac.monitor.webhooks import shown

if TYPE_CHECKING:
    from celeriac.cli.main import AppSpec

logger = logging.getLogger("celeriac.monitor")

# Seconds --once, or a stopping monitor, waits for webhooks still being delivered.
FLUSH_SECONDS = 10.0


@click.command("monitor", short_help="Check queue_alerts; log and post alerts to webhooks.")
@click.option("--interval", type=click.FloatRange(min=0.01), metavar="SECONDS",
              help="Seconds between checks (default: the queue_alerts_interval setting).")
@click.option("--once", is_flag=True,
              help="Check once; exit 1 if any alert fires, 0 if none.")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON object per line, as the worker's.")
@click.pass_obj
def monitor_command(spec: AppSpec, interval: float | None, once: bool, loglevel: str,
                    log_format: str) -> None:
    """Watch queue lengths and ages against the queue_alerts setting.

    An alert fires when a queue is above a threshold on a check, and resolves when it
    falls to 80% of it (recover_at): logged at ERROR / WARNING and POSTed as JSON to
    every alert_webhooks URL.
    """
    configure_logging(loglevel, fmt=JSON if log_format == "json" else FORMAT)
    with client_app(spec) as app:
        if not app.conf.queue_alerts:
            raise ConfigurationError("queue_alerts is empty: nothing to check; set e.g. "
                                     "queue_alerts = {\"*\": {\"max_length\": 1000, "
                                     "\"max_age\": 60}}")
        checker = AlertChecker(app, interval=interval)
        if once:
            run(app, checker.check_once())
            run(app, checker.aclose(flush=FLUSH_SECONDS))
            raise SystemExit(1 if checker.firing else 0)
        logger.info("monitor: checking %d queue rule%s on %s every %.1f s; webhooks: %s",
                    len(checker.rules), "" if len(checker.rules) == 1 else "s",
                    checker.broker_display, checker.interval,
                    ", ".join(shown(url) for url in checker.sender.urls) or "none")
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, and how services stop
            signal.signal(signum, lambda *_: stopping.set())
        try:
            checker.run_until(stopping)  # webhooks go out on the app's loop meanwhile
        finally:
            logger.info("monitor: stopping")
            run(app, checker.aclose(flush=FLUSH_SECONDS))
