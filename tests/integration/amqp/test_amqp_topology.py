"""The AMQP broker's names, options and delay routing, checked without a server."""

from __future__ import annotations

import re

import pytest

from celeriac.brokers import create_broker
from celeriac.brokers.amqp import AMQPBroker, safe_url, split_url
from celeriac.brokers.amqp_topology import (
    DELAY_LEVELS,
    DELAY_UNIT_MS,
    MAX_DELAY_UNITS,
    AMQPOptions,
    QueueSpec,
    Topology,
)
from celeriac.errors import ConfigurationError


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic matching: ``*`` is one word, ``#`` zero or more."""
    words = [re.escape(word) for word in pattern.split(".")]
    regex = r"\.".join(words).replace(r"\#", ".*").replace(r"\*", r"[^.]+")
    return re.fullmatch(regex.replace(r"\..*", r"(\..*)?"), key) is not None


def hops(topology: Topology, queue: str, delay_ms: float) -> list[int]:
    """The levels a message with this delay waits in, following the bindings."""
    exchange, key = topology.delay_route(queue, delay_ms)
    level = next(lv for lv in range(DELAY_LEVELS) if topology.delay_exchange(lv) == exchange)
    waited = []
    while level >= 0:
        if topic_matches(topology.delay_binding(queue, level), key):
            waited.append(level)
        else:
            assert topic_matches(topology.pass_binding(level), key)
        level -= 1
    assert topic_matches(topology.delivery_binding(queue), key)
    return waited


@pytest.mark.parametrize("delay_ms", [1, 10, 11, 400, 1234.5, 60_000, 86_400_000])
def test_a_delay_is_never_shortened_and_at_most_one_unit_longer(delay_ms: float) -> None:
    topology = Topology("ns.")

    waited = hops(topology, "emails", delay_ms)

    total = sum(2 ** level for level in waited) * DELAY_UNIT_MS
    assert delay_ms <= total < delay_ms + DELAY_UNIT_MS
    assert waited == sorted(waited, reverse=True)  # down the ladder, one hop per set bit


def test_delays_beyond_the_ladder_take_the_whole_ladder() -> None:
    waited = hops(Topology(), "q", 10 * MAX_DELAY_UNITS * DELAY_UNIT_MS)

    assert waited == list(reversed(range(DELAY_LEVELS)))


def test_a_delay_reaches_only_its_own_queue() -> None:
    topology = Topology()
    _, key = topology.delay_route("a.b", 400)

    assert topic_matches(topology.delivery_binding("a.b"), key)
    assert not topic_matches(topology.delivery_binding("b"), key)
    assert not topic_matches(topology.delivery_binding("a"), key)


def test_queue_policies_come_from_the_transport_options() -> None:
    options = AMQPOptions.parse({"transient_queues": ["fast"], "quorum_queues": ["safe"],
                                 "queues": {"other": {"durable": False}}})

    assert options.spec("fast") == QueueSpec("fast", durable=False)
    assert options.spec("safe") == QueueSpec("safe", durable=True, quorum=True, delivery_limit=5)
    assert options.spec("other") == QueueSpec("other", durable=False)
    assert options.spec("default") == QueueSpec("default", durable=True)
    assert options.spec("fast").delivery_mode == 1
    assert options.spec("default").delivery_mode == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"transient_queue": ["x"]}, 'did you mean "transient_queues"'),
    ({"transient_queues": "x"}, "list of queue names"),
    ({"quorum_queues": ["x"], "transient_queues": ["x"]}, "both transient and a quorum"),
    ({"default_queue_type": "stream"}, "classic, quorum"),
    ({"queues": {"x": {"durable": "yes"}}}, "true or false"),
])
def test_bad_transport_options_are_refused_early(options: dict[str, object],
                                                 message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_broker("amqp://localhost/", options)


def test_the_url_carries_a_namespace_and_the_password_is_never_shown() -> None:
    broker = create_broker("amqps://user:secret@host:5671/vhost?namespace=app1.&heartbeat=5")

    assert isinstance(broker, AMQPBroker)
    assert broker.topology.queue("q") == "app1.q"
    assert split_url("amqp://h/v?namespace=n.&heartbeat=5") == (
        "amqp://h/v?heartbeat=5", {"namespace": "n.", "heartbeat": "5"})
    assert safe_url("amqp://user:secret@host/v") == "amqp://user:***@host/v"
    assert broker.supports_delay
    assert broker.supports_priority
