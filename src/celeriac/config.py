"""Settings: Celery's names and meanings, validated when they are set.

``Settings`` is one explicit object per app. Unknown names are rejected with the
closest known name suggested, so a typo never silently falls back to a default.
Values come from keyword arguments, ``config_from_object`` and ``CELERIAC_*``
environment variables (``CELERIAC_TASK_SERIALIZER=msgpack``).

Every Celery setting name is answered (``celery_settings``, docs/celery-settings.md):
taken as is, mapped to celeriac's equivalent, or refused with the reason and what to
use instead; Celery's old uppercase names are read with a deprecation warning, Django's
``CELERY_`` namespace with ``config_from_object(obj, namespace="CELERY")``, and the
``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` variables as Celery reads them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, ClassVar

from celeriac.celery_settings import CELERY_SETTINGS, OLD_TO_NEW, Answer, refusal
from celeriac.errors import ConfigurationError
from celeriac.limits import check_time_limit
from celeriac.logs import FORMAT as LOG_FORMAT
from celeriac.logs import TASK_FORMAT as TASK_LOG_FORMAT
from celeriac.urls import safe_url

DEFAULT_URL = "sqlite:///celeriac.db"

SERIALIZERS = ("json", "msgpack", "pickle")
COMPRESSIONS = ("gzip", "zlib", "zstd")
POOLS = ("prefork", "threads", "async", "solo")

# CELERIAC_* variables that are not settings: the CLI's -A default.
NON_SETTING_VARIABLES = frozenset({"CELERIAC_APP"})


@dataclasses.dataclass
class Settings(Mapping[str, Any]):
    """Every setting celeriac knows, with its default. Celery's names where they mean the same."""

    # Where messages and results live. None means the embedded SQLite file.
    broker_url: str | None = None
    result_backend: str | None = None
    broker_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    broker_connection_timeout: float = 4.0
    broker_connection_retry_on_startup: bool = True
    broker_pool_limit: int | None = None  # connections a process keeps; None: the broker's
    broker_heartbeat: float | None = None  # seconds (RabbitMQ); None: the broker's (10)
    # TLS options in Celery's shapes (celeriac.tls); the URL's scheme must say TLS too.
    broker_use_ssl: bool | dict[str, Any] | None = None
    redis_backend_use_ssl: bool | dict[str, Any] | None = None

    # Time: what a naive datetime means (see timezones.py), and periodic tasks' zone.
    timezone: str | None = None
    enable_utc: bool = True
    broker_connection_max_retries: int | None = 100  # at worker start; None: forever

    # Task modules a worker imports after the app's own (Celery's imports and include).
    imports: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    # Messages.
    task_serializer: str = "json"
    result_serializer: str = "json"
    accept_content: tuple[str, ...] = ("json", "msgpack")
    result_accept_content: tuple[str, ...] | None = None  # None: accept_content
    task_compression: str | None = None
    task_message_max_size: int = 10 * 1024 * 1024

    # Results.
    result_expires: float | None = 86400.0
    task_ignore_result: bool = False
    task_track_started: bool = False
    task_track_sent: bool = False  # store SENT when sending (see docs/states.md)
    task_send_sent_event: bool = False  # producers emit task-sent (celeriac.events)

    # Task defaults.
    task_default_queue: str = "celeriac"
    task_default_priority: int = 0
    task_reject_on_worker_lost: bool | None = None  # False: delivery limit 1 (see below)
    task_queue_max_priority: int | None = None  # the highest level kept; None: 9
    task_routes: Any = None
    task_queues: Any = None  # read back as a tuple of routing.Queue
    task_create_missing_queues: bool = True
    task_annotations: Any = None
    task_default_rate_limit: str | None = None
    task_acks_late: bool = True
    task_always_eager: bool = False
    task_eager_propagates: bool = False
    task_delivery_limit: int = 5
    task_default_retry_delay: float = 180.0
    task_time_limit: float | None = None  # hard, seconds; None: no limit
    task_soft_time_limit: float | None = None

    # Worker.
    worker_concurrency: int | None = None
    worker_pool: str = "prefork"
    worker_prefetch_multiplier: int = 4
    worker_send_task_events: bool = True  # task events (celeriac.events); -E/--without-events
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None  # KiB, as in Celery
    worker_shutdown_timeout: float = 30.0
    worker_watchdog_timeout: float = 60.0
    worker_disable_rate_limits: bool = False
    worker_enable_remote_control: bool = True  # answer inspect/control (celeriac.control)
    worker_hijack_root_logger: bool = True
    worker_log_format: str = LOG_FORMAT
    worker_task_log_format: str = TASK_LOG_FORMAT
    worker_autoscale: tuple[int, int] | None = None  # (max, min), as --autoscale=MAX,MIN
    worker_autoscale_keepalive: float = 30.0  # idle seconds before a slot is given back
    # /metrics, /healthz, /readyz on this port (None: off); all interfaces by default,
    # since Prometheus and Kubernetes probes reach a worker on its pod or host address.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "0.0.0.0"

    # Queue alerts (celeriac.monitor.rules): thresholds per queue or "*", how often
    # `celeriac monitor` checks them, and where alerts are POSTed.
    queue_alerts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    queue_alerts_interval: float = 10.0
    alert_webhooks: tuple[str, ...] = ()

    # Periodic tasks (celeriac.beat, docs/periodic-tasks.md).
    beat_schedule: dict[str, Any] = dataclasses.field(default_factory=dict)
    beat_max_loop_interval: float = 0.0  # seconds; 0: beat's own (0.25)

    def update(self, values: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Set several settings at once; every name and value is checked first.

        Celery's names are taken too (docs/celery-settings.md): its old uppercase ones
        with a deprecation warning, mapped ones translated, refused ones an error.
        """
        merged: dict[str, Any] = {}
        transport: dict[str, Any] = {}  # transport options that Celery settings map to
        for name, value in {**(values or {}), **kwargs}.items():
            name = _from_celery(name)
            if name in _TRANSPORT_MAPPINGS:
                transport[_TRANSPORT_MAPPINGS[name]] = value
            else:
                merged[_RENAMES.get(name, name)] = value
        if transport:  # merged into the options set so far; an explicit option wins
            explicit = merged.get("broker_transport_options", self.broker_transport_options)
            merged["broker_transport_options"] = {
                **transport, **_mapping("broker_transport_options", explicit)}
        checked = {name: _validate(name, value) for name, value in merged.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _validate(name, value))

    # As a mapping, like Celery's app.conf: conf["broker_url"], conf.get(), conf.keys().
    def __getitem__(self, name: str) -> Any:
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)

    def table(self, with_defaults: bool = False) -> dict[str, Any]:
        """The settings changed from their defaults (or all), secrets masked: for display."""
        defaults = Settings()
        return {name: _displayable(name, getattr(self, name)) for name in _FIELDS
                if with_defaults or getattr(self, name) != getattr(defaults, name)}

    def humanize(self, with_defaults: bool = False) -> str:
        """``table()`` as ``name: value`` lines, as Celery's ``conf.humanize()``."""
        return "\n".join(f"{name}: {value!r}"
                         for name, value in self.table(with_defaults).items())

    def copy(self) -> Settings:
        return dataclasses.replace(self)

    @property
    def delivery_limit(self) -> int:
        """Deliveries a message may have: ``task_delivery_limit``, or 1 with Celery's
        ``task_reject_on_worker_lost=False`` (a task whose worker died is not run again:
        it goes to the dead letters, where Celery would store it as failed)."""
        if self.task_reject_on_worker_lost is False:
            return 1
        return self.task_delivery_limit

    @property
    def effective_result_accept_content(self) -> tuple[str, ...]:
        return self.result_accept_content or self.accept_content

    @property
    def effective_broker_url(self) -> str:
        """The broker URL: ``CELERY_BROKER_URL`` from the environment wins, as in Celery."""
        return self._celery_environ.get("broker_url") or self.broker_url or DEFAULT_URL

    @property
    def effective_result_backend(self) -> str:
        """The backend URL: named, or the broker's own when that scheme has a backend."""
        return (self._celery_environ.get("result_backend") or self.result_backend
                or self.effective_broker_url)

    # Celery's two environment variables, read by load_environment; not settings.
    _celery_environ: ClassVar[dict[str, str]] = {}

    def load_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Apply ``CELERIAC_<SETTING>`` variables; values are JSON where they parse as it."""
        import orjson

        environ = os.environ if environ is None else environ
        # Celery reads these two and lets them win over the configuration: a deployment
        # that sets CELERY_BROKER_URL must not quietly run on ./celeriac.db instead.
        # celeriac's own variable for the same setting wins over Celery's.
        celery_environ = {name: environ[variable] for variable, name in CELERY_ENVIRON.items()
                          if environ.get(variable)
                          and not environ.get(f"CELERIAC_{name.upper()}")}
        object.__setattr__(self, "_celery_environ", celery_environ)  # not a setting
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith("CELERIAC_") or key in NON_SETTING_VARIABLES:
                continue
            name = key.removeprefix("CELERIAC_").lower()
            if name not in _FIELDS:  # a typo here must not silently fall back to a default
                raise ConfigurationError(
                    f"environment variable {key} names no setting{suggest(name, _FIELDS)}")
            try:
                values[name] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                values[name] = raw
        self.update(values)

    def load_object(self, obj: object | str, namespace: str | None = None) -> None:
        """Apply the settings of a module or object (Celery's ``config_from_object``).

        ``obj`` may be ``"module"`` or ``"module:attribute"`` (``"django.conf:settings"``).
        Without a namespace: lowercase attributes, and Celery's old uppercase names;
        other uppercase attributes are not settings (a Django settings module is full of
        them), except ones that look like Celery's and are misspelt, which are errors.
        With ``namespace="CELERY"``: exactly the attributes named ``CELERY_<setting>``.
        """
        if isinstance(obj, str):
            module_name, _, attribute = obj.partition(":")
            obj = importlib.import_module(module_name)
            if attribute:
                obj = getattr(obj, attribute)
        values: dict[str, Any] = {}
        for name in dir(obj):
            if name.startswith("_"):
                continue
            setting = _setting_name(name, namespace)
            if setting is None:
                continue
            value = getattr(obj, name)
            if callable(value) or _is_module(value):
                continue
            values[setting] = value
        self.update(values)


_SECRET_WORDS = ("password", "secret", "token", "key")


def _displayable(name: str, value: Any) -> Any:
    """A setting's value with passwords masked, in URLs and in option mappings."""
    if name == "alert_webhooks":  # a chat webhook's secret is its path: host only
        from celeriac.monitor.webhooks import shown

        return tuple(shown(url) for url in value)
    if isinstance(value, str) and "://" in value:
        return safe_url(value)
    if isinstance(value, Mapping):
        return {key: "***" if any(word in str(key).lower() for word in _SECRET_WORDS)
                else _displayable(str(key), item) for key, item in value.items()}
    return value


def _is_module(value: object) -> bool:
    return type(value).__name__ == "module"


# The environment variables Celery itself reads -> the setting they give.
CELERY_ENVIRON = {"CELERY_BROKER_URL": "broker_url", "CELERY_RESULT_BACKEND": "result_backend"}
_CELERY_LOOKALIKE = ("CELERY", "BROKER_")  # uppercase names that must be Celery's


def _setting_name(attribute: str, namespace: str | None) -> str | None:
    """The setting an attribute of a config object names, or None if it names none."""
    if namespace is not None:
        prefix = f"{namespace}_"
        if not attribute.startswith(prefix):
            return None
        stripped = attribute.removeprefix(prefix).lower()
        if stripped in _FIELDS or stripped in CELERY_SETTINGS:
            return stripped
        if attribute in OLD_TO_NEW:  # CELERY_ACKS_LATE: an old name that has the prefix
            return attribute
        return stripped  # unknown: update() says so, with a suggestion
    if attribute.islower():
        return attribute
    if attribute in OLD_TO_NEW or attribute.startswith(_CELERY_LOOKALIKE):
        return attribute
    return None


def _from_celery(name: str) -> str:
    """The setting a name means: celeriac's own, or Celery's (old names translated).

    Raises ``ConfigurationError`` for a name Celery has and celeriac refuses (saying why
    and what to use instead) and for a name neither knows.
    """
    if name not in _FIELDS and not name.islower():
        new = OLD_TO_NEW.get(name)
        if new is None:
            raise ConfigurationError(f'unknown setting "{name}"{suggest(name, OLD_TO_NEW)}')
        warnings.warn(f'the setting name "{name}" is Celery\'s old name for "{new}"; '
                      f'use "{new}"', FutureWarning, stacklevel=4)
        name = new
    if name in _FIELDS:
        return name
    celery = CELERY_SETTINGS.get(name)
    if celery is None:
        raise ConfigurationError(f'unknown setting "{name}"{suggest(name, _FIELDS)}')
    if celery.answer is Answer.MAPPED:
        return name
    raise ConfigurationError(refusal(name) or name)


# Celery settings celeriac takes under another name (MAPPED in celery_settings.py).
_RENAMES = {"worker_soft_shutdown_timeout": "worker_shutdown_timeout"}
_TRANSPORT_MAPPINGS = {"task_default_queue_type": "default_queue_type"}


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest known name, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _validate(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise ConfigurationError(f'unknown setting "{name}"{suggest(name, _FIELDS)}')
    check = _CHECKS.get(name)
    return check(name, value) if check else value


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


def _one_of(choices: tuple[str, ...], optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is None and optional:
            return None
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


def _mapping(name: str, value: Any) -> dict[str, Any]:
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


_REQUIRED = {"worker_prefetch_multiplier", "task_delivery_limit", "task_message_max_size"}

_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "broker_url": _optional_str,
    "result_backend": _optional_str,
    "broker_transport_options": _mapping,
    "broker_connection_timeout": _seconds,
    "broker_connection_retry_on_startup": _bool,
    "broker_pool_limit": _pool_limit,
    "broker_heartbeat": _heartbeat,
    "broker_use_ssl": _tls,
    "redis_backend_use_ssl": _tls,
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
}
