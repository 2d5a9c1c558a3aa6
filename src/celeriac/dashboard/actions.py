"""What an operator can do from the dashboard: every POST of the API and the pages.

Each action checks its input first (``BadInput`` names the field: 400), then acts and
returns ``{"ok": True, ...}``; an unknown target is ``NotFound`` (404), an action the
present state does not allow is ``Conflict`` (409). They go through the same public
paths as the CLI and ``app.control``: revocations and rate limits through the result
backend and the shared buckets (so they reach every worker, later ones too), pool and
consumer changes and shutdown over remote control to one named worker, dead letters
through ``celeriac.dead_letters`` (requeue: publish first, then remove).

Retrying a failed task re-sends it under the same task id, with the same name, queue,
args and kwargs: whoever holds its ``AsyncResult`` sees the new outcome replace the
FAILURE when the new run ends (result backends replace a stored result), and the
history keeps one record whose timeline shows both runs. The arguments are those the
worker stored with the FAILURE (``Outcome.args``/``kwargs``: the real values, however
long, hidden tasks' too). Only when the stored result does not hold them (it expired,
an rpc:// backend, a failure stored before celeriac kept them) do they come from the
history, which has them as the events' ``repr`` of at most 256 characters: a repr that
was cut, or that is not made of Python literals, cannot be sent again exactly, and the
retry is refused (409) rather than sent with other arguments; so is a
``dashboard_hide_args`` task then, whose arguments the history never holds.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celeriac import dead_letters, states
from celeriac.dashboard.service import BadInput, Conflict, NotFound
from celeriac.errors import describe
from celeriac.events.event import ARGS_REPR_MAX
from celeriac.task import SEND_OPTION_NAMES

if TYPE_CHECKING:
    from celeriac.dashboard.history import TaskRecord
    from celeriac.dashboard.service import DashboardService

logger = logging.getLogger("celeriac.dashboard")

CONTROL_TIMEOUT = 2.0  # seconds a named worker gets to confirm an action
POOL_STEP_MAX = 64
APPLY_OPTIONS = frozenset({"countdown", "eta", "expires", "queue", "priority", "task_id"})


class Actions:
    def __init__(self, service: DashboardService) -> None:
        self.service = service
        self.app = service.app

    # -- tasks ----------------------------------------------------------------------------

    async def revoke(self, task_id: str, terminate: bool = False) -> dict[str, Any]:
        _flag("terminate", terminate)
        try:
            await self.service.on_app(self.app.control.arevoke(task_id, terminate=terminate))
        except Exception as exc:  # a backend that keeps no revocations (rpc://)
            raise Conflict(f"cannot revoke: {describe(exc)}") from None
        logger.info("dashboard: revoked task %s%s", task_id,
                    " (terminate)" if terminate else "")
        return {"ok": True, "id": task_id, "terminate": terminate}

    async def retry(self, task_id: str) -> dict[str, Any]:
        record = await self.service.store.get(task_id)
        if record is None:
            raise NotFound(f"no task {task_id} in the history")
        if record.state != states.FAILURE:
            raise Conflict(f"only a failed task is retried; task {task_id} is {record.state}")
        if record.name is None:
            raise Conflict(f"the history does not know the name of task {task_id}")
        args, kwargs = await self._failed_call(task_id, record)
        options: dict[str, Any] = {"task_id": task_id}
        if record.queue:
            options["queue"] = record.queue
        try:
            await self.service.on_app(self.app.asend_task(
                record.name, args, kwargs, **options))
        except Exception as exc:
            raise Conflict(f"cannot send {record.name}: {describe(exc)}") from None
        logger.info("dashboard: retried task %s[%s]", record.name, task_id)
        return {"ok": True, "id": task_id, "name": record.name}

    async def _failed_call(self, task_id: str, record: TaskRecord
                           ) -> tuple[list[Any], dict[str, Any]]:
        """The failed call's arguments: as the worker stored them with the FAILURE (the
        real values, however long), else read back from the history's bounded repr."""
        try:
            outcome = await self.service.stored_outcome(task_id)
        except ValueError:
            outcome = None
        if outcome is not None and outcome.args is not None:
            return list(outcome.args), dict(outcome.kwargs or {})
        assert record.name is not None
        if self.service.hidden(record.name):
            raise Conflict(f"{record.name} hides its arguments (dashboard_hide_args) and "
                           "its stored result does not hold them, so the dashboard does "
                           "not have them to send it again")
        return (list(_literal(record.args, "args", tuple | list)),
                dict(_literal(record.kwargs, "kwargs", dict)))

    async def rate_limit(self, name: str, rate: Any) -> dict[str, Any]:
        from celeriac.ratelimit import canonical

        if not isinstance(rate, str | int | float) or isinstance(rate, bool):
            raise BadInput("rate", "a rate such as '10/s', '100/m', '1000/h', or 0 to lift it")
        try:
            text = canonical(rate)
        except ValueError as exc:
            raise BadInput("rate", str(exc)) from None
        try:
            await self.service.on_app(self.app.control.arate_limit(name, text))
        except Exception as exc:
            raise Conflict(f"cannot set the rate limit: {describe(exc)}") from None
        logger.info("dashboard: rate limit of %s set to %s", name, text)
        return {"ok": True, "name": name, "rate": text}

    async def apply(self, name: str, args: Any = None, kwargs: Any = None,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send task ``name`` (Flower's async-apply); unknown names are sent as they are
        when no task of the app has that name (its workers may know it)."""
        if args is not None and not isinstance(args, list):
            raise BadInput("args", "must be a JSON array")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise BadInput("kwargs", "must be a JSON object")
        options = dict(options or {})
        unknown = set(options) - APPLY_OPTIONS
        if unknown:
            raise BadInput(sorted(unknown)[0], f"unknown option; known: "
                           f"{', '.join(sorted(APPLY_OPTIONS))}")
        assert APPLY_OPTIONS <= SEND_OPTION_NAMES
        try:
            result = await self.service.on_app(self.app.asend_task(
                name, args or [], kwargs or {}, **options))
        except (TypeError, ValueError) as exc:  # arguments the task cannot take, options
            raise BadInput("args", describe(exc)) from None
        except Exception as exc:
            raise Conflict(f"cannot send {name}: {describe(exc)}") from None
        return {"ok": True, "id": result.id, "name": name, "task-id": result.id}

    # -- dead letters ---------------------------------------------------------------------

    async def requeue_dead(self, body: Mapping[str, Any]) -> dict[str, Any]:
        choice = _choice(body)
        broker = await self.service.broker()
        chosen = await self.service.on_app(dead_letters.choose(self.app, broker, choice))
        if choice.ids and not chosen:
            raise NotFound("no dead letter with those ids")
        count = await self.service.on_app(dead_letters.requeue(self.app, broker, chosen))
        logger.info("dashboard: requeued %d dead letter(s)", count)
        return {"ok": True, "requeued": count, "ids": [letter.id for letter in chosen]}

    async def delete_dead(self, body: Mapping[str, Any]) -> dict[str, Any]:
        choice = _choice(body)
        broker = await self.service.broker()
        chosen = await self.service.on_app(dead_letters.choose(self.app, broker, choice))
        if choice.ids and not chosen:
            raise NotFound("no dead letter with those ids")
        try:
            count = await self.service.on_app(
                dead_letters.remove(broker, [letter.id for letter in chosen]))
        except NotImplementedError as exc:
            raise Conflict(str(exc)) from None
        logger.info("dashboard: deleted %d dead letter(s)", count)
        return {"ok": True, "deleted": count}

    async def purge(self, queue: str, confirm: Any) -> dict[str, Any]:
        if confirm != queue:
            raise BadInput("confirm", f"must be the queue's name ({queue!r}) to purge it")
        known = {reading.queue for reading in await self.service.sampler.latest()}
        if queue not in known:
            await self.service.sampler.sample()
            known = {reading.queue for reading in await self.service.sampler.latest()}
        if queue not in known:
            raise NotFound(f"no queue {queue!r} on the broker")
        broker = await self.service.broker()
        count = await self.service.on_app(broker.purge([queue]))
        logger.info("dashboard: purged %d message(s) from queue %s", count, queue)
        return {"ok": True, "queue": queue, "purged": count}

    # -- workers --------------------------------------------------------------------------

    async def pool_grow(self, host: str, n: Any) -> dict[str, Any]:
        return await self._control(host, "pool_grow", {"n": _count(n)})

    async def pool_shrink(self, host: str, n: Any) -> dict[str, Any]:
        return await self._control(host, "pool_shrink", {"n": _count(n)})

    async def add_consumer(self, host: str, queue: Any) -> dict[str, Any]:
        return await self._control(host, "add_consumer", {"queue": _queue(queue)})

    async def cancel_consumer(self, host: str, queue: Any) -> dict[str, Any]:
        return await self._control(host, "cancel_consumer", {"queue": _queue(queue)})

    async def shutdown(self, host: str) -> dict[str, Any]:
        return await self._control(host, "shutdown", {})

    async def _control(self, host: str, command: str,
                       arguments: dict[str, Any]) -> dict[str, Any]:
        """``command`` to the worker ``host`` alone; its answer, or why there is none."""
        answers = await self.service.on_app(self.app.control.abroadcast(
            command, arguments, destination=[host], reply=True, timeout=CONTROL_TIMEOUT))
        self.service.forget_inspect()
        reply = next((item[host] for item in answers or [] if host in item), None)
        if reply is None:
            raise NotFound(f"worker {host} did not answer within {CONTROL_TIMEOUT:g} s")
        if isinstance(reply, dict) and "error" in reply:
            raise Conflict(f"worker {host}: {reply['error']}")
        logger.info("dashboard: %s %s on %s", command, arguments or "", host)
        return {"ok": True, "worker": host, "reply": reply}


def _flag(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise BadInput(field, "must be true or false")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= POOL_STEP_MAX:
        raise BadInput("n", f"must be an integer from 1 to {POOL_STEP_MAX}")
    return value


def _queue(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput("queue", "must be a queue name")
    return value.strip()


def _choice(body: Mapping[str, Any]) -> dead_letters.Choice:
    ids, task, every = body.get("ids"), body.get("task"), body.get("all", False)
    if ids is not None and (not isinstance(ids, list) or not ids
                            or not all(isinstance(i, str) and i for i in ids)):
        raise BadInput("ids", "must be a non-empty list of message ids")
    if task is not None and (not isinstance(task, str) or not task):
        raise BadInput("task", "must be a task name")
    _flag("all", every)
    try:
        return dead_letters.Choice(frozenset(ids or ()), task, every)
    except ValueError:
        raise BadInput("ids", "choose the dead letters with one of ids, task or "
                       "all: true") from None


def _literal(text: str | None, field: str, kind: Any) -> Any:
    """An argument repr from the events, read back as the value it shows, or Conflict."""
    if text is None:
        return () if field == "args" else {}
    if len(text) >= ARGS_REPR_MAX and text.endswith("..."):
        raise Conflict(f"the task's {field} were longer than the {ARGS_REPR_MAX} characters "
                       "the events carry; re-send it from your code")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise Conflict(f"the task's {field} ({text[:80]}) are not plain values the "
                       "dashboard can send again; re-send it from your code") from None
    if not isinstance(value, kind):
        raise Conflict(f"the task's {field} read back as {type(value).__name__}")
    return value
