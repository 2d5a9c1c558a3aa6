"""The dashboard's HTML pages, rendered on the server from the service's dicts.

Each page shows the same dicts the JSON API returns (``DashboardService``), put through
one jinja2 template that extends ``base.html``. With ``?fragment=1`` a page renders only
its ``content`` block: the page script re-fetches that when the live stream says
something changed, so a live refresh costs one render and no page load.

Nothing here changes state. An action is a form whose ``action`` is the JSON API's
endpoint: the script sends it with ``fetch`` and the CSRF header, and without a script
the browser posts the form itself with its ``csrf_token`` field (and shows the API's
JSON answer). A page whose data source is down says why with a 503 (``guarded``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from celeriac.dashboard import auth, charts
from celeriac.dashboard.history import LIMIT_MAX, SORTS, STATES, TaskQuery
from celeriac.errors import CeleriacError, describe

if TYPE_CHECKING:
    from celeriac.dashboard.service import DashboardService

logger = logging.getLogger("celeriac.dashboard")

TEMPLATES = Path(__file__).parent / "templates"
# What a page cannot help: the history's store, the broker or the backend failing. The
# page says so (503) and the live stream keeps asking; anything else is a bug (500).
UNAVAILABLE = (CeleriacError, OSError)

# The tasks page's "within" choices: label -> seconds back from now.
WINDOWS = {"5m": 300, "1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
PAGE_SIZES = (25, 50, 100, 200)
NONE = "\N{EN DASH}"  # what a table shows for a value there is not


class BadQuery(ValueError):
    """A search parameter the tasks page cannot use (shown on the page, status 400)."""


# -- how values read on a page ------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``4.2s``, ``120ms``: a span at the precision that matters."""
    if seconds is None or not math.isfinite(seconds):
        return NONE
    if seconds < 0:  # (events of two hosts whose clocks disagree)
        return f"-{duration(-seconds)}"
    if seconds == 0:
        return "0s"
    if seconds < 0.0001:
        return "<0.1ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def clock(timestamp: float | None) -> str:
    """A Unix time as ``2026-12-06 07:45:12`` (UTC, as the footer says)."""
    if timestamp is None:
        return NONE
    return datetime.fromtimestamp(float(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(timestamp: float | None, now: float | None = None) -> str:
    """``12s ago`` or ``in 3m 00s``."""
    if timestamp is None:
        return NONE
    delta = (time.time() if now is None else now) - float(timestamp)
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def state_class(state: str | None) -> str:
    return f"state-{(state or 'unknown').lower()}"


def short_id(task_id: str | None) -> str:
    return (task_id or "")[:8]


def load(loadavg: Any) -> str:
    if not loadavg:
        return NONE
    return " ".join(f"{float(value):.2f}" for value in loadavg)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests, not silently
        trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(duration=duration, clock=clock, ago=ago,
                               state_class=state_class, short_id=short_id, load=load)
    environment.globals.update(
        throughput_chart=charts.throughput_chart,
        failure_rate_chart=charts.failure_rate_chart,
        sparkline=charts.sparkline, workflow_graph=charts.workflow_graph,
        STATES=STATES, WINDOWS=WINDOWS, PAGE_SIZES=PAGE_SIZES)
    return environment


# -- the tasks page's query ---------------------------------------------------------------


def _number(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise BadQuery(f"{name} must be between {low} and {high}, not {value}")
    return value


def _instant(params: Mapping[str, str], name: str) -> float | None:
    """A ``datetime-local`` field (``2026-12-06T07:45``), read as UTC."""
    raw = params.get(name) or ""
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise BadQuery(f"{name} must be a date and time like 2026-12-06T07:45, "
                       f"not {raw!r}") from None


def task_query(params: Mapping[str, str], now: float) -> TaskQuery:
    """The tasks page's form fields as the store's query (``BadQuery`` for nonsense)."""
    state = (params.get("state") or "").upper() or None
    if state is not None and state not in STATES:
        raise BadQuery(f"unknown state {state!r}; one of {', '.join(STATES)}")
    sort = params.get("sort") or "updated_at"
    if sort not in SORTS:
        raise BadQuery(f"cannot sort by {sort!r}; one of {', '.join(SORTS)}")
    order = params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise BadQuery(f"order must be asc or desc, not {order!r}")
    within = params.get("within") or ""
    if within and within not in WINDOWS:
        raise BadQuery(f"within must be one of {', '.join(WINDOWS)}, not {within!r}")
    since = _instant(params, "since")
    if within:
        since = max(since or 0.0, now - WINDOWS[within])
    text = {name: (params.get(name) or "").strip() or None
            for name in ("id", "name", "queue", "worker", "text")}
    return TaskQuery(
        id=text["id"], name=text["name"], state=state, queue=text["queue"],
        worker=text["worker"], since=since, until=_instant(params, "until"),
        text=text["text"], sort=sort, descending=order == "desc",
        offset=_number(params, "offset", 0, 0, 10_000_000),
        limit=_number(params, "limit", 50, 1, LIMIT_MAX))


def query_url(path: str, params: Mapping[str, str], **changes: Any) -> str:
    """``path`` with the current query string changed by ``changes`` (None removes a
    field); empty fields and ``fragment`` are dropped so links stay short."""
    merged = {key: value for key, value in params.items() if key != "fragment"}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    query = urlencode({key: value for key, value in merged.items() if value != ""})
    return f"{path}?{query}" if query else path


# -- the routes ---------------------------------------------------------------------------


class Pages:
    """The page handlers, sharing the service and one jinja environment."""

    def __init__(self, service: DashboardService) -> None:
        self.service = service
        self.templates = _environment()

    def render(self, request: Request, name: str, status: int = 200,
               **context: Any) -> Response:
        """The page, or with ``?fragment=1`` only its ``content`` block."""
        template = self.templates.get_template(name)
        context.update(path=request.url.path,
                       params=dict(request.query_params), now=time.time(),
                       csrf_token=auth.csrf_token(request), query_url=query_url)
        if request.query_params.get("fragment") == "1":
            block = template.blocks["content"]
            body = "".join(block(template.new_context(context)))
        else:
            body = template.render(context)
        # Always current: a page is a live view, never one to serve from a cache.
        return HTMLResponse(body, status, headers={"Cache-Control": "no-store"})

    async def overview(self, request: Request) -> Response:
        return self.render(request, "overview.html", overview=await self.service.overview())

    async def workers(self, request: Request) -> Response:
        return self.render(request, "workers.html", workers=await self.service.workers())

    async def queues(self, request: Request) -> Response:
        return self.render(request, "queues.html", queues=await self.service.queues())

    async def tasks(self, request: Request) -> Response:
        params = dict(request.query_params)
        try:
            query = task_query(params, time.time())
        except ValueError as error:  # BadQuery, or TaskQuery's own check
            return self.render(request, "tasks.html", status=400, error=str(error),
                               found=None)
        found = await self.service.tasks(query)
        return self.render(request, "tasks.html", error=None, found=found)

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        task = await self.service.task(task_id)
        if task is None:
            return self.render(request, "missing.html", status=404, task_id=task_id)
        workflow = charts.workflow_graph(task.get("family") or {}, task_id)
        return self.render(request, "task.html", task=task, workflow=workflow)

    async def dead_letters(self, request: Request) -> Response:
        task = request.query_params.get("task") or None
        queue = request.query_params.get("queue") or None
        letters = await self.service.dead_letters(task=task, queue=queue, limit=200)
        return self.render(request, "dead_letters.html", letters=letters, task=task,
                           queue=queue)

    async def scheduled(self, request: Request) -> Response:
        return self.render(request, "scheduled.html", scheduled=await self.service.scheduled())

    def guarded(self, handler: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        """``handler``, answering 503 with the reason when what it reads is down."""
        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except UNAVAILABLE as exc:
                logger.warning("dashboard: cannot show %s: %s", request.url.path,
                               describe(exc))
                return self.render(request, "unavailable.html", status=503,
                                   problem=describe(exc))
        return page


def page_routes(service: DashboardService) -> list[BaseRoute]:
    """The HTML pages, for the app to mount beside the API and the static files."""
    pages = Pages(service)
    return [Route(path, pages.guarded(handler), name=name, methods=["GET"])
            for path, handler, name in (
                ("/", pages.overview, "overview"),
                ("/workers", pages.workers, "workers"),
                ("/queues", pages.queues, "queues"),
                ("/tasks", pages.tasks, "tasks"),
                ("/tasks/{task_id}", pages.task, "task"),
                ("/dead-letters", pages.dead_letters, "dead_letters"),
                ("/scheduled", pages.scheduled, "scheduled"))]
