"""Which store keeps an app's task history (``dashboard.history_open``). Nothing is
connected here: the stores are only made."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from celeriac import App
from celeriac.dashboard.history_memory import MemoryHistory
from celeriac.dashboard.history_open import open_history
from celeriac.dashboard.history_postgresql import PostgreSQLHistory
from celeriac.dashboard.history_redis import RedisHistory
from celeriac.dashboard.history_sqlite import SQLiteHistory
from celeriac.errors import ConfigurationError


def test_the_history_goes_where_the_apps_data_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    store = open_history(App("p", broker=f"sqlite:///{tmp_path / 'b.db'}",
                             dashboard_history_max_tasks=7, dashboard_history_ttl=60.0))
    assert isinstance(store, SQLiteHistory)
    assert (store.path, store.max_tasks, store.ttl) == (str(tmp_path / "b.db"), 7, 60.0)

    store = open_history(App("p", broker="redis://:pw@127.0.0.1:6379/3",
                             broker_transport_options={"key_prefix": "app1:"}))
    assert isinstance(store, RedisHistory)
    assert store.prefix == "app1:dashboard:"
    assert "pw" not in store.where

    assert isinstance(open_history(App("p", broker="memory://")), MemoryHistory)

    # amqp: the result backend's server, else a file of its own, said in the log.
    store = open_history(App("p", broker="amqp://guest:guest@127.0.0.1//",
                             backend="redis://127.0.0.1:6379/4"))
    assert isinstance(store, RedisHistory)
    assert store.prefix == "celeriac:dashboard:"
    store = open_history(App("p", broker="amqp://guest:guest@127.0.0.1//",
                             backend=f"sqlite:///{tmp_path / 'r.db'}"))
    assert isinstance(store, SQLiteHistory)
    assert store.path == str(tmp_path / "r.db")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="celeriac.dashboard"):
        store = open_history(App("p", broker="amqp://guest:guest@127.0.0.1//",
                                 backend="rpc://"))
    assert isinstance(store, SQLiteHistory)
    assert store.path == str(tmp_path / "celeriac-dashboard.db")
    assert [r.getMessage() for r in caplog.records] == [
        "dashboard: the amqp broker and the rpc result backend have no room for the task "
        f"history; keeping it in {tmp_path / 'celeriac-dashboard.db'}"]

    # PostgreSQL: the broker's schema, or under RabbitMQ the result backend's.
    pg = "postgresql://postgres:pw@127.0.0.1:5432/x"
    store = open_history(App("p", broker=f"{pg}?schema=mine"))
    assert isinstance(store, PostgreSQLHistory)
    assert store.settings.schema == "mine"
    assert "pw" not in store.where
    store = open_history(App("p", broker="amqp://guest:guest@127.0.0.1//",
                             backend=f"{pg}?schema=res"))
    assert isinstance(store, PostgreSQLHistory)
    assert store.settings.schema == "res"

    # dashboard_history_url wins over the broker.
    store = open_history(App("p", broker="memory://",
                             dashboard_history_url="redis://127.0.0.1/2?key_prefix=x:"))
    assert isinstance(store, RedisHistory)
    assert store.prefix == "x:dashboard:"
    store = open_history(App("p", broker="memory://",
                             dashboard_history_url=f"{pg}?schema=dash"))
    assert isinstance(store, PostgreSQLHistory)
    assert store.settings.schema == "dash"
    with pytest.raises(ConfigurationError, match="must be a sqlite:///path, redis://, "
                       "postgresql:// or memory:// URL, not one of scheme 'mongodb'"):
        open_history(App("p", broker="memory://",
                         dashboard_history_url="mongodb://u:secret@h/db"))
