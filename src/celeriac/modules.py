"""Importing the modules that declare tasks: ``imports``/``include`` and autodiscovery.

A worker only knows the tasks whose modules it imported. Celery projects list them in
``include`` or let ``app.autodiscover_tasks()`` find ``tasks.py`` in each Django app;
both must work unchanged, and a module that is listed but missing must be a clear error,
not a worker that silently knows no tasks.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Sequence

from celeriac.errors import ConfigurationError

logger = logging.getLogger("celeriac.app")


def import_listed(names: Iterable[str], setting: str) -> None:
    """Import each module; one that does not exist is a ConfigurationError naming it."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if name == missing or name.startswith(f"{missing}."):  # it, or its package
                raise ConfigurationError(
                    f"cannot import {name!r}, listed in {setting}: {exc}") from exc
            raise  # a missing import inside it: the user's module has a bug


def discover(packages: Sequence[str] | Callable[[], Sequence[str]] | None,
             related_name: str) -> None:
    """Import ``<package>.<related_name>`` where it exists (not every app has tasks)."""
    if callable(packages):
        packages = packages()
    if packages is None:
        packages = django_installed_apps()
    for package in packages:
        module = f"{package}.{related_name}"
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the package itself is missing
            raise ConfigurationError(f"cannot autodiscover tasks in {package!r}: "
                                     "no such package") from None
        if found:
            importlib.import_module(module)
            logger.debug("autodiscovered %s", module)


def django_installed_apps() -> list[str]:
    """The packages of Django's installed apps, Django set up first (as Celery's fixup)."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError(
            "autodiscover_tasks() without packages reads Django's INSTALLED_APPS, but "
            "DJANGO_SETTINGS_MODULE is not set; name the packages instead")
    try:
        import django
        from django.apps import apps
    except ImportError as exc:
        raise ConfigurationError("autodiscover_tasks() without packages needs Django "
                                 f"installed: {exc}") from exc
    django.setup()
    return [config.name for config in apps.get_app_configs()]
