"""What a worker stores as a task's result, and how a failure is rebuilt on the caller side.

An ``Outcome`` is plain data. A failure keeps the exception's type, message, arguments
and traceback text, and the call's own ``args`` and ``kwargs`` (as the message carried
them): what sending the task again needs (the dashboard's retry), kept only for
failures, which are few, so results stay small.

On the caller side ``rebuild_exception`` returns an exception of the original type only
when that type is already imported in this process and is an ``Exception`` subclass
that accepts the stored arguments; nothing is ever imported or unpickled to rebuild it.
Otherwise the caller gets a ``TaskError`` with the same facts.
"""

from __future__ import annotations

import sys
import time
import traceback as traceback_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celeriac import states
from celeriac.errors import TaskError, TaskRevokedError


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str
    result: Any = None
    exc_type: str | None = None  # "module.QualName"
    exc_message: str | None = None
    exc_args: list[Any] | None = None
    traceback: str | None = None
    retries: int = 0
    task: str | None = None
    date_done: float | None = None
    args: list[Any] | None = None  # the failed call's arguments (see the module)
    kwargs: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def to_payload(self) -> dict[str, Any]:
        payload = {"state": self.state, "result": self.result, "retries": self.retries,
                   "task": self.task, "date_done": self.date_done}
        if self.exc_type is not None:
            payload.update(exc_type=self.exc_type, exc_message=self.exc_message,
                           exc_args=self.exc_args, traceback=self.traceback)
        if self.args is not None:
            payload.update(args=self.args, kwargs=self.kwargs)
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Outcome:
        return cls(
            state=payload["state"], result=payload.get("result"),
            exc_type=payload.get("exc_type"), exc_message=payload.get("exc_message"),
            exc_args=payload.get("exc_args"), traceback=payload.get("traceback"),
            retries=payload.get("retries", 0), task=payload.get("task"),
            date_done=payload.get("date_done"), args=payload.get("args"),
            kwargs=payload.get("kwargs"),
        )

    @classmethod
    def success(cls, value: Any, task: str | None = None, retries: int = 0) -> Outcome:
        return cls(states.SUCCESS, result=value, task=task, retries=retries,
                   date_done=time.time())

    @classmethod
    def failure(cls, exc: BaseException, state: str = states.FAILURE,
                task: str | None = None, retries: int = 0,
                call: tuple[Sequence[Any], Mapping[str, Any]] | None = None) -> Outcome:
        """The outcome of ``exc``; ``call`` is the call's (args, kwargs), kept to retry it."""
        kind = type(exc)
        return cls(
            state, exc_type=f"{kind.__module__}.{kind.__qualname__}", exc_message=_text(exc),
            exc_args=_portable_args(exc),
            traceback="".join(traceback_module.format_exception(exc)),
            task=task, retries=retries, date_done=time.time(),
            args=list(call[0]) if call is not None else None,
            kwargs=dict(call[1]) if call is not None else None,
        )


def _text(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return "(its text could not be read)"


def _portable_args(exc: BaseException) -> list[Any] | None:
    """The exception's args if they are plain data every serializer can carry."""
    plain = (str, int, float, bool, type(None))
    args = list(exc.args)
    return args if all(isinstance(a, plain) for a in args) else None


def rebuild_exception(outcome: Outcome) -> BaseException:
    """The exception a failed task raised, rebuilt safely, or a TaskError describing it."""
    if outcome.state == states.REVOKED:
        return TaskRevokedError(outcome.exc_message or "the task was revoked")
    exc_type = outcome.exc_type or "Exception"
    message = outcome.exc_message or ""
    kind = _imported_exception_type(exc_type)
    if kind is not None and outcome.exc_args is not None:
        try:
            exc = kind(*outcome.exc_args)
        except Exception:  # the type's constructor wants other arguments
            exc = None
        if exc is not None:
            exc.__notes__ = [f"Remote traceback:\n{outcome.traceback or ''}"]
            return exc
    return TaskError(exc_type, message, outcome.traceback)


def _imported_exception_type(qualified: str) -> type[BaseException] | None:
    module_name, _, qualname = qualified.rpartition(".")
    module = sys.modules.get(module_name)  # never import: that could run arbitrary code
    if module is None:
        return None
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, Exception):
        return obj
    return None
