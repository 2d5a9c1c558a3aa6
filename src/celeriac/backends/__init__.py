"""Result backends, chosen by URL scheme and imported only when used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celeriac.backends.base import ResultBackend
from celeriac.config import suggest
from celeriac.errors import ConfigurationError
from celeriac.extras import import_for_url
from celeriac.urls import safe_url

BACKENDS: dict[str, tuple[str, str]] = {
    "memory": ("celeriac.backends.memory", "MemoryBackend"),
    "sqlite": ("celeriac.backends.sqlite", "SQLiteBackend"),
    "rpc": ("celeriac.backends.rpc", "RPCBackend"),
    # An amqp:// broker with no result_backend named gets rpc results on the same server.
    "amqp": ("celeriac.backends.rpc", "RPCBackend"),
    "amqps": ("celeriac.backends.rpc", "RPCBackend"),
    "redis": ("celeriac.backends.redis", "RedisBackend"),
    "rediss": ("celeriac.backends.redis", "RedissBackend"),
    "sentinel": ("celeriac.backends.redis", "SentinelBackend"),
    "postgresql": ("celeriac.backends.postgresql", "PostgreSQLBackend"),
    "postgres": ("celeriac.backends.postgresql", "PostgreSQLBackend"),
    # Celery's SQLAlchemy URL for a database backend: the same tables, no SQLAlchemy.
    "db+postgresql": ("celeriac.backends.postgresql", "PostgreSQLBackend"),
    "db+postgres": ("celeriac.backends.postgresql", "PostgreSQLBackend"),
}


def create_backend(url: str, options: Mapping[str, Any] | None = None) -> ResultBackend:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in BACKENDS:
        raise ConfigurationError(
            f"no result backend for URL {safe_url(url)!r}{suggest(scheme, list(BACKENDS))}; "
            f"known schemes: {', '.join(s + '://' for s in BACKENDS)}"
        )
    module_name, class_name = BACKENDS[scheme]
    cls = getattr(import_for_url(module_name, url, "result backend"), class_name)
    if (options or {}).get("result_backend_transport_options") and \
            not cls.takes_transport_options:
        raise ConfigurationError(
            f"result_backend_transport_options are not used by the {scheme}:// result "
            "backend (only Redis and Sentinel backends take them); remove them")
    backend: ResultBackend = cls(url, options)
    return backend


__all__ = ["BACKENDS", "ResultBackend", "create_backend"]
