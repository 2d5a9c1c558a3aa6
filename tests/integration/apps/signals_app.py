"""Tasks and signal receivers for the signal tests (tests/integration/signal_cases.py).

A worker started with ``celeriac -A signals_app worker`` uses ``app`` (broker and backend
from the ``CELERIAC_*`` environment) and, when ``SIGNALS_RECORD`` names a file, connects
a receiver to every signal a worker sends. Each call becomes one JSON line in that file:
the signal's name, the process and thread it ran in, the sender and every argument it got,
made JSON-safe (``safe``). The producer side (the test process) calls ``connect`` for the
publish signals only, and ``disconnect`` after. With ``SIGNALS_OWN_LOGGING`` set, the app
also takes logging over through ``setup_logging`` (recorded too).

Lines are written with one ``os.write`` on an ``O_APPEND`` descriptor, so lines from the
supervisor and its processes never interleave.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celeriac import App, Task, signals
from celeriac.errors import Reject

RECORD_ENV = "SIGNALS_RECORD"
OWN_LOGGING_ENV = "SIGNALS_OWN_LOGGING"  # set: the app takes logging over (setup_logging)

WORKER_SIGNALS = (
    "task_received", "task_prerun", "task_postrun", "task_success", "task_failure",
    "task_retry", "task_revoked", "task_rejected", "worker_init", "worker_ready",
    "worker_process_init", "worker_process_shutdown", "worker_shutdown",
    "after_setup_logger",
)
PUBLISH_SIGNALS = ("before_task_publish", "after_task_publish")


def safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON: plain values as they are, tasks, requests, exceptions, loggers
    and deliveries as small mappings that say what they are, anything else by type."""
    if isinstance(value, str) and hasattr(value, "exc_info"):  # Celery's einfo
        kind, exception, tb = value.exc_info
        return {"einfo": str(value), "traceback": value.traceback == str(value),
                "type": kind and kind.__name__, "exception": safe(exception, depth + 1),
                "tb": tb is not None}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth > 4:
        return {"type": type(value).__name__}
    if isinstance(value, list | tuple):
        return [safe(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {str(key): safe(item, depth + 1) for key, item in value.items()}
    if isinstance(value, Task):
        return {"task": value.name}
    if isinstance(value, BaseException):
        return {"exception": type(value).__name__, "message": str(value)}
    if isinstance(value, types.TracebackType):
        return {"traceback": value.tb_frame.f_code.co_name}
    if isinstance(value, logging.Logger):
        return {"logger": value.name}
    if hasattr(value, "delivery_count") and hasattr(value, "body"):  # a broker Delivery
        return {"delivery": value.id, "queue": value.queue}
    if hasattr(value, "retries") and hasattr(value, "kwargs"):  # a task Request
        return {"request": value.id, "task": value.task, "args": safe(value.args, depth + 1),
                "kwargs": safe(value.kwargs, depth + 1), "retries": value.retries}
    return {"type": type(value).__name__}


def _writer(path: str) -> Callable[[dict[str, Any]], None]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: dict[str, Any]) -> None:
        os.write(fd, json.dumps(line).encode() + b"\n")

    return write


_receivers: dict[str, Callable[..., None]] = {}


def connect(path: str, names: Iterable[str]) -> None:
    """Record every call of the ``names`` signals into ``path``."""
    write = _writer(path)

    def heard(sender: Any = None, signal: signals.Signal | None = None,
              **arguments: Any) -> None:
        assert signal is not None
        write({"signal": signal.name, "process": os.getpid(), "thread": threading.get_ident(),
               "sender": safe(sender), "arguments": sorted(arguments),
               **{name: safe(value) for name, value in arguments.items()}})

    for name in names:
        getattr(signals, name).connect(heard)
        _receivers[name] = heard


def disconnect() -> None:
    for name, receiver in _receivers.items():
        getattr(signals, name).disconnect(receiver)
    _receivers.clear()


# -- the tasks ----------------------------------------------------------------------------


def _ran(task: Task[..., Any]) -> None:
    """A line saying where the task itself ran: the prerun/postrun receivers must run in
    the same process and thread (Celery sends them in the task's own)."""
    path = os.environ.get(RECORD_ENV)
    if path:
        _writer(path)({"signal": "(task ran)", "process": os.getpid(),
                       "thread": threading.get_ident(), "task_id": task.request.id})


def add(self: Task[..., Any], x: int, y: int) -> int:
    _ran(self)
    return x + y


def boom(self: Task[..., Any], message: str) -> None:
    _ran(self)
    raise ValueError(message)


def flaky(self: Task[..., Any]) -> str:
    """Asks for one retry (countdown 0.1 s), then succeeds."""
    _ran(self)
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("first attempt"), countdown=0.1)
    return "second attempt"


async def nap(self: Task[..., Any], seconds: float) -> None:
    """Runs until revoked with ``terminate=True`` (an async task: cancelled in place)."""
    _ran(self)
    await asyncio.sleep(seconds)


def refuse(self: Task[..., Any]) -> None:
    _ran(self)
    raise Reject("not for this worker", requeue=False)


@dataclass(frozen=True)
class SignalTasks:
    add: Task[..., int]
    boom: Task[..., None]
    flaky: Task[..., str]
    refuse: Task[..., None]
    nap: Task[..., None]


def register(target: App) -> SignalTasks:
    return SignalTasks(
        add=target.task(name="signals.add", bind=True)(add),
        boom=target.task(name="signals.boom", bind=True)(boom),
        flaky=target.task(name="signals.flaky", bind=True, max_retries=2)(flaky),
        refuse=target.task(name="signals.refuse", bind=True)(refuse),
        nap=target.task(name="signals.nap", bind=True)(nap),
    )


app = App("signals-tests")
tasks = register(app)
if os.environ.get(RECORD_ENV):
    connect(os.environ[RECORD_ENV], WORKER_SIGNALS)
if os.environ.get(RECORD_ENV) and os.environ.get(OWN_LOGGING_ENV):
    connect(os.environ[RECORD_ENV], ["setup_logging"])

    @signals.setup_logging.connect
    def own_logging(loglevel: int = logging.INFO, **kwargs: Any) -> None:
        logging.basicConfig(level=loglevel, format="OWN %(processName)s %(message)s",
                            force=True)
