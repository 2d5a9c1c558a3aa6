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
Each value is checked when it is set (celeriac.setting_checks).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from celeriac.celery_settings import CELERY_SETTINGS, OLD_TO_NEW, Answer, refusal
from celeriac.errors import ConfigurationError
from celeriac.logs import FORMAT as LOG_FORMAT
from celeriac.logs import TASK_FORMAT as TASK_LOG_FORMAT
from celeriac.security.names import SECRET_SETTINGS
from celeriac.security.names import SETTINGS as _SECURITY_SETTINGS
from celeriac.setting_checks import CHECKS, as_mapping

# (re-exported: the CLI and others import these, and ``suggest``, from here)
from celeriac.setting_checks import COMPRESSIONS as COMPRESSIONS
from celeriac.setting_checks import POOLS as POOLS
from celeriac.setting_checks import SERIALIZERS as SERIALIZERS
from celeriac.setting_checks import suggest as suggest
from celeriac.urls import safe_url

DEFAULT_URL = "sqlite:///celeriac.db"
_GENERATIONS = itertools.count(1)  # Settings.security_generation

# CELERIAC_* variables that are not settings: the CLI's -A default, and the dashboard's.
NON_SETTING_VARIABLES = frozenset({
    "CELERIAC_APP",
    # The dashboard's credentials: options of its command only, never settings (a worker's
    # "inspect conf" must have no way to show them).
    "CELERIAC_DASHBOARD_BASIC_AUTH", "CELERIAC_DASHBOARD_AUTH_TOKEN",
    "CELERIAC_DASHBOARD_AUTH_HEADER", "CELERIAC_DASHBOARD_SECRET",
})


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
    # The result backend's own options (Redis and Sentinel: master_name, sentinel_kwargs,
    # key_prefix...), as broker_transport_options are the broker's.
    result_backend_transport_options: dict[str, Any] = dataclasses.field(default_factory=dict)

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

    # Signed and encrypted messages (celeriac.security, docs/security.md). Signing is on
    # in a worker when it lists verification keys: HMAC secrets by key id, or Ed25519
    # public keys (PEM text or file paths); a producer signs with task_signing_key_id's
    # secret, or with task_signing_private_key.
    task_signing_keys: dict[str, bytes] = dataclasses.field(default_factory=dict)
    task_signing_key_id: str | None = None
    task_signing_public_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    task_signing_private_key: str | None = None
    task_signing_max_age: float = 3600.0  # seconds a signed message is valid after its eta
    task_encryption_keys: dict[str, bytes] = dataclasses.field(default_factory=dict)
    task_encryption_key_id: str | None = None
    task_encryption: bool = False  # encrypt every task's payload (or encrypt=True per task)
    result_encryption: bool = False  # encrypt stored results with task_encryption_keys

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

    # The dashboard's task history (celeriac.dashboard, docs/dashboard.md): where it is
    # kept (None: on the broker's server, see dashboard.history), how many tasks and
    # for how long (seconds).
    dashboard_history_url: str | None = None
    dashboard_history_max_tasks: int = 100_000
    dashboard_history_ttl: float = 7 * 24 * 3600.0

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
                **transport, **as_mapping("broker_transport_options", explicit)}
        checked = {name: _validate(name, value) for name, value in merged.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _validate(name, value))
        if name in _SECURITY_SETTINGS:  # App.security is rebuilt when this changes
            object.__setattr__(self, "security_generation", next(_GENERATIONS))

    # Changes when a security setting does (one int for App.security to compare); drawn
    # from one process-wide count, so that two Settings objects never share a value.
    security_generation: ClassVar[int] = 0

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
    if name in SECRET_SETTINGS:  # signing and encryption keys: not even their ids' values
        return "***" if value else value
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


def _validate(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise ConfigurationError(f'unknown setting "{name}"{suggest(name, _FIELDS)}')
    check = CHECKS.get(name)
    return check(name, value) if check else value
