"""Log set-up for worker processes: one line per event, saying which process said it.

With ``worker_hijack_root_logger`` (the default, as in Celery) the worker owns the root
logger: one stderr handler in ``worker_log_format`` at the ``-l`` level, so that the
tasks' own logs come out too. With it off, an application that configures logging
itself (Django's ``LOGGING``, a Sentry handler) keeps its configuration untouched; only
celeriac's own loggers get the ``-l`` level, and propagate to the app's handlers. An
app that connects to the ``setup_logging`` signal does all of it itself.
"""

from __future__ import annotations

import logging
import sys

from celeriac import signals

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
# Lines logged by a task's own code while it runs (Celery's worker_task_log_format).
TASK_FORMAT = ("[%(asctime)s: %(levelname)s/%(processName)s] "
               "%(task_name)s[%(task_id)s]: %(message)s")


def configure_logging(level: str | int = "INFO", hijack_root: bool = True,
                      fmt: str = FORMAT, task_fmt: str = TASK_FORMAT) -> None:
    """Send celeriac's logs (and, owning the root logger, the tasks' own) to stderr."""
    if isinstance(level, str):
        level = level.upper()
    if not hijack_root:
        logging.getLogger("celeriac").setLevel(level)
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_celeriac", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(WorkerFormatter(fmt, task_fmt))
    handler.addFilter(TaskContext())
    handler._celeriac = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


class TaskContext(logging.Filter):
    """Gives every record ``task_id`` and ``task_name``: those of the task whose code
    logged it (the request context of its thread or asyncio task), else ``???``."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celeriac.task import current_request

        request = current_request.get()
        record.task_id = (request.id if request is not None else None) or "???"
        record.task_name = (request.task if request is not None else None) or "???"
        return True


class WorkerFormatter(logging.Formatter):
    """``fmt`` for the worker's own lines; ``task_fmt`` for what a task's code logs."""

    def __init__(self, fmt: str, task_fmt: str) -> None:
        super().__init__(fmt)
        self._task = logging.Formatter(task_fmt)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "task_id", "???") != "???" \
                and not record.name.startswith("celeriac."):
            return self._task.format(record)
        return super().format(record)


def setup_worker_logging(level: str | int, hijack_root: bool = True, fmt: str = FORMAT,
                         task_fmt: str = TASK_FORMAT) -> None:
    """The worker's logging, once the app is loaded: the ``setup_logging`` signal's
    receivers take it over entirely when there are any (as in Celery); otherwise the
    worker sets it up and sends ``after_setup_logger``."""
    if signals.setup_logging.receivers:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_celeriac", False):
                root.removeHandler(handler)
        signals.setup_logging.send(sender=None, loglevel=level, logfile=None, format=fmt,
                                   colorize=False)
        return
    configure_logging(level, hijack_root, fmt, task_fmt)
    signals.after_setup_logger.send(sender=None, logger=logging.getLogger(), loglevel=level,
                                    logfile=None, format=fmt, colorize=False)
