"""Celery's import path for schedules: ``from celeriac.schedules import crontab``."""

from __future__ import annotations

from typing import Any

from celeriac.beat.schedules import Schedule, crontab, schedule
from celeriac.errors import ConfigurationError

__all__ = ["Schedule", "crontab", "schedule", "solar"]


def solar(*args: Any, **kwargs: Any) -> Schedule:
    """Celery's sunrise/sunset schedule, which celeriac does not have: says so."""
    raise ConfigurationError("celeriac has no solar schedules; use crontab(...) with the "
                             "times you need, or app.beat.add to change them as they move")
