"""Log set-up for worker processes: one line per event, saying which process said it.

With ``worker_hijack_root_logger`` (the default, as in Celery) the worker owns the root
logger: one handler at the ``-l`` level, writing to stderr or to ``--logfile``, so that
the tasks' own logs come out too. With it off, an application that configures logging
itself (Django's ``LOGGING``, a Sentry handler) keeps its configuration untouched; only
celeriac's own loggers get the ``-l`` level, and propagate to the app's handlers (so
``--log-format`` and ``--logfile`` do not apply). An app that connects to the
``setup_logging`` signal does all of it itself (the signal carries ``logfile``).

Lines are text in ``worker_log_format`` (a %-style format, as Celery's), or, when that
is the special value ``"json"`` (or ``--log-format json``), one JSON object per line
(``JsonFormatter``) for log aggregators: timestamp, level, logger, process, message and,
for a line about a task, the task's id, name, queue, state, runtime, retries and the
worker's name where known. The worker's own per-task lines ("succeeded in") pass those
in ``extra`` (``task_fields``); what a task's code logs gets them from its request.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from celeriac import signals

FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"
# Lines logged by a task's own code while it runs (Celery's worker_task_log_format).
TASK_FORMAT = ("[%(asctime)s: %(levelname)s/%(processName)s] "
               "%(task_name)s[%(task_id)s]: %(message)s")
JSON = "json"  # worker_log_format's special value: one JSON object per line
TASK_FIELDS = "celeriac_task"  # the LogRecord attribute task_fields() sets via extra=
FIELDS = "celeriac_fields"  # other fields of a line, for JSON (an alert's queue, value)


# Whether a JsonFormatter exists in this process: only then are a task line's fields
# worth gathering (about 3 us a line, on the worker's hottest log line).
_structured = False


def task_fields(task_id: str | None, name: str | None, queue: str | None = None,
                state: str | None = None, runtime: float | None = None,
                retries: int | None = None) -> dict[str, Any] | None:
    """``extra=`` for a worker line about a task: its fields, for the JSON lines (None
    while no JSON formatter is in use)."""
    if not _structured:
        return None
    fields = {"task_id": task_id, "task_name": name, "queue": queue, "state": state,
              "runtime": None if runtime is None else round(runtime, 6), "retries": retries}
    return {TASK_FIELDS: {key: value for key, value in fields.items() if value is not None}}


def configure_logging(level: str | int = "INFO", hijack_root: bool = True,
                      fmt: str = FORMAT, task_fmt: str = TASK_FORMAT,
                      logfile: str | None = None, hostname: str | None = None) -> None:
    """Send celeriac's logs (and, owning the root logger, the tasks' own) to stderr, or
    appended to ``logfile``; ``hostname`` is the worker's name in JSON lines."""
    if isinstance(level, str):
        level = level.upper()
    if not hijack_root:
        logging.getLogger("celeriac").setLevel(level)
        return
    root = logging.getLogger()
    _remove_ours(root)
    handler: logging.Handler = (logging.FileHandler(logfile, encoding="utf-8")
                                if logfile else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter(hostname) if fmt == JSON
                         else WorkerFormatter(fmt, task_fmt))
    handler.addFilter(TaskContext())
    handler._celeriac = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def _remove_ours(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if getattr(handler, "_celeriac", False):
            root.removeHandler(handler)
            handler.close()


class TaskContext(logging.Filter):
    """Gives every record ``task_id`` and ``task_name``: those of the task whose code
    logged it (the request context of its thread or asyncio task), else ``???``; and
    ``task_request``, that request (or None), for the JSON lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celeriac.task import current_request

        request = current_request.get()
        record.task_id = (request.id if request is not None else None) or "???"
        record.task_name = (request.task if request is not None else None) or "???"
        record.task_request = request
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


class JsonFormatter(logging.Formatter):
    """One JSON object per record (orjson), with the task's fields where there is one."""

    def __init__(self, hostname: str | None = None) -> None:
        global _structured
        super().__init__()
        self.hostname = hostname
        _structured = True

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(self._task(record))
        line.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()

    def _task(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = dict(getattr(record, TASK_FIELDS, None) or {})
        request = getattr(record, "task_request", None)
        if request is not None:  # logged by a task's code while it runs
            for key, value in (("task_id", request.id), ("task_name", request.task),
                               ("queue", request.queue), ("retries", request.retries),
                               ("worker", request.hostname)):
                if value is not None:
                    fields.setdefault(key, value)
            fields.setdefault("state", "STARTED")
        if fields and self.hostname:
            fields.setdefault("worker", self.hostname)
        return fields


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: what log aggregators parse without help."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def setup_worker_logging(level: str | int, hijack_root: bool = True, fmt: str = FORMAT,
                         task_fmt: str = TASK_FORMAT, logfile: str | None = None,
                         hostname: str | None = None) -> None:
    """The worker's logging, once the app is loaded: the ``setup_logging`` signal's
    receivers take it over entirely when there are any (as in Celery); otherwise the
    worker sets it up and sends ``after_setup_logger``."""
    number = _level_number(level)  # Celery's receivers get the level as a number
    if signals.setup_logging.receivers:
        _remove_ours(logging.getLogger())
        signals.setup_logging.send(sender=None, loglevel=number, logfile=logfile, format=fmt,
                                   colorize=False)
        return
    configure_logging(level, hijack_root, fmt, task_fmt, logfile, hostname)
    signals.after_setup_logger.send(sender=None, logger=logging.getLogger(), loglevel=number,
                                    logfile=logfile, format=fmt, colorize=False)


def _level_number(level: str | int) -> int:
    """``"INFO"`` as 20; a number as itself (what ``logging`` does not know: INFO)."""
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    return number if isinstance(number, int) else logging.INFO
