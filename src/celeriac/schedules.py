"""Celery's import path for schedules: ``from celeriac.schedules import crontab``."""

from celeriac.beat.schedules import Schedule, crontab, schedule

__all__ = ["Schedule", "crontab", "schedule"]
