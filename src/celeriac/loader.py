"""Finding the App a command line names: ``-A proj``, ``-A proj.tasks`` or ``-A proj:app``."""

from __future__ import annotations

import importlib
import os
import sys

from celeriac.app import App
from celeriac.errors import ConfigurationError


def load_app(spec: str) -> App:
    """Import ``module[:attribute]`` and return its App.

    Without an attribute: the module's ``app``, else its only App instance. The current
    directory is importable, as it is for ``python -m``.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from exc
    if attribute:
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise ConfigurationError(f"{spec!r} is not a celeriac App")
        return app
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) != 1:
        raise ConfigurationError(
            f"module {module_name!r} has {len(apps)} App instances; name one as "
            f"{module_name}:<attribute>")
    return apps[0]
