"""kafka:// URLs and options: several servers, a prefix, bad input refused by name;
queue names that Kafka would not accept as topic names, escaped and read back."""

from __future__ import annotations

import pytest

from celeriac import App
from celeriac.brokers import create_broker
from celeriac.brokers.kafka import KafkaBroker, queue_name, topic_name
from celeriac.errors import ConfigurationError


def test_servers_prefix_and_options_are_read() -> None:
    broker = create_broker("kafka://k1:9092,k2:9093?prefix=app.&partitions=3",
                           {"lease_seconds": 5, "fetch_wait_ms": 100})
    assert isinstance(broker, KafkaBroker)
    settings = broker.settings
    assert (settings.servers, settings.prefix, settings.partitions, settings.fetch_wait_ms) \
        == ("k1:9092,k2:9093", "app.", 3, 100)
    assert broker.lease_seconds == 5


@pytest.mark.parametrize(("url", "options", "named"), [
    ("kafka://", {}, "names no host"),
    ("kafka://k1", {}, "'k1' is not host:port"),
    ("kafka://k1:9092?partition=2", {}, "partition"),
    ("kafka://k1:9092?partitions=two", {}, "partitions='two'"),
    ("kafka://k1:9092", {"partitions": 0}, "partitions=0"),
    ("kafka://k1:9092", {"prefix": "a b"}, "prefix='a b'"),
    ("kafka://k1:9092", {"fetch_wait_ms": 0}, "fetch_wait_ms=0"),
    ("kafka://k1:9092", {"ssl": True}, "ssl"),
])
def test_bad_input_is_refused_naming_it(url: str, options: dict[str, object],
                                        named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        create_broker(url, options)


@pytest.mark.parametrize("queue", ["q", "celery", "a.b-c", "under_score", "sp ace",
                                   "ünï/cødé:q", "_5f"])
def test_queue_names_become_topic_names_and_back(queue: str) -> None:
    topic = topic_name("p.", queue)
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in topic)
    assert queue_name("p.", topic) == queue
    assert queue_name("other.", topic) is None


def test_partition_key_is_refused_where_the_broker_keeps_no_order_per_key() -> None:
    app = App("t", broker="memory://", backend="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="partition_key"):
        add.apply_async((1, 2), partition_key="customer-7")
    with pytest.raises(TypeError, match="partition_key"):
        add.apply_async((1, 2), partition_key=7)
