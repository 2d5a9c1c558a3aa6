"""Checking each setting's value as it is set: one check per setting that needs one.

``CHECKS`` maps a setting name to a function ``(name, value) -> value`` that raises
``ConfigurationError`` with a one-line reason, or returns the value normalised (a
``timedelta`` as seconds, a list as a tuple). ``Settings`` (celeriac.config) applies
them; they live here because they are a concept of their own and many, and
``Settings`` is easier to read without them. A new setting with a check adds its
function and its row here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from celeriac.errors import ConfigurationError
from celeriac.limits import check_time_limit
from celeriac.security import keys

SERIALIZERS = ("json", "msgpack", "pickle")
COMPRESSIONS = ("gzip", "zlib", "zstd")
POOLS = ("prefork", "threads", "async", "solo")


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _expiry(name: str, value: Any) -> float | None:
    """Seconds to keep results; None or 0 mean forever, as in Celery."""
    seconds = _seconds(name, value)
    return seconds if seconds else None


def _time_limit(name: str, value: Any) -> float | None:
    try:
        return check_time_limit(name, value)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _positive_int(name: str, value: Any) -> int | None:
    if value is None and name not in _REQUIRED:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")
    return value


def _port(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigurationError(f"{name} must be a TCP port (1-65535), not {value!r}")
    return value


def _module_names(name: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(
            isinstance(item, str) and item for item in items):
        raise ConfigurationError(f"{name} must be a list of module names, not {value!r}")
    return tuple(items)


def _log_format(name: str, value: Any) -> str:
    """A logging format string, tried on a record now rather than on the first log line;
    for worker_log_format, also the special value "json"."""
    import logging

    text = _nonempty_str(name, value)
    if name == "worker_log_format" and text == "json":  # one JSON object per line (logs.py)
        return text
    record = logging.LogRecord("celeriac", logging.INFO, __file__, 0, "checking", None, None)
    record.processName = "MainProcess"
    record.task_id = record.task_name = "???"  # worker_task_log_format may name them
    try:
        logging.Formatter(text).format(record)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"{name} is not a usable logging format: {exc!r}") from None
    return text


def _pool_limit(name: str, value: Any) -> int | None:
    """Celery's broker_pool_limit: None or 0 mean no limit."""
    if value is None or value == 0:
        return None
    return _positive_int(name, value)


def _heartbeat(name: str, value: Any) -> float | None:
    """Celery's broker_heartbeat: seconds; None or 0 leave the broker's own default."""
    seconds = _seconds(name, value)
    return seconds if seconds else None


def _timezone(name: str, value: Any) -> str | None:
    from celeriac.timezones import zone

    if value is None:
        return None
    text = _nonempty_str(name, str(value) if hasattr(value, "key") else value)
    try:
        zone(text)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    return text


def _optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else _bool(name, value)


def _optional_serializer_list(name: str, value: Any) -> tuple[str, ...] | None:
    return None if value is None else _serializer_list(name, value)


def _retries(name: str, value: Any) -> int | None:
    """A number of attempts; None or 0 mean no limit, as in Celery."""
    if value is None or value == 0:
        return None
    return _positive_int(name, value)


# Celery's signing serializer, named where a serializer is expected: how to move.
AUTH_SERIALIZER = (
    "'auth' is Celery's signing serializer (X.509 keys and certificates); celeriac signs "
    "every message whatever its serializer: keep json and set task_signing_keys with "
    "task_signing_key_id (HMAC) or task_signing_private_key / task_signing_public_keys "
    "(Ed25519), see docs/security.md, Moving from Celery's auth serializer")


def _one_of(choices: tuple[str, ...], optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if value == "auth" and choices == SERIALIZERS:
            raise ConfigurationError(f"{name}: {AUTH_SERIALIZER}")
        if value not in choices:
            raise ConfigurationError(
                f"{name} must be one of {', '.join(choices)}, not {value!r}"
                f"{suggest(str(value), list(choices))}"
            )
        return value

    return check


def _serializer_list(name: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        _one_of(SERIALIZERS)(name, item.split("/")[-1].removeprefix("x-"))
    return tuple(item.split("/")[-1].removeprefix("x-") for item in items)


def _priority(name: str, value: Any) -> int:
    from celeriac.priorities import priority_level

    try:
        return priority_level(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def _max_priority(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ConfigurationError(f"{name} must be a whole number from 1 to 255, "
                                 f"not {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be true or false, not {value!r}")
    return value


def _nonempty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    return None if value is None else _nonempty_str(name, value)


def as_mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping, not {value!r}")
    return dict(value)


# The checks of routing, annotations and rate limits live beside those features, whose
# modules import this one: they are imported when first used.

def _tls(name: str, value: Any) -> Any:
    from celeriac.tls import normalize

    normalize(value, name)  # an unknown option or a bad ssl_cert_reqs is an error now
    return value


def _routes(name: str, value: Any) -> Any:
    from celeriac.routing import check_routes

    return check_routes(value)


def _queues(name: str, value: Any) -> Any:
    from celeriac.routing import declared_queues

    return declared_queues(value)


def _annotations(name: str, value: Any) -> Any:
    from celeriac.annotations import check_annotations

    return check_annotations(value)


def _queue_alerts(name: str, value: Any) -> Any:
    from celeriac.monitor.rules import check_queue_alerts

    return check_queue_alerts(name, value)


def _webhooks(name: str, value: Any) -> Any:
    from celeriac.monitor.rules import check_webhooks

    return check_webhooks(name, value)


def _interval(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if not seconds:
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return seconds


def _autoscale(name: str, value: Any) -> tuple[int, int] | None:
    from celeriac.worker.autoscale import check_bounds, parse_autoscale

    if value is None:
        return None
    try:
        if isinstance(value, str):
            return parse_autoscale(value)
        if isinstance(value, list | tuple):
            return check_bounds(tuple(value))
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    raise ConfigurationError(f"{name} must be (max, min) or 'MAX,MIN', not {value!r}")


def _keepalive(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if seconds is None:
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, not None")
    return seconds


def _beat_schedule(name: str, value: Any) -> Any:
    from celeriac.beat.entry import check_beat_schedule

    return check_beat_schedule(value)


def _rate_limit(name: str, value: Any) -> Any:
    from celeriac.ratelimit import parse_rate

    try:
        parse_rate(value)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    return value


# These may not be None (the others may: None means unset, or use the default).
_REQUIRED = {"worker_prefetch_multiplier", "task_delivery_limit", "task_message_max_size",
             "dashboard_history_max_tasks"}

CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "broker_url": _optional_str,
    "result_backend": _optional_str,
    "broker_transport_options": as_mapping,
    "broker_connection_timeout": _seconds,
    "broker_connection_retry_on_startup": _bool,
    "broker_pool_limit": _pool_limit,
    "broker_heartbeat": _heartbeat,
    "broker_use_ssl": _tls,
    "redis_backend_use_ssl": _tls,
    "result_backend_transport_options": as_mapping,
    "timezone": _timezone,
    "enable_utc": _bool,
    "task_reject_on_worker_lost": _optional_bool,
    "result_accept_content": _optional_serializer_list,
    "imports": _module_names,
    "include": _module_names,
    "broker_connection_max_retries": _retries,
    "task_serializer": _one_of(SERIALIZERS),
    "result_serializer": _one_of(SERIALIZERS),
    "accept_content": _serializer_list,
    "task_compression": _one_of(COMPRESSIONS, optional=True),
    "task_message_max_size": _positive_int,
    "result_expires": _expiry,
    "task_default_queue": _nonempty_str,
    "task_default_priority": _priority,
    "task_queue_max_priority": _max_priority,
    "task_acks_late": _bool,
    "task_always_eager": _bool,
    "task_eager_propagates": _bool,
    "task_ignore_result": _bool,
    "task_track_started": _bool,
    "task_track_sent": _bool,
    "task_send_sent_event": _bool,
    "worker_send_task_events": _bool,
    "task_routes": _routes,
    "task_queues": _queues,
    "task_create_missing_queues": _bool,
    "task_annotations": _annotations,
    "task_default_rate_limit": _rate_limit,
    "task_delivery_limit": _positive_int,
    "task_default_retry_delay": _seconds,
    "task_time_limit": _time_limit,
    "task_soft_time_limit": _time_limit,
    "worker_concurrency": _positive_int,
    "worker_pool": _one_of(POOLS),
    "worker_prefetch_multiplier": _positive_int,
    "worker_max_tasks_per_child": _positive_int,
    "worker_max_memory_per_child": _positive_int,
    "worker_shutdown_timeout": _seconds,
    "worker_watchdog_timeout": _seconds,
    "worker_disable_rate_limits": _bool,
    "worker_enable_remote_control": _bool,
    "worker_hijack_root_logger": _bool,
    "worker_log_format": _log_format,
    "worker_task_log_format": _log_format,
    "queue_alerts": _queue_alerts,
    "queue_alerts_interval": _interval,
    "alert_webhooks": _webhooks,
    "worker_autoscale": _autoscale,
    "worker_autoscale_keepalive": _keepalive,
    "worker_metrics_port": _port,
    "worker_metrics_host": _nonempty_str,
    "beat_schedule": _beat_schedule,
    "beat_max_loop_interval": _seconds,
    "dashboard_history_url": _optional_str,
    "dashboard_history_max_tasks": _positive_int,
    "dashboard_history_ttl": _interval,
    "task_signing_keys": keys.check_secrets,
    "task_signing_key_id": keys.optional_key_id,
    "task_signing_public_keys": keys.check_public_keys,
    "task_signing_private_key": keys.check_private_key,
    "task_signing_max_age": _interval,
    "task_encryption_keys": keys.check_encryption_keys,
    "task_encryption_key_id": keys.optional_key_id,
    "task_encryption": _bool,
    "result_encryption": _bool,
}
