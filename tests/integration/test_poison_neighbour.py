"""The poison's neighbour: a task that finished before a poison started never runs again.

A poison (a task that kills its process every time) comes back after each death with a
higher delivery count. A worker starts such a redelivered task only once the verdicts
of the tasks finished before it are written, and while it runs nothing waits for the
flush's linger, so its death costs only itself (and what ran beside it), never the
tasks that finished just before.
"""

from __future__ import annotations

import time
from collections import Counter

from worker_harness import Deployment, wait_until

LEASE = 1.0  # short: the poison comes back quickly after each death


def test_tasks_finished_before_a_redelivered_poison_are_not_run_again(
        deployment: Deployment) -> None:
    check_poison_neighbours(deployment)


def check_poison_neighbours(deployment: Deployment) -> None:
    """The scenario, on the deployment's broker."""
    settings = {"task_delivery_limit": 3, "broker_transport_options": {"lease_seconds": LEASE}}
    # Given a poison that has already killed a worker once
    deployment.tasks.suicide.delay("poison")
    first = deployment.start_worker("-c", "1", **settings)
    deployment.ledger.wait_for("poison")
    first.kill_all()
    # And quick tasks queued ahead of it, so that one fetch returns them and then it
    neighbours = [f"neighbour-{n}" for n in range(3)]
    for tag in neighbours:
        deployment.tasks.record.apply_async((tag,), priority=9)
    # (its lease runs out at most a lease after it started: wait that long, as a worker
    # whose fetch comes later would)
    [death] = deployment.ledger.of("poison")
    time.sleep(max(0.0, death.t + LEASE + 0.5 - time.time()))

    # When a worker runs them, the neighbours first, then the poison on its 2nd delivery
    deployment.start_worker("-c", "1", **settings)

    # Then the poison dies on each of its deliveries and ends in the dead letters
    wait_until(lambda: [d for d in deployment.probe.dead_letters()
                        if "delivery limit exceeded" in d.reason], 30, "the poison dead-lettered")
    assert [e.delivery for e in deployment.ledger.of("poison")] == [1, 2, 3]
    # And each neighbour ran exactly once: its ack was written before the poison started
    runs = Counter(deployment.ledger.tags())
    assert {tag: runs[tag] for tag in neighbours} == dict.fromkeys(neighbours, 1)
    deployment.wait_for_queue(ready=0, in_flight=0)
