"""Which store keeps an app's task history (``open_history``).

The history goes where the app's data already is, so that it needs no service of its
own, survives a dashboard restart, and is shared by every dashboard of the cluster:

- ``dashboard_history_url`` when set: ``sqlite:///path`` or ``redis://`` /
  ``rediss://`` (keys under the URL's ``key_prefix``, ``celeriac:`` by default, then
  ``dashboard:``), ``postgresql://`` (tables in the URL's ``?schema=``, ``public`` by
  default), or ``memory://``;
- else where every shared-state feature goes (``celeriac.state_home``), by the broker:
  ``sqlite://`` -> a table in the broker's own file; ``redis://`` -> the broker's
  server, under its key prefix; ``postgresql://`` -> tables in the broker's schema;
  ``memory://`` -> this process's memory (the tasks live there too);
- ``amqp://`` has no place for it: the result backend's server when that is
  ``sqlite://``, ``redis://`` or ``postgresql://``, else a local file
  ``celeriac-dashboard.db`` in the working directory (logged, so that an operator
  knows where it went).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from celeriac.dashboard.history import HistoryStore
from celeriac.errors import ConfigurationError
from celeriac.state_home import StateHome, find_state_home

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
    home = find_state_home(app)
    # A memory result backend is no place either: the dashboard is a process of its own.
    if home is not None and (home.on_broker or home.kind != "memory"):
        return _history_on(home, limits)
    path = os.path.abspath(LOCAL_FILE)
    logger.info("dashboard: the %s broker and the %s result backend have no room for the "
                "task history; keeping it in %s", app.broker.scheme, app.backend.scheme, path)
    return history_from_url(_sqlite_url(path), **limits)


def _history_on(home: StateHome, limits: dict[str, Any]) -> HistoryStore:
    owner: Any = home.owner
    if home.kind == "sqlite":
        return history_from_url(_sqlite_url(owner.path), **limits)
    if home.kind == "redis":
        from celeriac.dashboard.history_redis import RedisHistory

        return RedisHistory(owner.settings, **limits)
    if home.kind == "postgresql":
        from celeriac.dashboard.history_postgresql import PostgreSQLHistory

        return PostgreSQLHistory(owner.settings, **limits)
    from celeriac.dashboard.history_memory import MemoryHistory

    return MemoryHistory(**limits)


def history_from_url(url: str, max_tasks: int = 100_000,
                     ttl: float = 7 * 24 * 3600.0) -> HistoryStore:
    """The store a ``dashboard_history_url`` names (``ConfigurationError`` otherwise)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from celeriac.dashboard.history_sqlite import SQLiteHistory

        return SQLiteHistory(url, max_tasks, ttl)
    if scheme in ("redis", "rediss", "sentinel"):  # (sentinel: ?master_name=)
        from celeriac.brokers.redis_connection import RedisSettings
        from celeriac.dashboard.history_redis import RedisHistory

        return RedisHistory(RedisSettings.from_options(url, {}), max_tasks, ttl)
    if scheme in ("postgresql", "postgres"):
        from celeriac.brokers.postgresql_connection import PgSettings
        from celeriac.dashboard.history_postgresql import PostgreSQLHistory

        return PostgreSQLHistory(PgSettings.from_url(url, {}), max_tasks, ttl)
    if scheme == "memory":
        from celeriac.dashboard.history_memory import MemoryHistory

        return MemoryHistory(max_tasks, ttl)
    raise ConfigurationError(
        f"dashboard_history_url must be a sqlite:///path, redis://, postgresql:// or "
        f"memory:// URL, not one of scheme {scheme!r}")


def _sqlite_url(path: str) -> str:
    """``sqlite:///`` + an absolute path (four slashes), quoted as path_from_url reads it."""
    return "sqlite:///" + quote(os.path.abspath(path))
