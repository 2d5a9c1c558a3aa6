"""Celery's task hooks (``before_start``, ``on_success``, ``on_failure``, ``on_retry``,
``after_return``) around a call, for tasks whose class overrides them (``base=``), and
the task signals sent around it (``task_prerun`` ... ``task_postrun``) when connected.

A task on the plain ``Task`` class pays nothing: ``has_hooks`` is one cached look-up per
class, and such calls never reach this module. A sync hook runs on the pool thread, as
the task did (it may block: send a mail, close a database connection); an ``async def``
hook is awaited on the loop. A hook that raises is logged and does not change the
task's outcome: the task has already run.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.errors import Retry
from celeriac.task import Task, current_request

if TYPE_CHECKING:
    from celeriac.task import Request
    from celeriac.worker.executor import SyncRunner, Verdict

logger = logging.getLogger("celeriac.worker")

HOOKS = ("before_start", "on_success", "on_failure", "on_retry", "after_return")


@functools.cache
def _class_has_hooks(cls: type) -> bool:
    return any(getattr(cls, name) is not getattr(Task, name) for name in HOOKS)


def has_hooks(task: Task[Any, Any]) -> bool:
    """Whether the task's class overrides any of the hooks (cached per class)."""
    cls: type = type(task)
    return _class_has_hooks(cls)


async def before_start(task: Task[Any, Any], request: Request, run_sync: SyncRunner) -> None:
    await _signal(task, signals.task_prerun, run_sync, request, task_id=request.id, task=task,
                  args=request.args, kwargs=request.kwargs)
    if has_hooks(task):
        await _call(task, "before_start", run_sync, request, request.id, request.args,
                    request.kwargs)


async def after(task: Task[Any, Any], request: Request, verdict: Verdict, run_sync: SyncRunner,
                retval: Any = None, exc: BaseException | None = None,
                runtime: float = 0.0) -> None:
    """The hooks that follow a call, by what the verdict made of it."""
    from celeriac.worker.executor import Action

    text = verdict.outcome.traceback if verdict.outcome is not None else None
    args, kwargs = request.args, request.kwargs
    hooked = has_hooks(task)
    if verdict.action is Action.RETRY and exc is not None:
        status = states.RETRY
        if isinstance(exc, Retry) and exc.exc is not None:
            exc = exc.exc  # as Celery: the error the task retried for, not the signal
    einfo = None if text is None else signals.ExceptionInfo(text, exc)
    if verdict.action is Action.RETRY and exc is not None:
        await _signal(task, signals.task_retry, run_sync, request, request=request, reason=exc,
                      einfo=einfo)
        if hooked:
            await _call(task, "on_retry", run_sync, request, exc, request.id, args, kwargs,
                        einfo or "")
    elif exc is not None and verdict.action is Action.ACK:
        status = states.FAILURE
        await _signal(task, signals.task_failure, run_sync, request, task_id=request.id,
                      exception=exc, args=args, kwargs=kwargs,
                      traceback=exc.__traceback__, einfo=einfo)
        if hooked:
            await _call(task, "on_failure", run_sync, request, exc, request.id, args, kwargs,
                        einfo or "")
    elif exc is not None:
        status = "REJECTED"  # dead-lettered or requeued by the task (Reject)
    else:
        status = states.SUCCESS
        await _signal(task, signals.task_success, run_sync, request, result=retval,
                      runtime=runtime)
        if hooked:
            await _call(task, "on_success", run_sync, request, retval, request.id, args,
                        kwargs)
    outcome = retval if exc is None else exc
    if hooked:
        await _call(task, "after_return", run_sync, request, status, outcome, request.id, args,
                    kwargs, einfo)
    await _signal(task, signals.task_postrun, run_sync, request, task_id=request.id, task=task,
                  args=args, kwargs=kwargs, retval=outcome, state=status)


async def _signal(sender: Task[Any, Any], signal: signals.Signal, run_sync: SyncRunner,
                  request: Request, /, **arguments: Any) -> None:
    """Send ``signal`` with the task as sender: on the loop for an async task, in the
    pool thread for a sync one (where the task itself ran), with the task's request as
    the context (``task.request`` reads it, as in Celery). ``send`` isolates errors."""
    if not signal.receivers:
        return
    if sender.is_async:
        token = current_request.set(request)
        try:
            await signal.asend(sender=sender, **arguments)
        finally:
            current_request.reset(token)
        return

    def send() -> None:
        token = current_request.set(request)
        try:
            signal.send(sender=sender, **arguments)
        finally:
            current_request.reset(token)

    await run_sync(send)


async def _call(task: Task[Any, Any], name: str, run_sync: SyncRunner, request: Request,
                *args: Any) -> None:
    hook: Callable[..., Any] = getattr(task, name)
    token = current_request.set(request)  # self.request in a hook, as in Celery
    try:
        if inspect.iscoroutinefunction(hook):
            await hook(*args)
        else:
            await run_sync(functools.partial(_with_request, request, hook, *args))
    except Exception:
        logger.exception("Task %s: its %s hook raised; the task's outcome stands",
                         task.name, name)
    finally:
        current_request.reset(token)


def _with_request(request: Request, function: Callable[..., Any], *args: Any) -> Any:
    token = current_request.set(request)
    try:
        return function(*args)
    finally:
        current_request.reset(token)
