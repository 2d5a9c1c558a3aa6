"""Finding the App a command line names: ``-A proj``, ``-A proj.tasks`` or ``-A proj:app``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from celeriac.app import App
from celeriac.errors import ConfigurationError


def load_app(spec: str) -> App:
    """Import ``module[:attribute]``, return its App, with its task modules imported.

    Without an attribute: the module's ``app``, else its only App instance, else the
    App of its ``celery`` submodule (``-A proj`` finds ``proj/celery.py``, as in Celery).
    The current directory is importable, as it is for ``python -m``. Then the app's
    ``imports``, ``include`` and autodiscovered modules are imported (Django set up
    first when ``DJANGO_SETTINGS_MODULE`` is set), so that the worker knows its tasks.
    """
    app = _find_app(spec)
    setup_django()
    app.import_task_modules()
    return app


def _find_app(spec: str) -> App:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = spec.partition(":")
    module = _import(module_name)
    if attribute:
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise ConfigurationError(f"{spec!r} is not a celeriac App")
        return app
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    apps = _apps_in(module)
    if not apps and _has_submodule(module, "celery"):
        apps = _apps_in(_import(f"{module_name}.celery"))
    if len(apps) != 1:
        raise ConfigurationError(
            f"module {module_name!r} has {len(apps)} App instances; name one as "
            f"{module_name}:<attribute>")
    return apps[0]


def _import(module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from exc


def _has_submodule(module: ModuleType, name: str) -> bool:
    if not hasattr(module, "__path__"):  # a plain module, not a package
        return False
    return importlib.util.find_spec(f"{module.__name__}.{name}") is not None


def _apps_in(module: ModuleType) -> list[App]:
    found: dict[int, App] = {}
    for value in vars(module).values():
        if isinstance(value, App):
            found[id(value)] = value  # the same App under two names is one App
    return list(found.values())


def setup_django() -> None:
    """``django.setup()`` when this is a Django project, before any task module is
    imported (tasks use the ORM), as Celery's Django fixup does in its workers."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return
    try:
        import django
    except ImportError:
        return
    django.setup()
