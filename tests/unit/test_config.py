"""Settings: Celery's names, validated when set, from kwargs, objects and the environment."""

from datetime import timedelta
from types import SimpleNamespace

import pytest

from celeriac import App, ConfigurationError
from celeriac.config import DEFAULT_URL, Settings


def test_unknown_setting_suggests_the_closest_name() -> None:
    with pytest.raises(ConfigurationError, match='unknown setting "taks_serializer".*'
                                                 'did you mean "task_serializer"'):
        App("t", taks_serializer="json")


def test_unknown_setting_in_update_changes_nothing() -> None:
    conf = Settings()
    with pytest.raises(ConfigurationError, match="result_expires"):
        conf.update(task_serializer="msgpack", result_expire=10)
    assert conf.task_serializer == "json"  # validated as a whole before anything is set


@pytest.mark.parametrize(("name", "value", "message"), [
    ("task_serializer", "yaml", "must be one of json, msgpack, pickle"),
    ("worker_pool", "gevent", "must be one of prefork, threads, async, solo"),
    ("task_default_priority", 256, "priority must be a whole number from 0 to 255"),
    ("worker_prefetch_multiplier", 0, "whole number >= 1"),
    ("result_expires", -1, "seconds >= 0"),
    ("task_acks_late", "yes", "true or false"),
    ("task_compression", "lz4", "must be one of gzip, zlib, zstd"),
])
def test_bad_values_are_refused_with_the_rule(name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings().update({name: value})


def test_embedded_sqlite_is_the_default_broker_and_backend() -> None:
    app = App("t")
    assert app.conf.effective_broker_url == DEFAULT_URL == "sqlite:///celeriac.db"
    assert app.conf.effective_result_backend == DEFAULT_URL


def test_backend_follows_the_broker_unless_named() -> None:
    assert App("t", broker="memory://").conf.effective_result_backend == "memory://"
    app = App("t", broker="memory://", backend="sqlite:///r.db")
    assert app.conf.effective_result_backend == "sqlite:///r.db"


def test_celery_style_values_are_normalised() -> None:
    conf = Settings()
    conf.update(result_expires=timedelta(hours=1), accept_content=["application/json"])
    assert conf.result_expires == 3600.0
    assert conf.accept_content == ("json",)


def test_environment_variables_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_TASK_SERIALIZER", "msgpack")
    monkeypatch.setenv("CELERIAC_BROKER_TRANSPORT_OPTIONS", '{"lease_seconds": 3}')
    monkeypatch.setenv("CELERIAC_TASK_ACKS_LATE", "false")
    app = App("t")
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.broker_transport_options == {"lease_seconds": 3}
    assert app.conf.task_acks_late is False


def test_bad_environment_variable_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_WORKER_POOL", "eventlet")
    with pytest.raises(ConfigurationError, match="worker_pool"):
        App("t")


def test_config_from_object_reads_lowercase_attributes() -> None:
    app = App("t")
    app.config_from_object(SimpleNamespace(task_default_queue="io", UPPER="ignored",
                                           result_expires=60))
    assert app.conf.task_default_queue == "io"
    assert app.conf.result_expires == 60.0


def test_config_from_object_rejects_typos() -> None:
    with pytest.raises(ConfigurationError, match='did you mean "worker_concurrency"'):
        App("t").config_from_object(SimpleNamespace(worker_concurency=4))


def test_unknown_broker_scheme_is_a_clear_error() -> None:
    app = App("t", broker="sqlit:///x.db")
    with pytest.raises(ConfigurationError, match='did you mean "sqlite"'):
        _ = app.broker


def test_misspelled_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_TASK_SERIALISER", "msgpack")
    with pytest.raises(ConfigurationError, match='CELERIAC_TASK_SERIALISER names no setting'
                                                 ' .did you mean "task_serializer"'):
        App("t")


def test_celeriac_app_variable_is_not_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_APP", "proj.tasks")
    assert App("t").conf.task_serializer == "json"


def test_broker_connection_timeout_reaches_the_broker() -> None:
    # the setting Celery users know bounds the broker's connection attempts (issue 10)
    app = App("proj", broker="redis://127.0.0.1:6379/0", broker_connection_timeout=1.5)
    assert app.broker.settings.connection_timeout == 1.5  # type: ignore[attr-defined]
    amqp = App("proj", broker="amqp://guest:guest@127.0.0.1:5672/",
               broker_connection_timeout=2.5)
    assert amqp.broker.settings.connect_timeout == 2.5  # type: ignore[attr-defined]
    # and a transport option given explicitly wins
    explicit = App("proj", broker="redis://127.0.0.1:6379/0", broker_connection_timeout=1.5,
                   broker_transport_options={"connection_timeout": 7})
    assert explicit.broker.settings.connection_timeout == 7  # type: ignore[attr-defined]
