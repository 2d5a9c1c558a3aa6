"""sentinel:// URLs and the replication option: read as Celery writes them, or refused
at once with the setting named (the failover itself: tests/integration/redis)."""

from __future__ import annotations

import pytest

from celeriac import App
from celeriac.brokers.redis_connection import RedisSettings
from celeriac.brokers.redis_replication import Replication
from celeriac.errors import BrokerUnavailable, ConfigurationError
from celeriac.urls import safe_url

URL = "sentinel://:secret@10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


def test_celerys_sentinel_url_names_every_sentinel_the_data_password_and_the_db() -> None:
    settings = RedisSettings.from_options(URL, {"master_name": "mymaster",
                                                "sentinel_kwargs": {"password": "s"}})
    spec = settings.sentinel
    assert spec is not None
    assert spec.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (spec.master_name, spec.db, spec.password) == ("mymaster", 2, "secret")
    assert spec.sentinel_kwargs == {"password": "s"}
    # Neither password shows where settings are printed or logged
    assert "secret" not in repr(spec)
    assert "'s'" not in repr(spec)
    assert "secret" not in settings.where()


def test_master_name_is_required_and_named_in_the_error() -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        RedisSettings.from_options(URL, {})


def test_master_name_may_come_from_the_urls_query() -> None:
    settings = RedisSettings.from_options(URL + "?master_name=m&key_prefix=app:", {})
    assert settings.sentinel is not None
    assert settings.sentinel.master_name == "m"
    assert settings.key_prefix == "app:"


@pytest.mark.parametrize(("url", "options", "named"), [
    ("sentinel://:a@h:1;sentinel://:b@h:2", {}, "passwords"),
    ("sentinel://h:1/1;sentinel://h:2/2", {}, "dbs"),
    ("sentinel://h:1;redis://h:2", {}, "sentinel://"),
    ("sentinel://h:1/x", {}, "database"),
    ("sentinel://h:1", {"sentinel_kwargs": "password"}, "sentinel_kwargs"),
    ("sentinel://h:1", {"min_other_sentinels": -1}, "min_other_sentinels"),
    ("sentinel://h:1", {"ssl_cert_reqs": "none"}, "TLS"),
])
def test_a_bad_sentinel_setting_is_refused_naming_it(url: str, options: dict[str, object],
                                                      named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        RedisSettings.from_options(url, {"master_name": "m", **options})


def test_the_backend_takes_result_backend_transport_options_and_others_refuse_them() -> None:
    app = App("t", broker="memory://", backend="sentinel://h:1/1",
              result_backend_transport_options={"master_name": "m"})
    assert app.backend.settings.sentinel.master_name == "m"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        _ = App("t", broker="memory://", backend="memory://",
                result_backend_transport_options={"master_name": "m"}).backend
    with pytest.raises(ConfigurationError, match="unknown .* option 'master_nam'"):
        _ = App("t", broker="memory://", backend="sentinel://h:1/1",
                result_backend_transport_options={"master_nam": "m"}).backend


@pytest.mark.parametrize("options", [{"wait_for_replicas": -1}, {"wait_for_replicas": True},
                                     {"wait_for_replicas": 1, "wait_for_replicas_timeout": 0}])
def test_a_bad_replication_option_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match="wait_for_replicas"):
        Replication.from_options(options)


def test_a_send_too_few_replicas_acknowledged_raises_saying_what_may_happen() -> None:
    replication = Replication.from_options({"wait_for_replicas": 2})
    assert replication.command() == ("WAIT", 2, 1000)
    replication.check(2, "here", 1)  # enough: nothing to say
    with pytest.raises(BrokerUnavailable, match="only 1 of the 2 replica"):
        replication.check(1, "here", 3)


def test_sentinel_options_on_a_plain_redis_url_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigurationError, match="master_name is an option of sentinel://"):
        RedisSettings.from_options("redis://127.0.0.1:6379/0", {"master_name": "m"})


def test_every_sentinels_password_is_masked_where_the_url_is_shown() -> None:
    assert safe_url("sentinel://:pw@h:1;sentinel://u:pw@h2:2/0") == \
        "sentinel://:***@h:1;sentinel://u:***@h2:2/0"
