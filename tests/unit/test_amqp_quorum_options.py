"""Quorum queues and the delivery limit: what is declared, from which setting; no server."""

from __future__ import annotations

import pytest

from celeriac import App, Queue
from celeriac.brokers.amqp import AMQPBroker
from celeriac.brokers.amqp_topology import (
    DEFAULT_DELIVERY_LIMIT,
    AMQPOptions,
    QueueSpec,
    Topology,
)
from celeriac.config import Settings
from celeriac.errors import ConfigurationError


def test_a_quorum_queue_is_declared_to_dead_letter_at_the_delivery_limit() -> None:
    spec = AMQPOptions.parse({"quorum_queues": ["safe"], "delivery_limit": 3}).spec("safe")

    arguments = Topology("ns.").work_queue_arguments(spec)

    # x-delivery-limit counts returns: 2 returns allowed = 3 deliveries at most
    assert arguments == {"x-queue-type": "quorum", "x-delivery-limit": 2,
                         "x-dead-letter-exchange": "ns.celeriac.dead",
                         "x-dead-letter-routing-key": "safe",
                         "x-dead-letter-strategy": "at-least-once",
                         "x-overflow": "reject-publish"}


def test_classic_queues_and_opted_out_quorum_queues_are_declared_as_before() -> None:
    options = AMQPOptions.parse({"quorum_queues": ["old"], "quorum_delivery_limit": False})
    topology = Topology()

    assert topology.work_queue_arguments(options.spec("plain")) == {
        "x-dead-letter-exchange": "celeriac.dead", "x-max-priority": 10,
        "x-queue-version": 2}
    assert topology.work_queue_arguments(options.spec("old")) == {
        "x-dead-letter-exchange": "celeriac.dead", "x-queue-type": "quorum"}


def test_the_default_queue_type_quorum_carries_the_limit_too() -> None:
    options = AMQPOptions.parse({"default_queue_type": "quorum", "delivery_limit": 7})

    assert options.spec("any") == QueueSpec("any", quorum=True, delivery_limit=7)
    assert Settings().task_delivery_limit == DEFAULT_DELIVERY_LIMIT


def test_the_app_passes_its_delivery_limit_to_the_broker() -> None:
    app = App("t", broker="amqp://127.0.0.1:1/", backend="memory://",
              task_delivery_limit=4,
              task_queues=[Queue("pay", queue_arguments={"x-queue-type": "quorum"})])
    broker = app.new_broker()
    assert isinstance(broker, AMQPBroker)
    assert broker.queue_spec("pay").delivery_limit == 4
    assert broker.queue_spec("other").delivery_limit is None  # classic

    # task_reject_on_worker_lost=False: one delivery, as Celery (x-delivery-limit 0)
    app.conf.update(task_reject_on_worker_lost=False)
    assert app.new_broker().queue_spec("pay").delivery_limit == 1


def test_a_delivery_limit_option_that_disagrees_with_the_setting_is_refused() -> None:
    app = App("t", broker="amqp://127.0.0.1:1/", backend="memory://",
              broker_transport_options={"delivery_limit": 9})
    with pytest.raises(ConfigurationError, match="leave the transport option out"):
        app.new_broker()


@pytest.mark.parametrize(("options", "message"), [
    ({"delivery_limit": 0}, "delivery_limit .* at least 1"),
    ({"delivery_limit": True}, "delivery_limit .* at least 1"),
    ({"quorum_delivery_limit": "no"}, "quorum_delivery_limit must be true or false"),
])
def test_bad_delivery_limit_options_are_refused(options: dict[str, object],
                                                message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AMQPOptions.parse(options)
