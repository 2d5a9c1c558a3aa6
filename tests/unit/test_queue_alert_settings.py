"""The queue_alerts, queue_alerts_interval and alert_webhooks settings: checked when set."""

from __future__ import annotations

import pytest

from celeriac import App
from celeriac.errors import ConfigurationError
from celeriac.monitor.rules import QueueRule, rule_of, rules_for


def test_defaults_check_nothing() -> None:
    app = App("t", broker="memory://")
    assert app.conf.queue_alerts == {}
    assert app.conf.queue_alerts_interval == 10.0
    assert app.conf.alert_webhooks == ()


def test_thresholds_are_kept_as_plain_numbers() -> None:
    app = App("t", broker="memory://",
              queue_alerts={"celeriac": {"max_length": 1000, "max_age": 60},
                            "*": {"max_age": 300, "recover_at": 0.5}},
              alert_webhooks=["https://hooks.example.com/x", "http://127.0.0.1:9/a"])
    assert app.conf.queue_alerts == {"celeriac": {"max_length": 1000, "max_age": 60.0},
                                     "*": {"max_age": 300.0, "recover_at": 0.5}}
    assert app.conf.alert_webhooks == ("https://hooks.example.com/x", "http://127.0.0.1:9/a")


def test_a_queue_rule_is_merged_over_the_default() -> None:
    rules = rules_for({"*": {"max_age": 300}, "io": {"max_length": 10}})
    assert rule_of(rules, "io") == QueueRule(max_length=10, max_age=300.0)
    assert rule_of(rules, "other") == QueueRule(max_age=300.0)
    assert rule_of(rules_for({"io": {"max_length": 1}}), "other") is None


@pytest.mark.parametrize(("value", "message"), [
    ({"celeriac": {"max_lenght": 10}},
     "queue_alerts['celeriac']: unknown key 'max_lenght'; the keys are max_length, "
     "max_age, recover_at"),
    ({"celeriac": {"max_length": -1}}, "['max_length'] must be a number >= 0, not -1"),
    ({"celeriac": {"max_length": 1.5}}, "must be a whole number, not 1.5"),
    ({"celeriac": {"max_age": "60"}}, "['max_age'] must be a number >= 0, not '60'"),
    ({"celeriac": {"max_age": True}}, "must be a number >= 0, not True"),
    ({"celeriac": {"recover_at": 1}}, "must be a fraction from 0 to below 1"),
    ({"celeriac": 1000}, "queue_alerts['celeriac'] must be a mapping"),
    ({"": {"max_age": 1}}, "a queue name must be a non-empty string"),
    ([("celeriac", {})], "must map queue names"),
])
def test_bad_queue_alerts_are_refused_naming_the_problem(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        App("t", broker="memory://", queue_alerts=value)
    assert message in str(refused.value)


@pytest.mark.parametrize("value", [["ftp://host/x"], ["hooks.example.com"], [1], 5,
                                   ["http:///no-host"]])
def test_webhooks_must_be_http_urls(value: object) -> None:
    with pytest.raises(ConfigurationError, match="alert_webhooks"):
        App("t", broker="memory://", alert_webhooks=value)


def test_a_single_webhook_url_is_taken_as_a_list() -> None:
    app = App("t", broker="memory://", alert_webhooks="http://h/x")
    assert app.conf.alert_webhooks == ("http://h/x",)


@pytest.mark.parametrize("value", [0, -1, "10"])
def test_the_interval_must_be_positive_seconds(value: object) -> None:
    with pytest.raises(ConfigurationError, match="queue_alerts_interval"):
        App("t", broker="memory://", queue_alerts_interval=value)


def test_settings_come_from_the_environment_as_json() -> None:
    app = App("t", broker="memory://")
    app.conf.load_environment({"CELERIAC_QUEUE_ALERTS": '{"*": {"max_length": 5}}',
                               "CELERIAC_ALERT_WEBHOOKS": '["http://h/x"]'})
    assert app.conf.queue_alerts == {"*": {"max_length": 5}}
    assert app.conf.alert_webhooks == ("http://h/x",)
