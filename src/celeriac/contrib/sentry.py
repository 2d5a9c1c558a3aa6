"""Task failures to Sentry, with the task's name, id and arguments on the event.

``celeriac.contrib.sentry.install()`` after ``sentry_sdk.init(...)`` in the worker's app
module: every task that fails for good (not a retry) is captured with its exception and
stack, tagged ``celeriac.task`` and ``celeriac.task_id``, its arguments as context. Built
on the ``task_failure`` signal, so nothing else in the worker changes; needs
``sentry-sdk`` (``pip install 'celeriac[sentry]'``).
"""

from __future__ import annotations

from typing import Any

import sentry_sdk

from celeriac import signals

_installed = False


def install() -> None:
    """Capture every task failure (idempotent)."""
    global _installed  # one receiver per process, however often install() is called
    if not _installed:
        signals.task_failure.connect(_capture)
        _installed = True


def uninstall() -> None:
    global _installed
    signals.task_failure.disconnect(_capture)
    _installed = False


def _capture(sender: Any = None, task_id: str | None = None,
             exception: BaseException | None = None, args: Any = None, kwargs: Any = None,
             **_: Any) -> None:
    if exception is None:
        return
    name = getattr(sender, "name", str(sender))
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("celeriac.task", name)
        scope.set_tag("celeriac.task_id", task_id or "")
        scope.set_context("celeriac", {"task": name, "id": task_id, "args": args,
                                       "kwargs": kwargs})
        sentry_sdk.capture_exception(exception)
