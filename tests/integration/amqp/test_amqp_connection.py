"""Connections that die without a word (heartbeats), and quorum queues."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from fault_proxy import FaultProxy
from rabbit_harness import Deploy, Rabbit
from worker_harness import kill_pid, wait_until

from celeriac.brokers import Broker, Delivery, Outgoing, create_broker
from celeriac.errors import BrokerUnavailable


def test_a_silent_connection_is_noticed_by_heartbeats_and_consuming_resumes(
    rabbit: Rabbit, proxy: FaultProxy,
) -> None:
    # Given a consumer with 1 s heartbeats through a proxy, holding one delivery
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{rabbit.vhost}?heartbeat=1"
    broker: Broker = create_broker(url, {"lease_seconds": 60, "connect_timeout": 0.5})
    runner = asyncio.Runner()
    try:
        runner.run(broker.publish([Outgoing(uuid.uuid4().hex, "q", b"held", 0)]))
        [held] = runner.run(broker.fetch(["q"], 10, timeout=5))

        # When the network goes silent (no close, no reset: nothing at all)
        proxy.freeze()
        frozen_at = time.monotonic()

        # Then the missed heartbeats give the connection up: the delivery is no longer ours
        def lost() -> bool:
            with contextlib.suppress(BrokerUnavailable):
                runner.run(broker.fetch(["q"], 10, timeout=0.5))
            return runner.run(broker.extend([held])) == [False]

        wait_until(lost, 20, "the consumer to notice the dead connection")
        assert time.monotonic() - frozen_at < 15

        # And once the network is back, it consumes again, and RabbitMQ (which also saw
        # the heartbeats stop) has handed the held message back, counted
        proxy.thaw()
        again: list[Delivery] = []

        def fetched() -> bool:
            with contextlib.suppress(BrokerUnavailable):
                again.extend(runner.run(broker.fetch(["q"], 10, timeout=0.5)))
            return bool(again)

        wait_until(fetched, 30, "the message to come back")
        assert [(d.id, d.body, d.delivery_count) for d in again] == [(held.id, b"held", 2)]
        runner.run(broker.ack(again))
    finally:
        proxy.thaw()
        with contextlib.suppress(Exception):
            runner.run(broker.close())
        runner.close()


def test_a_quorum_queue_counts_deliveries_itself(deploy: Deploy) -> None:
    # Given a worker on a quorum queue (replicated, durable, no priorities)
    deployment = deploy(quorum_queues=["safe"])
    worker = deployment.start_worker("-c", "2", "-Q", "safe").wait_ready(2)

    # When the process running a task is killed mid-task
    result = deployment.tasks.hang_once.apply_async(("victim",), queue="safe")
    first = deployment.ledger.wait_for("victim")[0]
    kill_pid(first.pid)

    # Then the task runs again, its second delivery counted by RabbitMQ (x-delivery-count)
    assert result.get(timeout=30) == "victim"
    assert [run.delivery for run in deployment.ledger.of("victim")] == [1, 2]
    # And priorities do not reorder a quorum queue: oldest first
    for n, priority in enumerate([0, 9, 5]):
        deployment.tasks.record.apply_async((f"q{n}",), queue="safe", priority=priority)
    wait_until(lambda: len(deployment.ledger.tags()) == 5, 20, "three more tasks")
    assert worker.running
