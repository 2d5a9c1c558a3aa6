"""The ``rpc://`` result backend: results come back to the caller over RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

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


def test_callers_waiting_in_threads_and_on_a_loop_each_get_their_own_result(
        deploy: Deploy) -> None:
    # Given tasks that are still running when their callers start to wait
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "4").wait_ready(4)
    tasks = deployment.tasks
    results = [tasks.sleepy.delay(f"t{n}", 0.3) for n in range(8)]

    # When four threads wait with get() and a coroutine waits with aget() for the others
    async def on_a_loop() -> list[str]:
        return await asyncio.gather(*(r.aget(timeout=20) for r in results[4:]))

    with ThreadPoolExecutor(4) as pool:
        in_threads = pool.map(lambda r: r.get(timeout=20), results[:4])
        awaited = asyncio.run(on_a_loop())

    # Then every caller is woken with the result it waits for
    assert [*in_threads, *awaited] == [f"t{n}" for n in range(8)]


def test_a_sync_get_gives_up_at_its_timeout(deploy: Deploy) -> None:
    # Given a task that runs longer than its caller will wait
    deployment = deploy(backend="rpc://")
    deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.sleepy.delay("slow", 3)

    # When the caller waits half a second, then it gets TimeoutError after about that
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.0
    # And the result still comes later
    assert result.get(timeout=20) == "slow"
