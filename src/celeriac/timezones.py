"""What a naive datetime means: Celery's ``enable_utc`` and ``timezone`` settings.

With ``enable_utc`` (the default, as in Celery) a datetime without a time zone, given as
an ``eta`` or ``expires`` or to ``retry(eta=...)``, is UTC. With ``enable_utc=False`` it
is wall-clock time in ``timezone`` (or this machine's local time when that is unset).
An aware datetime means what it says either way. Periodic tasks read ``timezone`` too.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a time zone (an IANA name such as "
                         f"'Europe/Paris' or 'UTC'): {exc}") from None


def naive_zone(enable_utc: bool, timezone: str | None) -> tzinfo | None:
    """The zone of a naive datetime; None for this machine's local time."""
    if enable_utc:
        return UTC
    return zone(timezone) if timezone else None


def aware(moment: datetime, naive: tzinfo | None) -> datetime:
    """``moment`` with a time zone: its own, else ``naive`` (None: local time)."""
    if moment.tzinfo is not None:
        return moment
    if naive is None:
        return moment.astimezone()  # a naive datetime's astimezone() reads it as local
    return moment.replace(tzinfo=naive)


def schedule_zone(enable_utc: bool, timezone: str | None) -> tzinfo:
    """The zone periodic tasks' crontab times are in, as in Celery: ``timezone`` if set,
    else UTC with ``enable_utc``, else this machine's zone (``TZ``, /etc/localtime)."""
    if timezone:
        return zone(timezone)
    if enable_utc:
        return UTC
    return _local_zone()


def _local_zone() -> tzinfo:
    """This machine's zone with its daylight-saving rules (not just today's offset)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except OSError:
        local = datetime.now().astimezone().tzinfo  # no rules known: today's offset
        return local if local is not None else UTC
