"""The dashboard's JSON API: one table of endpoints, the routes and the OpenAPI document.

``ENDPOINTS`` lists every route once (method, path, handler name, summary, query
parameters, body fields); ``api_routes`` makes Starlette routes from it and
``openapi.document`` the OpenAPI 3.1 description, so the two cannot drift apart. The
pages' scripts use these same endpoints.

Errors are JSON ``{"error": "...", "field": "..."}``: 400 for bad input (naming the
field), 404 for an unknown task, worker, queue or dead letter, 409 for an action the
present state does not allow, 503 when the broker or the history's server fails.
Every POST needs the CSRF token (``auth.py``).

Flower's most used endpoints have equivalents at Flower's paths (``/api/task/info``,
``/api/task/revoke``, ``/api/task/async-apply``, ``/api/queues/length``), so scripts
written against Flower keep working.

``GET /api/stream`` is Server-Sent Events: ``data: {"version": n, "lag": s}`` whenever
the ingest's version changes (checked every ``STREAM_POLL`` seconds) and a comment
every ``STREAM_PING`` seconds, which keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from celeriac.dashboard.actions import Actions
from celeriac.dashboard.auth import csrf_token
from celeriac.dashboard.history import SORTS, STATES, TaskQuery
from celeriac.dashboard.service import BadInput, Conflict, NotFound
from celeriac.errors import CeleriacError, describe

if TYPE_CHECKING:
    from celeriac.dashboard.service import DashboardService

logger = logging.getLogger("celeriac.dashboard")

STREAM_POLL = 0.25
STREAM_PING = 15.0
BODY_MAX = 1 << 20


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # JSON Schema type: string, integer, number, boolean, array, object
    description: str
    required: bool = False
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: str  # the name of the Api method
    summary: str
    tag: str
    query: tuple[Param, ...] = ()
    body: tuple[Param, ...] = ()
    flower: bool = False  # an alias of Flower's endpoint
    stream: bool = False
    returns: str = "object"  # JSON Schema type of the answer


_TASK_FILTERS = (
    Param("id", "string", "A task id."),
    Param("name", "string", "A task name."),
    Param("state", "string", "A task state.", enum=STATES),
    Param("queue", "string", "A queue name."),
    Param("worker", "string", "The hostname of the worker that last reported on it."),
    Param("since", "number", "Updated at or after this Unix time."),
    Param("until", "number", "Updated at or before this Unix time."),
    Param("text", "string", "A substring of the args or kwargs (case-insensitive)."),
    Param("sort", "string", "The field to sort by.", enum=SORTS),
    Param("order", "string", "asc or desc (the default).", enum=("asc", "desc")),
    Param("offset", "integer", "Skip this many matches."),
    Param("limit", "integer", "At most this many (1-500, 50 by default)."),
)
_CHOICE = (Param("ids", "array", "These dead letters' message ids."),
           Param("task", "string", "Every dead letter of this task name."),
           Param("all", "boolean", "Every dead letter."))
_APPLY = (Param("args", "array", "Positional arguments."),
          Param("kwargs", "object", "Keyword arguments."),
          Param("options", "object", "countdown, eta, expires, queue, priority, task_id."))

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/overview", "overview", "Workers, task counts, throughput, queues, "
             "alerts.", "read"),
    Endpoint("GET", "/api/workers", "workers", "Every worker: pool, processes, active and "
             "reserved tasks, queues.", "read", returns="array"),
    Endpoint("GET", "/api/queues", "queues", "Every queue: ready, scheduled, in flight, "
             "dead letters, oldest age, recent history.", "read", returns="array"),
    Endpoint("GET", "/api/tasks", "tasks", "Search the task history (paged).", "read",
             query=_TASK_FILTERS),
    Endpoint("GET", "/api/tasks/{task_id}", "task", "One task: arguments, result or "
             "exception and traceback, timeline, workflow.", "read"),
    Endpoint("GET", "/api/dead-letters", "dead_letters", "The newest dead letters.", "read",
             query=(Param("task", "string", "Only this task's."),
                    Param("queue", "string", "Only this queue's."),
                    Param("limit", "integer", "At most this many (100 by default).")),
             returns="array"),
    Endpoint("GET", "/api/scheduled", "scheduled", "Messages waiting for their countdown "
             "or ETA.", "read", returns="array"),
    Endpoint("GET", "/api/csrf", "csrf", "The CSRF token to send as X-CSRF-Token.", "read"),
    Endpoint("GET", "/api/stream", "stream", "Server-Sent Events: the version whenever "
             "something changed.", "read", stream=True),
    Endpoint("GET", "/api/openapi.json", "openapi", "This document.", "read"),
    Endpoint("POST", "/api/tasks/{task_id}/revoke", "revoke", "Revoke a task; terminate "
             "stops it if it runs.", "tasks",
             body=(Param("terminate", "boolean", "Stop it if it runs."),)),
    Endpoint("POST", "/api/tasks/{task_id}/retry", "retry", "Send a failed task again, "
             "under the same id with the same arguments.", "tasks"),
    Endpoint("POST", "/api/task-types/{name}/rate-limit", "rate_limit", "Set a task's rate "
             "limit for every worker.", "tasks",
             body=(Param("rate", "string", "'10/s', '100/m', '1000/h'; 0 lifts it.", True),)),
    Endpoint("POST", "/api/tasks/apply/{name}", "apply", "Send a task.", "tasks",
             body=_APPLY),
    Endpoint("POST", "/api/dead-letters/requeue", "requeue_dead", "Send dead letters back "
             "to their queues.", "dead letters", body=_CHOICE),
    Endpoint("POST", "/api/dead-letters/delete", "delete_dead", "Delete dead letters.",
             "dead letters", body=_CHOICE),
    Endpoint("POST", "/api/queues/{queue}/purge", "purge", "Delete every waiting message "
             "of a queue.", "queues",
             body=(Param("confirm", "string", "The queue's name again.", True),)),
    Endpoint("POST", "/api/workers/{host}/pool/grow", "pool_grow", "Add processes or "
             "slots.", "workers", body=(Param("n", "integer", "How many (1 by default)."),)),
    Endpoint("POST", "/api/workers/{host}/pool/shrink", "pool_shrink", "Remove processes "
             "or slots.", "workers",
             body=(Param("n", "integer", "How many (1 by default)."),)),
    Endpoint("POST", "/api/workers/{host}/consumers/add", "add_consumer", "Consume a "
             "queue too.", "workers", body=(Param("queue", "string", "The queue.", True),)),
    Endpoint("POST", "/api/workers/{host}/consumers/cancel", "cancel_consumer", "Stop "
             "consuming a queue.", "workers",
             body=(Param("queue", "string", "The queue.", True),)),
    Endpoint("POST", "/api/workers/{host}/shutdown", "shutdown", "A warm shutdown of the "
             "worker.", "workers"),
    Endpoint("GET", "/api/task/info/{task_id}", "flower_task_info", "Flower: a task's info "
             "(this API's fields and Flower's names for them).", "flower", flower=True),
    Endpoint("POST", "/api/task/revoke/{task_id}", "flower_revoke", "Flower: revoke "
             "(?terminate=true).", "flower", flower=True,
             query=(Param("terminate", "boolean", "Stop it if it runs."),)),
    Endpoint("POST", "/api/task/async-apply/{name}", "apply", "Flower: send a task.",
             "flower", flower=True, body=_APPLY),
    Endpoint("GET", "/api/queues/length", "queue_lengths", "Flower: each queue's length.",
             "flower", flower=True),
)


class Api:
    """The handlers: read the request, call the service or an action, answer JSON."""

    def __init__(self, service: DashboardService) -> None:
        self.service = service
        self.actions = Actions(service)

    # -- reads ----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Any:
        return await self.service.overview()

    async def workers(self, request: Request) -> Any:
        return await self.service.workers()

    async def queues(self, request: Request) -> Any:
        return await self.service.queues()

    async def tasks(self, request: Request) -> Any:
        return await self.service.tasks(task_query(request))

    async def task(self, request: Request) -> Any:
        task_id = request.path_params["task_id"]
        found = await self.service.task(task_id)
        if found is None:
            raise NotFound(f"no task {task_id} in the history")
        return found

    async def flower_task_info(self, request: Request) -> Any:
        found = await self.task(request)
        finished = found["finished_at"]
        return {**found, "uuid": found["id"], "received": found["received_at"],
                "started": found["started_at"], "timestamp": found["updated_at"],
                "succeeded": finished if found["state"] == "SUCCESS" else None,
                "failed": finished if found["state"] == "FAILURE" else None}

    async def dead_letters(self, request: Request) -> Any:
        params = request.query_params
        return await self.service.dead_letters(
            task=params.get("task") or None, queue=params.get("queue") or None,
            limit=_int(params.get("limit"), "limit", 100))

    async def scheduled(self, request: Request) -> Any:
        return await self.service.scheduled()

    async def csrf(self, request: Request) -> Any:
        return {"token": csrf_token(request), "header": "X-CSRF-Token"}

    async def openapi(self, request: Request) -> Any:
        from celeriac.dashboard.openapi import document

        return document(ENDPOINTS)

    async def queue_lengths(self, request: Request) -> Any:
        return {"active_queues": [{"name": q["name"], "messages": q["ready"]}
                                  for q in await self.service.queues()]}

    async def stream(self, request: Request) -> Response:
        return StreamingResponse(self._events(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def _events(self, request: Request) -> AsyncIterator[str]:
        ingest = self.service.ingest
        version, quiet = None, 0.0
        while not await request.is_disconnected():
            if ingest.version != version:
                version = ingest.version
                lag = ingest.lag
                data = {"version": version, "lag": lag if math.isfinite(lag) else None}
                yield f"data: {json.dumps(data)}\n\n"
                quiet = 0.0
            elif quiet >= STREAM_PING:
                yield ": ping\n\n"
                quiet = 0.0
            await asyncio.sleep(STREAM_POLL)
            quiet += STREAM_POLL

    # -- actions --------------------------------------------------------------------------

    async def revoke(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.revoke(request.path_params["task_id"],
                                         body.get("terminate", False))

    async def flower_revoke(self, request: Request) -> Any:
        terminate = request.query_params.get("terminate", "false").lower()
        if terminate not in ("true", "false", "1", "0"):
            raise BadInput("terminate", "must be true or false")
        task_id = request.path_params["task_id"]
        answer = await self.actions.revoke(task_id, terminate in ("true", "1"))
        return {**answer, "message": f"Revoked '{task_id}'"}

    async def retry(self, request: Request) -> Any:
        await _body(request)
        return await self.actions.retry(request.path_params["task_id"])

    async def rate_limit(self, request: Request) -> Any:
        body = await _body(request)
        if "rate" not in body:
            raise BadInput("rate", "is required")
        return await self.actions.rate_limit(request.path_params["name"], body["rate"])

    async def apply(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.apply(request.path_params["name"], body.get("args"),
                                        body.get("kwargs"), _object(body, "options"))

    async def requeue_dead(self, request: Request) -> Any:
        return await self.actions.requeue_dead(await _body(request))

    async def delete_dead(self, request: Request) -> Any:
        return await self.actions.delete_dead(await _body(request))

    async def purge(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.purge(request.path_params["queue"], body.get("confirm"))

    async def pool_grow(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.pool_grow(request.path_params["host"], body.get("n", 1))

    async def pool_shrink(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.pool_shrink(request.path_params["host"], body.get("n", 1))

    async def add_consumer(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.add_consumer(request.path_params["host"],
                                               body.get("queue"))

    async def cancel_consumer(self, request: Request) -> Any:
        body = await _body(request)
        return await self.actions.cancel_consumer(request.path_params["host"],
                                                  body.get("queue"))

    async def shutdown(self, request: Request) -> Any:
        await _body(request)
        return await self.actions.shutdown(request.path_params["host"])


def api_routes(service: DashboardService) -> list[BaseRoute]:
    api = Api(service)
    return [Route(endpoint.path, _handler(getattr(api, endpoint.handler), endpoint.stream),
                  methods=[endpoint.method],
                  name=f"api:{endpoint.method.lower()}:{endpoint.path}")
            for endpoint in ENDPOINTS]


def _handler(method: Callable[[Request], Awaitable[Any]],
             stream: bool) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            answer = await method(request)
        except BadInput as exc:
            return error(400, str(exc), exc.field)
        except NotFound as exc:
            return error(404, str(exc))
        except Conflict as exc:
            return error(409, str(exc))
        except CeleriacError as exc:  # the history's or the broker's server failed
            logger.warning("dashboard: %s %s: %s", request.method, request.url.path,
                           describe(exc))
            return error(503, describe(exc))
        if stream:
            assert isinstance(answer, Response)
            return answer
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    return handle


def error(status: int, message: str, field_name: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    return JSONResponse(body, status)


def task_query(request: Request) -> TaskQuery:
    """The ``/api/tasks`` parameters as a checked ``TaskQuery`` (BadInput names the one
    that is wrong)."""
    params = request.query_params
    unknown = set(params) - {p.name for p in _TASK_FILTERS}
    if unknown:
        raise BadInput(sorted(unknown)[0], "unknown parameter")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadInput("order", "must be asc or desc")
    values: dict[str, Any] = {name: params.get(name) or None
                              for name in ("id", "name", "state", "queue", "worker", "text")}
    if values["state"] is not None and values["state"] not in STATES:
        raise BadInput("state", f"must be one of {', '.join(STATES)}")
    sort = params.get("sort", "updated_at")
    if sort not in SORTS:
        raise BadInput("sort", f"must be one of {', '.join(SORTS)}")
    since, until = _float(params.get("since"), "since"), _float(params.get("until"), "until")
    offset, limit = _int(params.get("offset"), "offset", 0), _int(params.get("limit"),
                                                                  "limit", 50)
    try:
        return TaskQuery(**values, since=since, until=until, sort=sort,
                         descending=order == "desc", offset=offset, limit=limit)
    except ValueError as exc:  # TaskQuery's own checks: "limit must be ..."
        name, _, rest = str(exc).partition(" ")
        if name in ("limit", "offset", "since", "until"):
            raise BadInput(name, rest) from None
        raise BadInput("query", str(exc)) from None


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadInput(name, f"must be an integer, not {value!r}") from None


def _float(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadInput(name, f"must be a Unix time, not {value!r}") from None
    if not math.isfinite(number):
        raise BadInput(name, f"must be a Unix time, not {value!r}")
    return number


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries (none: empty); a form's fields as strings."""
    raw = await request.body()
    if len(raw) > BODY_MAX:
        raise BadInput("body", f"larger than {BODY_MAX} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return _form_values({key: value for key, value in form.items()
                             if isinstance(value, str) and key != "csrf_token"})
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadInput("body", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("body", "must be a JSON object")
    return body


def _form_values(form: dict[str, str]) -> dict[str, Any]:
    """A page's form, posted without a script: numbers, flags and JSON fields read."""
    values: dict[str, Any] = {}
    for key, value in form.items():
        if key in ("n",) and value.strip().lstrip("-").isdigit():
            values[key] = int(value)
        elif key in ("terminate", "all"):
            values[key] = value.lower() in ("true", "1", "on", "yes")
        elif key in ("args", "kwargs", "options", "ids"):
            try:
                values[key] = json.loads(value) if value.strip() else None
            except ValueError:
                raise BadInput(key, "must be JSON") from None
        else:
            values[key] = value
    return values


def _object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise BadInput(name, "must be a JSON object")
    return value
