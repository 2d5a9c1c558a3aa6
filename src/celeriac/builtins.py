"""Built-in tasks: ``celeriac.map`` and ``celeriac.starmap``, behind ``task.map()``,
``task.starmap()`` and ``task.chunks()``.

Each runs another task's function once per item, in the worker that took the message,
and returns the list of results: one message for many small calls. They are registered
on an app the first time their name is looked up (``App.get_task``), so every worker
of every app can run them and nobody has to declare them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celeriac.canvas import MAP, STARMAP

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.task import Task


def _call(target: Task[..., Any], args: Iterable[Any]) -> Any:
    """One call of ``target``; for a ``validate=True`` task its arguments are checked
    and converted as for a message of its own (the map's message is as untrusted), and
    its result kept in its JSON form, as it would be stored."""
    validator = target.validator
    positional: tuple[Any, ...] = tuple(args)
    named: dict[str, Any] = {}
    if validator is not None:
        positional, named = validator.arguments(positional, {})
    value = target(*positional, **named)
    if inspect.iscoroutine(value):  # an async task: run it to completion here
        value = asyncio.run(value)
    return value if validator is None else validator.result_to_store(value)


def _map(self: Task[..., Any], task: str, it: list[Any]) -> list[Any]:
    target = self.app.get_task(task)
    return [_call(target, (item,)) for item in it]


def _starmap(self: Task[..., Any], task: str, it: list[list[Any]]) -> list[Any]:
    target = self.app.get_task(task)
    return [_call(target, item) for item in it]


BUILTINS: dict[str, Callable[..., Any]] = {MAP: _map, STARMAP: _starmap}


def builtin_task(app: App, name: str) -> Task[..., Any] | None:
    """The built-in task ``name``, registered on ``app`` now; None if there is none."""
    function = BUILTINS.get(name)
    if function is None:
        return None
    registered: Task[..., Any] = app.task(bind=True, name=name)(function)
    return registered
