"""Checking the options of ``@app.task(...)``: an unknown or wrong one fails at once.

Used by ``App.task``, ``shared_task`` (celeriac.shared) and ``task_annotations``
(celeriac.annotations), so that a task's options are checked the same way wherever
they come from, when the task is declared rather than when it first runs.
"""

from __future__ import annotations

from typing import Any

from celeriac.config import suggest
from celeriac.limits import check_time_limit
from celeriac.priorities import priority_level
from celeriac.task import TASK_OPTION_NAMES, TaskOptions, check_task_options
from celeriac.task import Task as TaskBase
from celeriac.uniqueness.keys import check_unique_for
from celeriac.validation import require_pydantic


def task_class(base: Any) -> type[TaskBase[Any, Any]]:
    if base is None:
        return TaskBase
    if not (isinstance(base, type) and issubclass(base, TaskBase)):
        raise TypeError(f"base must be a subclass of celeriac.Task (app.Task), "
                        f"not {base!r}")
    return base


def checked_task_options(options: dict[str, Any]) -> TaskOptions:
    """The decorator's options, checked: an unknown name is a TypeError at once."""
    unknown = set(options) - TASK_OPTION_NAMES
    if "pydantic" in unknown:  # Celery 5.5's option: the caller would get dicts back there
        raise TypeError("unknown task option 'pydantic': celeriac's validate=True checks "
                        "the arguments by their type hints (at send, and again on the "
                        "worker) and gives model results back as models "
                        "(docs/security.md, Validated task input)")
    if unknown:
        bad = sorted(unknown)[0]
        raise TypeError(f"unknown task option {bad!r}{suggest(bad, TASK_OPTION_NAMES)}")
    return TaskOptions(**normalise_task_options(options))


def normalise_task_options(options: dict[str, Any]) -> dict[str, Any]:
    for name in ("autoretry_for", "dont_autoretry_for"):
        if name in options:
            options[name] = tuple(options[name])
    if options.get("priority") is not None:
        priority_level(options["priority"])
    check_task_options(options)  # rate_limit, retry_kwargs
    for limit in ("time_limit", "soft_time_limit"):
        if limit in options:
            options[limit] = check_time_limit(limit, options[limit])
    hide = options.get("dashboard_hide_args", False)
    if type(hide) is not bool:
        raise TypeError(f"dashboard_hide_args must be True or False, not {hide!r}")
    if options.get("unique_for") is not None:
        options["unique_for"] = check_unique_for(options["unique_for"])
    if "validate" in options:
        if type(options["validate"]) is not bool:
            raise TypeError(f"validate must be True or False, not {options['validate']!r}")
        if options["validate"]:
            require_pydantic()  # now, not at the first send
    return options
