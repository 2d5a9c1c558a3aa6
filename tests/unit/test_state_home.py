"""Where shared state lives (``celeriac.state_home``): the broker's server when it can
keep it, else the result backend's, else one clear error naming what to set. Nothing is
connected here: the broker and backend objects are only made."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac import App
from celeriac.errors import ConfigurationError
from celeriac.state_home import find_state_home, state_home

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
PG = "postgresql://postgres@127.0.0.1:5432/x"


@pytest.mark.parametrize(("broker", "kind"), [
    ("memory://", "memory"), ("sqlite:///{tmp}/b.db", "sqlite"),
    ("redis://127.0.0.1:6379/3", "redis"), ("rediss://127.0.0.1:6380/3", "redis"),
    (PG, "postgresql"), ("postgres://postgres@127.0.0.1:5432/x", "postgresql"),
])
def test_a_broker_that_can_keep_state_keeps_it(broker: str, kind: str,
                                                tmp_path: Path) -> None:
    app = App("t", broker=broker.format(tmp=tmp_path), backend="rpc://")
    home = state_home(app, "x")
    assert (home.owner, home.kind, home.role) == (app.broker, kind, "broker")


@pytest.mark.parametrize(("backend", "kind"), [
    ("memory://", "memory"), ("sqlite:///{tmp}/r.db", "sqlite"),
    ("redis://127.0.0.1:6379/3", "redis"), (PG, "postgresql"),
    ("db+postgresql://postgres@127.0.0.1:5432/x", "postgresql"),
])
def test_under_rabbitmq_the_result_backends_server_keeps_it(backend: str, kind: str,
                                                             tmp_path: Path) -> None:
    app = App("t", broker=AMQP, backend=backend.format(tmp=tmp_path))
    home = state_home(app, "x")
    assert (home.owner, home.kind, home.on_broker) == (app.backend, kind, False)


def test_with_nowhere_to_keep_it_the_error_names_the_feature_and_what_to_set() -> None:
    app = App("t", broker=AMQP, backend="rpc://")
    assert find_state_home(app) is None
    with pytest.raises(ConfigurationError) as caught:
        state_home(app, "frobs need a server to hold their frobs")
    assert str(caught.value) == (
        "frobs need a server to hold their frobs: the amqp:// broker keeps no such state, "
        "and the rpc:// result backend stores nothing on a server; set result_backend to "
        "a redis://, sqlite:/// or postgresql:// URL (or use a Redis, SQLite or "
        "PostgreSQL broker)")
