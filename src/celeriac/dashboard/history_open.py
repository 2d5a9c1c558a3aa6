"""Which store keeps an app's task history (``open_history``).

The history goes where the app's data already is, so that it needs no service of its
own, survives a dashboard restart, and is shared by every dashboard of the cluster:

- ``dashboard_history_url`` when set: ``sqlite:///path`` or ``redis://`` /
  ``rediss://`` (keys under the URL's ``key_prefix``, ``celeriac:`` by default, then
  ``dashboard:``), or ``memory://``;
- else by the broker: ``sqlite://`` -> a table in the broker's own file; ``redis://`` ->
  the broker's server, under its key prefix; ``memory://`` -> this process's memory
  (the tasks live there too);
- ``amqp://`` has no place for it: the result backend's server when that is
  ``sqlite://`` or ``redis://``, else a local file ``celeriac-dashboard.db`` in the
  working directory (logged, so that an operator knows where it went).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from celeriac.dashboard.history import HistoryStore
from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.dashboard")

LOCAL_FILE = "celeriac-dashboard.db"


def open_history(app: App) -> HistoryStore:
    """The history store of ``app`` (see the module); nothing is connected yet."""
    conf = app.conf
    limits: dict[str, Any] = {"max_tasks": conf.dashboard_history_max_tasks,
                              "ttl": conf.dashboard_history_ttl}
    if conf.dashboard_history_url:
        return history_from_url(conf.dashboard_history_url, **limits)
    broker: Any = app.broker
    if broker.scheme == "sqlite":
        return history_from_url(_sqlite_url(broker.path), **limits)
    if broker.scheme in ("redis", "rediss", "sentinel"):
        from celeriac.dashboard.history_redis import RedisHistory

        return RedisHistory(broker.settings, **limits)
    if broker.scheme == "memory":
        from celeriac.dashboard.history_memory import MemoryHistory

        return MemoryHistory(**limits)
    backend: Any = app.backend
    if backend.scheme == "sqlite":
        return history_from_url(_sqlite_url(backend.path), **limits)
    if backend.scheme in ("redis", "rediss", "sentinel"):
        from celeriac.dashboard.history_redis import RedisHistory

        return RedisHistory(backend.settings, **limits)
    path = os.path.abspath(LOCAL_FILE)
    logger.info("dashboard: the %s broker and the %s result backend have no room for the "
                "task history; keeping it in %s", broker.scheme, backend.scheme, path)
    return history_from_url(_sqlite_url(path), **limits)


def history_from_url(url: str, max_tasks: int = 100_000,
                     ttl: float = 7 * 24 * 3600.0) -> HistoryStore:
    """The store a ``dashboard_history_url`` names (``ConfigurationError`` otherwise)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from celeriac.dashboard.history_sqlite import SQLiteHistory

        return SQLiteHistory(url, max_tasks, ttl)
    if scheme in ("redis", "rediss", "sentinel"):
        from celeriac.brokers.redis_connection import RedisSettings
        from celeriac.dashboard.history_redis import RedisHistory

        return RedisHistory(RedisSettings.from_options(url, {}), max_tasks, ttl)
    if scheme == "memory":
        from celeriac.dashboard.history_memory import MemoryHistory

        return MemoryHistory(max_tasks, ttl)
    raise ConfigurationError(
        f"dashboard_history_url must be a sqlite:///path, redis:// or memory:// URL, "
        f"not one of scheme {scheme!r}")


def _sqlite_url(path: str) -> str:
    """``sqlite:///`` + an absolute path (four slashes), quoted as path_from_url reads it."""
    return "sqlite:///" + quote(os.path.abspath(path))
