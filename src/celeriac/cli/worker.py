"""``celeriac -A proj worker``: start a supervised worker (or a solo one in this process)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from celeriac import __version__, signals
from celeriac.config import POOLS
from celeriac.control.names import NodeNameTaken, ensure_unique_name
from celeriac.errors import describe
from celeriac.logs import FORMAT as LOG_FORMAT
from celeriac.logs import JSON, configure_logging, setup_worker_logging
from celeriac.monitor.endpoint import NodeMetrics
from celeriac.monitor.metrics import require_prometheus
from celeriac.security.screen import check_worker_security
from celeriac.supervisor.supervisor import Supervisor
from celeriac.urls import display_url
from celeriac.worker.autoscale import parse_autoscale
from celeriac.worker.child import EXIT_BROKER_LOST, EXIT_OK, EXIT_REFUSED, serve
from celeriac.worker.consumer import StopReason
from celeriac.worker.options import WorkerOptions, expand_nodename, logfile_path
from celeriac.worker.privileges import check_root, drop_privileges, resolve
from celeriac.worker.startup import PERMANENT

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.cli.main import AppSpec

logger = logging.getLogger("celeriac.worker")


def _autoscale_bounds(ctx: click.Context, param: click.Parameter,
                      value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return parse_autoscale(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command("worker")
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Processes (prefork) or slots in one process (threads, async).")
@click.option("--autoscale", metavar="MAX,MIN", callback=_autoscale_bounds,
              help="Grow the pool up to MAX processes (slots for threads/async) while "
                   "work is queued, shrink it to MIN when idle (Celery's order).")
@click.option("-P", "--pool", type=click.Choice(POOLS), help="How tasks run.")
@click.option("-Q", "--queues", help="Comma-separated queues, consumed in this order.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=1),
              help="Tasks fetched ahead per slot.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1),
              help="Replace a worker process after this many tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), metavar="KIB",
              help="Replace a worker process above this resident memory (KiB).")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0),
              help="Seconds running tasks get to finish on a warm shutdown.")
@click.option("-n", "--hostname", metavar="NAME",
              help="The worker's node name, e.g. name@%h (%h host, %n short host, "
                   "%d domain, %i process index).")
@click.option("-E", "--task-events/--without-events", "task_events", default=None,
              help="Send task events (on by default: worker_send_task_events); -E is "
                   "accepted as in Celery.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve /metrics (Prometheus), /healthz and /readyz on this port "
                   "(needs celeriac[metrics]).")
@click.option("--metrics-host", metavar="ADDRESS",
              help="The address to serve them on (default 0.0.0.0: reachable by "
                   "Prometheus and Kubernetes probes; 127.0.0.1 keeps them local).")
@click.option("-B", "--beat", is_flag=True,
              help="Also run beat (periodic tasks) in this node; any number may.")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                                case_sensitive=False))
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="text (worker_log_format) or json: one JSON object per line "
                   "[default: the worker_log_format setting].")
@click.option("-f", "--logfile", metavar="PATH",
              help="Append logs to this file instead of stderr (%p node name, %h host, "
                   "%n, %d, %i process index, %I).")
@click.option("--uid", metavar="USER",
              help="Run as this user (name or number) once started: after logging is set "
                   "up, before consuming. Alone, also takes the user's group.")
@click.option("--gid", metavar="GROUP", help="Run as this group (name or number).")
@click.option("--allow-root", is_flag=True,
              help="Run as root even though accept_content includes pickle (Celery's "
                   "C_FORCE_ROOT); without it such a worker refuses to start.")
@click.pass_obj
def worker_command(spec: AppSpec, concurrency: int | None,
                   autoscale: tuple[int, int] | None, pool: str | None,
                   queues: str | None, prefetch_multiplier: int | None,
                   max_tasks_per_child: int | None, max_memory_per_child: int | None,
                   shutdown_timeout: float | None, hostname: str | None, beat: bool,
                   task_events: bool | None, metrics_port: int | None,
                   metrics_host: str | None, loglevel: str, log_format: str | None,
                   logfile: str | None, uid: str | None, gid: str | None,
                   allow_root: bool) -> None:
    """Start a worker: consume the queues and run their tasks."""
    configure_logging(loglevel)
    app = spec.load()
    identity = resolve(uid, gid)
    check_root(app.conf.accept_content, identity, allow_root)  # SecurityError: one line
    check_worker_security(app)  # ConfigurationError: one line, before any process starts
    options = WorkerOptions.from_settings(
        spec.spec or "", app.conf, pool=pool, concurrency=concurrency,
        queues=tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else (),
        prefetch_multiplier=prefetch_multiplier, max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child, shutdown_timeout=shutdown_timeout,
        loglevel=loglevel.upper(), send_events=task_events,
        hostname=expand_nodename(hostname) if hostname is not None else None,
        log_format=_log_format(log_format, app.conf.worker_log_format), logfile=logfile,
        autoscale=autoscale,
        metrics_port=metrics_port, metrics_host=metrics_host,
        beat=beat or None,
    )
    if options.autoscale is not None and options.pool == "solo":
        raise click.UsageError("--autoscale needs a pool that can change size: -P prefork, "
                               "threads or async (a solo worker runs one task at a time)")
    if options.metrics_port is not None:
        require_prometheus("--metrics-port (worker_metrics_port)")  # before anything starts
    # Now that the app's settings are known: its own logging setup, if it has one, stays.
    setup_worker_logging(loglevel, options.hijack_root_logger, options.log_format,
                         options.task_log_format,
                         logfile_path(options.logfile, options.hostname), options.hostname)
    log_banner(app, options)
    warn_about_unsafe_settings(app)
    signals.worker_init.send(sender=None)
    log_file = logfile_path(options.logfile, options.hostname)
    # before any process starts or anything is consumed
    drop_privileges(identity, [log_file] if log_file else [])
    try:
        code = _run(app, options)
    finally:
        signals.worker_shutdown.send(sender=None)
    sys.exit(code)


def _log_format(choice: str | None, setting: str) -> str:
    """--log-format over worker_log_format: json, or text in the setting's format."""
    if choice == "json":
        return JSON
    if choice == "text" and setting == JSON:
        return LOG_FORMAT
    return setting


def _run(app: App, options: WorkerOptions) -> int:
    try:
        ensure_unique_name(app, options.hostname)
    except NodeNameTaken as exc:
        logger.error("the worker cannot start: %s", exc)
        return EXIT_REFUSED
    if options.pool != "solo":
        return Supervisor(options, app).run()
    metrics = None
    if options.metrics_port is not None:
        metrics = NodeMetrics(app, options.metrics_host, options.metrics_port,
                              list(options.queues))
        options = replace(options, metrics_dir=metrics.directory)
    signals.worker_process_init.send(sender=None)  # the one process of a solo worker
    try:
        reason = asyncio.run(serve(app, options, options.hostname,
                                   stop_signals=(signal.SIGTERM, signal.SIGINT),
                                   own_node=True, metrics=metrics))
    except PERMANENT as exc:
        logger.error("the worker cannot start: %s", describe(exc))
        code = EXIT_REFUSED
    else:
        code = EXIT_BROKER_LOST if reason is StopReason.BROKER_LOST else EXIT_OK
    finally:
        if metrics is not None:
            metrics.close()
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=code)
    return code


def warn_about_unsafe_settings(app: App) -> None:
    if "pickle" in app.conf.accept_content:
        logger.warning("accept_content includes pickle: a message from anyone who can write "
                       "to the broker can run arbitrary code in this worker")


def log_banner(app: App, options: WorkerOptions) -> None:
    """What this worker is about to do, before it does it (as Celery's banner)."""
    conf = app.conf
    if options.pool == "prefork":
        pool = f"prefork, {options.processes} process(es)"
    else:
        pool = f"{options.pool}, {options.slots_per_process} slot(s)"
    if options.autoscale is not None:
        pool += f" (autoscale {options.autoscale[1]} to {options.autoscale[0]})"
    lines = [
        f"celeriac {__version__} worker {options.hostname}",
        f"  app:      {app.main} ({options.app_spec})",
        f"  broker:   {display_url(conf.effective_broker_url)}",
        f"  results:  {display_url(conf.effective_result_backend)}",
        f"  pool:     {pool}, prefetch {options.prefetch_multiplier} per slot",
        f"  queues:   {', '.join(options.queues)}",
        *([f"  metrics:  http://{options.metrics_host}:{options.metrics_port}/metrics"]
          if options.metrics_port is not None else []),
        f"  tasks:    {len(app.tasks)} registered",
        *(f"    . {name}" for name in sorted(app.tasks)),
    ]
    logger.info("\n".join(lines))
