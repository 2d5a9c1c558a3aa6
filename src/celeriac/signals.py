"""Signals with Celery's names and arguments, for the code real projects already have.

``from celeriac.signals import task_failure`` then ``@task_failure.connect`` (or
``@task_failure.connect(sender="proj.tasks.add")``): the receiver is called with
``sender`` and the signal's keyword arguments, as in Celery. A receiver that raises is
logged with its name and the signal's, and changes nothing else: the task, the publish
or the worker goes on. A receiver may be ``async def``: where the signal is sent from
the worker's event loop it is awaited there, elsewhere it is run to completion on a
loop of its own.

Written here rather than taken from blinker because it is small and because of what it
must promise: Celery's ``connect(sender=...)`` by task name, receivers kept strongly (a
decorated function must not vanish), errors isolated and logged, and no cost at all on
the hot path when nothing is connected (``signal.receivers`` is an empty list, checked
before any argument is built).

Where each is sent: ``before_task_publish``/``after_task_publish`` by the producer
(``App``); ``task_received``, ``task_prerun``, ``task_postrun``, ``task_success``,
``task_failure``, ``task_retry``, ``task_revoked``, ``task_rejected`` by the worker
(``worker/signalling.py``; prerun and postrun in the task's own thread, as in Celery);
``worker_init``, ``worker_ready``, ``worker_shutdown`` by the worker command and
``worker_process_init``/``worker_process_shutdown`` by each worker process;
``setup_logging`` (connecting to it replaces the worker's logging set-up) and
``after_setup_logger`` when the worker sets logging up.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, overload

logger = logging.getLogger("celeriac.signals")

Receiver = Callable[..., Any]


@dataclass
class Signal:
    """A named signal; ``receivers`` holds (receiver, sender or None) pairs."""

    name: str
    arguments: tuple[str, ...] = ()  # what the receivers are given, besides sender
    receivers: list[tuple[Receiver, Any]] = field(default_factory=list)

    @overload
    def connect(self, receiver: Receiver, /, *, sender: Any = None) -> Receiver: ...

    @overload
    def connect(self, receiver: None = None, /, *,
                sender: Any = None) -> Callable[[Receiver], Receiver]: ...

    def connect(self, receiver: Receiver | None = None, /, *,
                sender: Any = None) -> Receiver | Callable[[Receiver], Receiver]:
        """Call ``receiver`` when the signal is sent (by ``sender`` only, if given).

        ``sender`` may be a task or its name: tasks send with themselves as sender.
        Connecting the same receiver twice for the same sender is one connection.
        """
        def add(function: Receiver) -> Receiver:
            entry = (function, _sender_key(sender))
            if entry not in self.receivers:
                self.receivers.append(entry)
            return function

        return add if receiver is None else add(receiver)

    def disconnect(self, receiver: Receiver, sender: Any = None) -> bool:
        entry = (receiver, _sender_key(sender))
        if entry in self.receivers:
            self.receivers.remove(entry)
            return True
        return False

    def send(self, sender: Any = None, **arguments: Any) -> list[tuple[Receiver, Any]]:
        """Call the receivers; return (receiver, what it returned or raised) pairs."""
        replies: list[tuple[Receiver, Any]] = []
        for receiver in self._receivers_for(sender):
            try:
                reply = receiver(sender=sender, signal=self, **arguments)
                if inspect.isawaitable(reply):
                    reply = _complete(reply)
            except Exception as exc:
                reply = self._failed(receiver, exc)
            replies.append((receiver, reply))
        return replies

    async def asend(self, sender: Any = None, **arguments: Any) -> list[tuple[Receiver, Any]]:
        """``send`` from a coroutine: async receivers are awaited on this loop."""
        replies: list[tuple[Receiver, Any]] = []
        for receiver in self._receivers_for(sender):
            try:
                reply = receiver(sender=sender, signal=self, **arguments)
                if inspect.isawaitable(reply):
                    reply = await reply
            except Exception as exc:
                reply = self._failed(receiver, exc)
            replies.append((receiver, reply))
        return replies

    def _receivers_for(self, sender: Any) -> list[Receiver]:
        """The receivers connected for every sender or for this one, in connection order."""
        if not self.receivers:
            return []
        key = _sender_key(sender)
        return [receiver for receiver, wanted in self.receivers
                if wanted is None or wanted == key]

    def _failed(self, receiver: Receiver, exc: Exception) -> Exception:
        logger.exception("signal %s: receiver %s raised; carrying on", self.name,
                         _name_of(receiver), exc_info=exc)
        return exc

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self.receivers)} receiver(s)>"


def _sender_key(sender: Any) -> Any:
    """Tasks are matched by name, so ``sender=add`` and ``sender="proj.add"`` agree."""
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) else sender


def _complete(awaitable: Any) -> Any:
    """An async receiver's result where no loop runs here (a sync caller, a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    # On a running loop that is not awaiting us: run it beside, without blocking.
    return asyncio.ensure_future(awaitable)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _name_of(receiver: Receiver) -> str:
    module = getattr(receiver, "__module__", "?")
    return f"{module}.{getattr(receiver, '__qualname__', repr(receiver))}"


ErrorType = type[BaseException]  # (inside ExceptionInfo, ``type`` is its property)


class ExceptionInfo(str):
    """Celery's ``einfo`` argument (billiard's ``ExceptionInfo``): the formatted traceback,
    as the string itself and as ``traceback``, with ``exception``, ``type``, ``tb`` and
    ``exc_info`` beside it, so that receivers and hooks written for Celery
    (``einfo.traceback``, ``str(einfo)``, ``einfo.exc_info``) work unchanged."""

    exception: BaseException | None

    def __new__(cls, text: str, exception: BaseException | None = None) -> ExceptionInfo:
        info = super().__new__(cls, text)
        info.exception = exception
        return info

    @property
    def traceback(self) -> str:
        return str(self)

    @property
    def type(self) -> ErrorType | None:
        return None if self.exception is None else type(self.exception)

    @property
    def tb(self) -> TracebackType | None:
        return None if self.exception is None else self.exception.__traceback__

    @property
    def exc_info(self) -> tuple[ErrorType | None, BaseException | None, TracebackType | None]:
        return self.type, self.exception, self.tb


# -- the signals, with Celery's names and arguments ----------------------------------------

before_task_publish = Signal("before_task_publish", (
    "body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"))
after_task_publish = Signal("after_task_publish", ("body", "exchange", "routing_key"))
task_received = Signal("task_received", ("request",))
task_prerun = Signal("task_prerun", ("task_id", "task", "args", "kwargs"))
task_postrun = Signal("task_postrun", ("task_id", "task", "args", "kwargs", "retval",
                                       "state"))
task_success = Signal("task_success", ("result", "runtime"))
task_failure = Signal("task_failure", ("task_id", "exception", "args", "kwargs",
                                       "traceback", "einfo"))
task_retry = Signal("task_retry", ("request", "reason", "einfo"))
task_revoked = Signal("task_revoked", ("request", "terminated", "signum", "expired"))
task_rejected = Signal("task_rejected", ("message", "exc"))
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", ("pid", "exitcode"))
setup_logging = Signal("setup_logging", ("loglevel", "logfile", "format", "colorize"))
after_setup_logger = Signal("after_setup_logger", ("logger", "loglevel", "logfile", "format",
                                                   "colorize"))

TASK_SIGNALS = (task_prerun, task_postrun, task_success, task_failure, task_retry)

__all__ = [
    "ExceptionInfo", "Signal", "after_setup_logger", "after_task_publish", "before_task_publish",
    "setup_logging", "task_failure", "task_postrun", "task_prerun", "task_received",
    "task_rejected", "task_retry", "task_revoked", "task_success", "worker_init",
    "worker_process_init", "worker_process_shutdown", "worker_ready", "worker_shutdown",
]
