"""``shared_task``: tasks declared without an app, registered on every app.

Reusable code (a Django app, a library) cannot import the project's App, so Celery
offers ``@shared_task``, and projects moving over use it everywhere. Here a shared task
is registered on every ``App`` that exists when it is declared and on every one created
later; the object the decorator returns sends through the *current* app, the one created
last that is still alive, which in a Django project is the one ``proj/celery.py`` made.

This is the one place celeriac keeps process-wide state, because the feature is exactly
that; everything else takes its app explicitly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from celeriac.errors import ConfigurationError
from celeriac.task import Task

if TYPE_CHECKING:
    from celeriac.app import App

P = ParamSpec("P")
R = TypeVar("R")

_apps: list[weakref.ref[App]] = []  # every App created, oldest first
_declared: list[SharedTask[Any, Any]] = []  # every shared task, in declaration order


class SharedTask(Task[P, R]):
    """A task of whichever app is current; everything else as ``Task``."""

    def __init__(self, fn: Callable[..., Any], name: str | None, bind: bool,
                 options: dict[str, Any], base: Any = None) -> None:
        from celeriac.task_checks import checked_task_options, task_class

        self._base = task_class(base)  # the class of the task each app registers

        # Task.__init__ sets .app, which the property below ignores.
        super().__init__(cast("App", None), fn, name or _default_name(fn), bind,
                         checked_task_options(options))

    @property
    def app(self) -> App:
        return current_app()

    @app.setter
    def app(self, value: App) -> None:
        del value  # Task.__init__ sets it; the current app is looked up instead

    def register_on(self, app: App) -> None:
        app.register_task(self.fn, self.name, self.bind, self._options, self._base)


@overload
def shared_task(fn: Callable[P, R], /) -> SharedTask[P, R]: ...


@overload
def shared_task(*, bind: bool = False, name: str | None = None, base: Any = None,
                **options: Any) -> Callable[[Callable[P, R]], SharedTask[P, R]]: ...


def shared_task(fn: Callable[..., Any] | None = None, /, *, bind: bool = False,
                name: str | None = None, base: Any = None, **options: Any) -> Any:
    """``@shared_task`` or ``@shared_task(**options)``: as ``@app.task``, for every app."""

    def declare(function: Callable[..., Any]) -> SharedTask[Any, Any]:
        task: SharedTask[Any, Any] = SharedTask(function, name, bind, options, base)
        _declared.append(task)
        for app in live_apps():
            task.register_on(app)
        return task

    return declare if fn is None else declare(fn)


def app_created(app: App) -> None:
    """Called by every new App: it gets every shared task declared so far."""
    _apps.append(weakref.ref(app))
    for task in _declared:
        task.register_on(app)


def live_apps() -> list[App]:
    apps = [app for ref in _apps if (app := ref()) is not None]
    _apps[:] = [weakref.ref(app) for app in apps]
    return apps


def current_app() -> App:
    """The App created last that is still alive."""
    apps = live_apps()
    if not apps:
        raise ConfigurationError("a shared task was used before any App was created: "
                                 "create your App (proj/celery.py) before sending tasks")
    return apps[-1]


def _default_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', None) or '__main__'}.{fn.__qualname__}"
