"""What a naive datetime means: Celery's ``enable_utc`` and ``timezone`` settings.

With ``enable_utc`` (the default, as in Celery) a datetime without a time zone, given as
an ``eta`` or ``expires`` or to ``retry(eta=...)``, is UTC. With ``enable_utc=False`` it
is wall-clock time in ``timezone`` (or this machine's local time when that is unset).
An aware datetime means what it says either way. Periodic tasks read ``timezone`` too.
"""

from __future__ import annotations

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
