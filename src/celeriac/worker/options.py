"""How a worker runs: pool, concurrency and limits, from settings and the command line."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from celeriac.config import Settings
from celeriac.logs import FORMAT as LOG_FORMAT
from celeriac.logs import TASK_FORMAT as TASK_LOG_FORMAT
from celeriac.routing import default_queues

# Slots per process when -c is not given: a process per core for prefork; threads and
# async tasks mostly wait on I/O, so they get many slots in one process.
DEFAULT_THREADS = 10
DEFAULT_ASYNC_SLOTS = 100
DEFAULT_NODENAME = "celeriac@%h"


@dataclass(frozen=True)
class WorkerOptions:
    app_spec: str
    queues: tuple[str, ...]
    pool: str = "prefork"
    concurrency: int = 1  # processes for prefork; slots in one process otherwise
    prefetch_multiplier: int = 4
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # KiB
    shutdown_timeout: float = 30.0
    loglevel: str = "INFO"
    hijack_root_logger: bool = True  # worker_hijack_root_logger
    log_format: str = LOG_FORMAT  # worker_log_format
    task_log_format: str = TASK_LOG_FORMAT  # worker_task_log_format
    send_events: bool = True  # worker_send_task_events; --without-events
    logfile: str | None = None  # -f/--logfile, %p %h %n %d %i %I expanded per process
    hostname: str = field(default_factory=lambda: expand_nodename(DEFAULT_NODENAME))
    autoscale: tuple[int, int] | None = None  # (max, min): the pool starts at min
    autoscale_keepalive: float = 30.0
    metrics_port: int | None = None  # worker_metrics_port: serve /metrics (monitor/)
    metrics_host: str = "0.0.0.0"
    metrics_dir: str | None = None  # where processes write their counts (monitor.tally)
    beat: bool = False  # -B: run beat in this node (celeriac.beat.service)

    @property
    def processes(self) -> int:
        return self.concurrency if self.pool == "prefork" else 1

    @property
    def slots_per_process(self) -> int:
        return 1 if self.pool in ("prefork", "solo") else self.concurrency

    @classmethod
    def from_settings(cls, app_spec: str, conf: Settings, *, queues: tuple[str, ...] = (),
                      pool: str | None = None, concurrency: int | None = None,
                      **overrides: object) -> WorkerOptions:
        pool = pool or conf.worker_pool
        autoscale = overrides.pop("autoscale", None) or conf.worker_autoscale
        if autoscale is not None:  # as in Celery, the pool starts at MIN
            concurrency = autoscale[1]  # type: ignore[index]
        concurrency = concurrency or conf.worker_concurrency or _default_concurrency(pool)
        values: dict[str, object] = {
            "prefetch_multiplier": conf.worker_prefetch_multiplier,
            "max_tasks_per_child": conf.worker_max_tasks_per_child,
            "max_memory_per_child": conf.worker_max_memory_per_child,
            "shutdown_timeout": conf.worker_shutdown_timeout,
            "hijack_root_logger": conf.worker_hijack_root_logger,
            "log_format": conf.worker_log_format,
            "task_log_format": conf.worker_task_log_format,
            "send_events": conf.worker_send_task_events,
            "autoscale": autoscale,
            "autoscale_keepalive": conf.worker_autoscale_keepalive,
            "metrics_port": conf.worker_metrics_port,
            "metrics_host": conf.worker_metrics_host,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        queues = queues or default_queues(conf.task_queues, conf.task_default_queue)
        return cls(app_spec=app_spec, queues=queues, pool=pool,
                   concurrency=concurrency, **values)  # type: ignore[arg-type]


def _default_concurrency(pool: str) -> int:
    if pool == "threads":
        return DEFAULT_THREADS
    if pool == "async":
        return DEFAULT_ASYNC_SLOTS
    if pool == "solo":
        return 1
    return os.cpu_count() or 1


def logfile_path(template: str | None, nodename: str, index: int | None = None
                 ) -> str | None:
    """Celery's ``--logfile`` expansion: ``%p`` the worker's node name, then as
    ``expand_nodename`` (``%h``, ``%n``, ``%d``, ``%i`` the process index, 0 in the
    supervisor, ``%I`` the same with a dash, empty in the supervisor)."""
    if template is None:
        return None
    return expand_nodename(template.replace("%p", nodename), index)


def expand_nodename(template: str, index: int | None = None) -> str:
    """Celery's ``-n`` expansion: ``%h`` host name, ``%n`` its first label, ``%d`` its
    domain, ``%i`` the worker process index (0 in the supervisor), ``%I`` the same with a
    leading dash (empty in the supervisor), ``%%`` a percent sign."""
    host = socket.getfqdn() if "%d" in template else socket.gethostname()
    name, _, domain = host.partition(".")
    values = {"h": host, "n": name, "d": domain, "i": str(index or 0),
              "I": f"-{index}" if index is not None else "", "%": "%"}
    out: list[str] = []
    chars = iter(template)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        key = next(chars, "")
        out.append(values.get(key, f"%{key}"))
    return "".join(out)
