"""The ``rpc://`` result backend: results come back to the caller over RabbitMQ."""

from __future__ import annotations

import pytest
from rabbit_harness import Deploy
from worker_harness import register

from celeriac.errors import TimeoutError


def test_results_come_back_to_the_caller(deploy: Deploy) -> None:
    # Given a worker and a producer that both use rpc:// results
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "2").wait_ready(2)
    tasks = deployment.tasks

    # When the producer sends tasks and waits for them
    results = [tasks.add.delay(n, n) for n in range(50)]

    # Then each result comes back, and its state reads as in any backend
    assert [r.get(timeout=20) for r in results] == [2 * n for n in range(50)]
    assert results[0].state == "SUCCESS"
    assert results[0].successful()
    # A task that retries reports its final result to the caller too (the retry message
    # keeps the reply queue)
    assert tasks.flaky.delay("shaky", 2).get(timeout=20) == "shaky"


def test_only_the_caller_can_read_its_results(deploy: Deploy) -> None:
    # Given a task sent and finished by one producer
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.add.delay(20, 22)
    assert result.get(timeout=20) == 42

    # When another client asks for the same task id
    other = deployment.make_app(backend="rpc://")
    register(other)

    # Then it never sees the result: rpc results are the caller's own
    with pytest.raises(TimeoutError):
        other.AsyncResult(result.id).get(timeout=0.5)
