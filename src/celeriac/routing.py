"""Which queue (and priority) a task goes to: Celery's ``task_routes``.

A route is a mapping from task name or glob (``"proj.email.*"``) to a queue name or to
options (``{"queue": "io", "priority": 5}``), a callable
``(name, args, kwargs, options, task) -> options | queue | None``, or a list of these,
tried in order. The first route that answers wins.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

RouteResult = dict[str, Any]


class Router:
    def __init__(self, routes: Any) -> None:
        if routes is None:
            routes = []
        elif isinstance(routes, Mapping) or callable(routes):
            routes = [routes]
        self._routes: list[Mapping[str, Any] | Callable[..., Any]] = list(routes)

    def route(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              options: Mapping[str, Any], task: Any = None) -> RouteResult:
        for route in self._routes:
            found = (route(name, args, kwargs, options, task) if callable(route)
                     else _match(route, name))
            if found is not None:
                return {"queue": found} if isinstance(found, str) else dict(found)
        return {}


def _match(table: Mapping[str, Any], name: str) -> Any:
    if name in table:
        return table[name]
    for pattern, target in table.items():
        if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(name, pattern):
            return target
    return None
