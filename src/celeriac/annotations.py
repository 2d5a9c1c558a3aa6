"""``task_annotations``: change task options from the settings, by task name or for all.

The setting is one annotation or a list of them. An annotation is

- a mapping from a task name, or ``"*"`` for every task, to options::

      task_annotations = {"proj.send_email": {"rate_limit": "10/s"},
                          "*": {"acks_late": False}}

- or an object with an ``annotate(task)`` method returning options or None (Celery's
  class-based annotations).

The options are those of ``@app.task`` (``rate_limit``, ``queue``, ``priority``,
``acks_late``, ``max_retries``, ``time_limit`` ...); an unknown name is an error when the
setting is set. They win over what the decorator says, as in Celery. For each task the
first annotation naming it applies, then the first ``"*"`` one for the options the named
one left unset (unlike Celery, where ``"*"`` also overrides the named task's options).
Annotations are resolved when a task is first used after the setting changes; assign
the setting anew rather than changing its mapping in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.config import suggest
from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.task import Task, TaskOptions

ANY = "*"


def check_annotations(value: Any) -> Any:
    """Validate ``task_annotations`` (the setting's check); return it unchanged."""
    for annotation in _items(value):
        if isinstance(annotation, Mapping):
            for name, options in annotation.items():
                _check_options(name, options)
        elif not callable(getattr(annotation, "annotate", None)):
            raise ConfigurationError(
                f"an annotation must be a mapping from task name (or '*') to options, or "
                f"an object with an annotate(task) method, not {annotation!r}")
    return value


def annotate(options: TaskOptions, task: Task[Any, Any], value: Any) -> TaskOptions:
    """``options`` with the annotations of ``task`` applied."""
    from celeriac.task_checks import normalise_task_options

    named: Mapping[str, Any] | None = None
    anything: Mapping[str, Any] | None = None
    for annotation in _items(value):
        if isinstance(annotation, Mapping):
            if named is None:
                named = annotation.get(task.name)
            if anything is None:
                anything = annotation.get(ANY)
        elif named is None:
            named = annotation.annotate(task)
            if named is not None:
                _check_options(task.name, named)
    changes = {**(anything or {}), **(named or {})}
    if not changes:
        return options
    return dataclasses.replace(options, **normalise_task_options(changes))


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str):
        return [value]
    return list(value)


def _check_options(name: Any, options: Any) -> None:
    from celeriac.task import TASK_OPTION_NAMES

    if not isinstance(options, Mapping):
        raise ConfigurationError(f"the annotation of {name!r} must be a mapping of task "
                                 f"options, not {options!r}")
    for option in options:
        if option not in TASK_OPTION_NAMES:
            raise ConfigurationError(
                f"the annotation of {name!r} sets {option!r}, which is not a task option"
                f"{suggest(str(option), TASK_OPTION_NAMES)}")
    from celeriac.task_checks import normalise_task_options

    try:
        normalise_task_options(dict(options))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"the annotation of {name!r}: {exc}") from None
