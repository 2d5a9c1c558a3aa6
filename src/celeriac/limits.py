"""Time limits: what the values mean, how they are checked, and which ones apply to a run.

A task may run under two limits, in seconds from the moment a worker slot starts it:

- ``soft_time_limit``: ``SoftTimeLimitExceeded`` is raised inside the task (an async
  task is cancelled instead), so that it can clean up and fail or return;
- ``time_limit`` (hard): the task is stopped whatever it does, and fails with
  ``TimeLimitExceeded``. A sync task's thread cannot be stopped from outside, so the
  worker process running it is replaced (see ``celeriac.worker.guard``).

Each limit comes from the first of: the call (``apply_async(time_limit=...)``, carried
in the message), the task (``@app.task(time_limit=...)``), the settings
(``task_time_limit``, ``task_soft_time_limit``). ``None`` means no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class TimeLimits:
    """The limits one run of a task is held to; at least one of them is set."""

    soft: float | None
    hard: float | None


def check_time_limit(name: str, value: Any) -> float | None:
    """``value`` as seconds (> 0), or None for no limit; ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0 (or None for no limit), "
                         f"not {value!r}")
    return float(value)


def resolve(call_soft: float | None, call_hard: float | None,
            task_soft: float | None, task_hard: float | None,
            conf_soft: float | None, conf_hard: float | None) -> TimeLimits | None:
    """The limits of one run: per call, else per task, else from the settings."""
    soft = call_soft if call_soft is not None else (
        task_soft if task_soft is not None else conf_soft)
    hard = call_hard if call_hard is not None else (
        task_hard if task_hard is not None else conf_hard)
    if soft is None and hard is None:
        return None
    return TimeLimits(soft, hard)
