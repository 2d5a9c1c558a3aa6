"""Running a task in the calling process: ``task.apply()`` and ``task_always_eager``.

The call goes through the worker's own ``run_call``, so retries, autoretry and failure
outcomes are the same as on a worker. Retries run again at once (countdowns are not
waited for), as in Celery's eager mode.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from celeriac import states
from celeriac.canvas_run import eager_links
from celeriac.outcome import Outcome, rebuild_exception
from celeriac.result import AsyncResult, EagerResult
from celeriac.task import Request, Task
from celeriac.worker.executor import Action, Verdict, run_call


async def _call_inline(fn: Callable[[], Any]) -> Any:
    return fn()


def run_eagerly(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                options: dict[str, Any]) -> AsyncResult[Any]:
    task.check_arguments(args, kwargs)
    validator = task.validator if task.options.validate else None
    if validator is not None:  # as a worker would call it: models from dicts
        args, kwargs = validator.arguments(args, kwargs)
    task_id = options.get("task_id") or str(uuid.uuid4())
    request = Request(id=task_id, task=task.name, args=args, kwargs=kwargs,
                      retries=options.get("retries") or 0, is_eager=True, root_id=task_id,
                      queue=options.get("queue") or task.options.queue,
                      priority=options.get("priority") or 0, headers={})
    while True:
        verdict = _run_to_completion(run_call(task, request, _call_inline))
        if verdict.action is not Action.RETRY:
            break
        request.retries += 1
    outcome = _eager_outcome(verdict, task)
    result: EagerResult[Any] = EagerResult(task_id, task.app, outcome, task.name)
    if options.get("link") or options.get("link_error"):  # callbacks run inline too
        eager_links(task.app, result, outcome, options, request)
    if outcome.state != states.SUCCESS and task.app.conf.task_eager_propagates:
        raise rebuild_exception(outcome)
    return result


def _eager_outcome(verdict: Verdict, task: Task[Any, Any]) -> Outcome:
    if verdict.outcome is not None:
        return verdict.outcome
    from celeriac.errors import Reject

    return Outcome.failure(Reject(verdict.reason or "rejected"), states.FAILURE, task.name)


def _run_to_completion(coro: Coroutine[Any, Any, Verdict]) -> Verdict:
    """Run ``coro`` here; on a fresh loop in a helper thread if this thread runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Verdict] = []
    thread = threading.Thread(target=lambda: box.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return box[0]
