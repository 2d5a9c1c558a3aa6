"""RabbitMQ restarts: what survives, what does not.

Each test runs on the test run's private RabbitMQ node (``private_rabbit``), which it
shuts down and starts again with its database kept, as a server restart; the shared
RabbitMQ is never stopped. Durable queues (the default) keep every confirmed task,
delayed ones included; transient queues lose theirs, by design. A running worker
reconnects and keeps consuming, the tasks it held come back, and a producer gets a
clear error while the broker is down.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from rabbit_harness import QUEUE, Deploy, Rabbit, RabbitDeployment
from worker_harness import register, wait_until

from celeriac.brokers import QueueStats
from celeriac.errors import BrokerUnavailable


@pytest.fixture
def rabbit(private_rabbit: Rabbit) -> Rabbit:
    """Every deployment of this module lives on the private node (see conftest)."""
    return private_rabbit


def test_a_durable_queue_keeps_every_confirmed_task_across_a_broker_restart(
    deployment: RabbitDeployment, rabbit: Rabbit,
) -> None:
    # Given 300 tasks sent and confirmed to the default (durable) queue, 5 of them with a
    # countdown, and no worker running
    tasks = deployment.tasks
    now = [f"now-{n}" for n in range(300)]
    later = [f"later-{n}" for n in range(5)]
    for tag in now:
        tasks.record.delay(tag)
    for tag in later:
        tasks.record.apply_async((tag,), countdown=8)
    assert deployment.probe.stats() == QueueStats(QUEUE, ready=300, scheduled=5, in_flight=0)

    # When RabbitMQ restarts
    rabbit.restart()

    # Then they are all still there, and a worker started afterwards runs each once
    assert deployment.probe.stats().ready == 300
    deployment.start_worker("-c", "2").wait_ready(2)
    entries = deployment.ledger.wait_for_count(305, timeout=30)
    assert Counter(e.tag for e in entries) == Counter(now + later)
    # And the delayed ones did not run before their eta
    assert all(e.t >= e.eta for e in entries if e.eta is not None)
    wait_until(lambda: deployment.probe.stats() == QueueStats(QUEUE, 0, 0, 0), 10,
               "an empty queue")


def test_a_transient_queue_loses_its_tasks_on_a_broker_restart(
    deploy: Deploy, rabbit: Rabbit,
) -> None:
    # Given a transient queue (in memory only, for tasks that may be lost) holding 50
    # confirmed tasks
    deployment = deploy(transient_queues=["volatile"])
    for n in range(50):
        deployment.tasks.record.apply_async((f"lost-{n}",), queue="volatile")
    assert deployment.probe.stats("volatile").ready == 50

    # When RabbitMQ restarts
    rabbit.restart()

    # Then the queue and its tasks are gone (documented behaviour, not an accident)
    assert deployment.probe.stats("volatile") == QueueStats("volatile", 0, 0, 0)
    # And the queue works again at once: the next send declares it, a worker runs it
    deployment.tasks.record.apply_async(("after",), queue="volatile")
    deployment.start_worker("-c", "1", "-Q", "volatile").wait_ready()
    deployment.ledger.wait_for("after")
    assert deployment.ledger.tags() == ["after"]


def test_a_running_worker_reconnects_and_keeps_consuming_across_a_broker_restart(
    deployment: RabbitDeployment, rabbit: Rabbit,
) -> None:
    # Given a worker with two processes that has run 20 tasks, and is running a slow one
    tasks = deployment.tasks
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    children = {child.pid for child in worker.children()}
    before = [tasks.record.delay(f"before-{n}") for n in range(20)]
    assert [r.get(timeout=20) for r in before] == [f"before-{n}" for n in range(20)]
    slow = tasks.sleepy.delay("slow", 3.0)
    deployment.ledger.wait_for("slow")

    # When RabbitMQ stops
    rabbit.stop()
    try:
        # Then a producer gets a clear error within its publish timeout, not a silent loss
        producer = deployment.make_app(
            broker_transport_options={"publish_timeout": 1.5, "connect_timeout": 0.5})
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="RabbitMQ"):
            register(producer).record.delay("never")
        assert time.monotonic() - started < 4
    finally:
        # And when it starts again
        rabbit.start()

    # Then the same worker processes take new tasks, without being restarted
    after = [tasks.record.delay(f"after-{n}") for n in range(20)]
    assert [r.get(timeout=30) for r in after] == [f"after-{n}" for n in range(20)]
    assert {child.pid for child in worker.children()} == children
    # And the task it held when the connection dropped was delivered again
    assert slow.get(timeout=30) == "slow"
    runs = deployment.ledger.of("slow")
    assert [run.delivery for run in runs][-1] >= 2
    assert "never" not in deployment.ledger.tags()
