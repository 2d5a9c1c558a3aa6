"""Every Celery setting has an answer (docs/celery-settings.md): same, mapped or refused."""

from __future__ import annotations

import types
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from celeriac import App, ConfigurationError
from celeriac.celery_settings import CELERY_SETTINGS, OLD_TO_NEW, Answer, markdown
from celeriac.config import Settings

DOCS = Path(__file__).parents[2] / "docs" / "celery-settings.md"


def test_the_docs_table_is_generated_from_the_code_table() -> None:
    assert DOCS.read_text() == markdown(), (
        "regenerate it with the command at the top of docs/celery-settings.md")


@pytest.mark.parametrize("name", sorted(CELERY_SETTINGS))
def test_every_celery_setting_is_honoured_mapped_or_refused_with_a_reason(name: str) -> None:
    setting = CELERY_SETTINGS[name]
    conf = Settings()
    if setting.answer is Answer.SAME:
        # celeriac has it under the same name: its default value is accepted as is
        conf.update({name: getattr(Settings(), name)})
    elif setting.answer is Answer.MAPPED:
        assert setting.target is not None
        conf.update({name: _sample(name)})
        assert conf != Settings(), f"{name} changed nothing"
    else:
        # refused: the error names the setting and says why / what to use instead
        with pytest.raises(ConfigurationError) as raised:
            conf.update({name: "anything"})
        message = str(raised.value)
        assert f'"{name}"' in message
        assert setting.note
        assert setting.note in message
        assert "did you mean" not in message


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_every_old_uppercase_name_means_its_new_name_with_a_warning(old: str) -> None:
    new = OLD_TO_NEW[old]
    if CELERY_SETTINGS[new].answer is Answer.REFUSED:
        with pytest.raises(ConfigurationError, match=f'"{new}"'), \
                pytest.warns(FutureWarning, match=f'"{old}" is Celery\'s old name'):
            Settings().update({old: "anything"})
        return
    value = getattr(Settings(), new) if new in Settings() else _sample(new)
    with pytest.warns(FutureWarning, match=f'use "{new}"'):
        Settings().update({old: value})


def _sample(name: str) -> object:
    return {"task_default_queue_type": "quorum", "worker_soft_shutdown_timeout": 12.0}[name]


def test_mapped_settings_reach_their_celeriac_equivalent() -> None:
    conf = Settings()
    conf.update(broker_transport_options={"heartbeat": 5}, task_default_queue_type="quorum",
                worker_soft_shutdown_timeout=12.0)
    assert conf.broker_transport_options == {"heartbeat": 5, "default_queue_type": "quorum"}
    assert conf.worker_shutdown_timeout == 12.0
    # an explicit transport option wins over the Celery setting mapped onto it
    conf.update(broker_transport_options={"default_queue_type": "classic"},
                task_default_queue_type="quorum")
    assert conf.broker_transport_options == {"default_queue_type": "classic"}


def test_a_celery_setting_is_never_answered_with_an_unrelated_suggestion() -> None:
    # broker_pool_limit is Celery's and taken; a typo of it is pointed back at it
    Settings().update(broker_pool_limit=10)
    with pytest.raises(ConfigurationError) as raised:
        Settings().update(broker_pool_limt=10)
    assert 'did you mean "broker_pool_limit"' in str(raised.value)


def test_naive_datetimes_follow_enable_utc_and_timezone() -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    utc_app = App("proj", broker="memory://")
    message, _ = utc_app.prepare("x", (), {}, {"eta": naive})
    assert message.eta == naive.replace(tzinfo=UTC).timestamp()  # enable_utc: naive is UTC
    local_app = App("proj", broker="memory://", enable_utc=False, timezone="Asia/Tokyo")
    message, _ = local_app.prepare("x", (), {}, {"eta": naive})
    assert message.eta == naive.replace(tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    with pytest.raises(ConfigurationError, match="'Mars/Olympus' is not a time zone"):
        App("proj", timezone="Mars/Olympus")


def test_pool_limit_and_heartbeat_reach_the_brokers_that_have_them(
        caplog: pytest.LogCaptureFixture) -> None:
    redis_app = App("proj", broker="redis://127.0.0.1:6379/0", broker_pool_limit=3,
                    broker_heartbeat=30)
    assert redis_app.broker.options["pool_limit"] == 3
    assert any("broker_heartbeat=30.0 is not used by the redis broker" in r.getMessage()
               for r in caplog.records)
    amqp_app = App("proj", broker="amqp://guest:guest@127.0.0.1:5672/", broker_heartbeat=30)
    assert amqp_app.broker.settings.heartbeat == 30  # type: ignore[attr-defined]


def test_reject_on_worker_lost_false_means_no_second_delivery() -> None:
    assert Settings().delivery_limit == 5
    conf = Settings()
    conf.update(task_reject_on_worker_lost=False)
    assert conf.delivery_limit == 1


def test_results_are_read_with_result_accept_content() -> None:
    app = App("proj", broker="memory://", accept_content=["json"],
              result_accept_content=["msgpack"])
    assert app.result_codec.accept == frozenset({"msgpack"})
    assert App("proj", broker="memory://").result_codec.accept == frozenset({"json", "msgpack"})


def test_a_celery_style_config_module_with_old_names_is_read_not_dropped() -> None:
    # Given a celeryconfig module in Celery's old uppercase style, beside other constants
    config = types.SimpleNamespace(
        BROKER_URL="redis://127.0.0.1:6379/3", CELERY_RESULT_BACKEND="redis://127.0.0.1/4",
        CELERYD_PREFETCH_MULTIPLIER=1, CELERY_TASK_SERIALIZER="msgpack",
        SOME_OTHER_CONSTANT=42)
    app = App("proj")
    # When the app loads it
    with pytest.warns(FutureWarning):
        app.config_from_object(config)
    # Then every setting took effect
    assert app.conf.broker_url == "redis://127.0.0.1:6379/3"
    assert app.conf.result_backend == "redis://127.0.0.1/4"
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_serializer == "msgpack"


def test_a_misspelt_old_name_is_an_error_naming_the_right_one() -> None:
    config = types.SimpleNamespace(CELERYD_CONCURENCY=4)
    with pytest.raises(ConfigurationError, match='did you mean "CELERYD_CONCURRENCY"'):
        App("proj").config_from_object(config)


def test_django_settings_with_the_celery_namespace() -> None:
    # Given Django-style settings: CELERY_-prefixed names among Django's own
    settings = types.SimpleNamespace(
        DEBUG=True, DATABASES={"default": {}}, SECRET_KEY="x",
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//",
        CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/5", CELERY_TASK_ALWAYS_EAGER=False,
        CELERY_WORKER_PREFETCH_MULTIPLIER=2, CELERY_TASK_ACKS_LATE=True)
    app = App("proj")
    # When loaded with namespace="CELERY"
    app.config_from_object(settings, namespace="CELERY")
    # Then the prefixed names are the settings, and Django's own are left alone
    assert app.conf.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert app.conf.result_backend == "redis://127.0.0.1:6379/5"
    assert app.conf.worker_prefetch_multiplier == 2
    # And a misspelt prefixed name is an error, not a silent default
    with pytest.raises(ConfigurationError, match="worker_prefetch_multiplier"):
        app.config_from_object(types.SimpleNamespace(CELERY_WORKER_PREFETCH_MULTIPLER=2),
                               namespace="CELERY")


def test_config_from_object_takes_a_module_colon_attribute_path() -> None:
    app = App("proj")
    app.config_from_object("settings_for_config:settings", namespace="CELERY")
    assert app.conf.task_default_queue == "from-attribute"


def test_celery_environment_variables_win_as_in_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the variables Celery reads, set in the environment of a deployment
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/7")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/8")
    # When the code names other URLs (or none)
    app = App("proj", broker="sqlite:///elsewhere.db")
    # Then the environment's win, as Celery's Settings.broker_url does
    assert app.conf.effective_broker_url == "redis://127.0.0.1:6379/7"
    assert app.conf.effective_result_backend == "redis://127.0.0.1:6379/8"
    # And celeriac's own variable wins over Celery's
    monkeypatch.setenv("CELERIAC_BROKER_URL", "redis://127.0.0.1:6379/9")
    assert App("proj").conf.effective_broker_url == "redis://127.0.0.1:6379/9"


def test_conf_is_a_mapping_and_displays_without_secrets() -> None:
    app = App("proj", broker="amqp://user:hunter2@127.0.0.1:5672//",
              broker_transport_options={"ssl_password": "pw2", "heartbeat": 5})
    conf = app.conf
    assert conf["broker_url"] == "amqp://user:hunter2@127.0.0.1:5672//"
    assert conf.get("no_such_setting", "fallback") == "fallback"
    assert "task_serializer" in list(conf.keys())
    conf["task_serializer"] = "msgpack"
    assert conf.task_serializer == "msgpack"
    shown = conf.humanize()
    assert "hunter2" not in shown
    assert "pw2" not in shown
    assert "broker_url: 'amqp://user:***@127.0.0.1:5672//'" in shown
    assert conf.table()["broker_transport_options"] == {"ssl_password": "***", "heartbeat": 5}
