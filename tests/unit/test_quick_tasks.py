"""Quick sync tasks run in batches (one pool-thread hop for many) and widen the prefetch.

A batch must not blur what happens to each task: every call gets its own request, its
own outcome and its own log line; one failing, retrying or revoked call does not touch
its neighbours; ``max_tasks_per_child`` stays exact; and the prefetch widens only
while the tasks are quick. The app is the ``celeriac_app`` fixture of celeriac.testing.
"""

import asyncio

import pytest

from celeriac import App, TaskRevokedError
from celeriac.testing import ThreadedWorker
from celeriac.worker.consumer import PREFETCH_MAX, Consumer, StopReason
from celeriac.worker.pools import runner_for


def test_each_quick_task_of_a_batch_has_its_own_request_and_outcome(celeriac_app: App) -> None:
    attempts: dict[int, int] = {}

    @celeriac_app.task(bind=True, max_retries=1, default_retry_delay=0)
    def quick(self: object, n: int) -> tuple[int, str | None]:
        attempts[n] = attempts.get(n, 0) + 1
        if n % 7 == 3:
            raise ValueError(f"bad {n}")
        if n % 11 == 5 and attempts[n] == 1:
            raise quick.retry(countdown=0)
        return n, quick.request.id

    with ThreadedWorker(celeriac_app, slots=1, pool="prefork") as worker:
        quick.delay(0).get(timeout=5)  # known to be quick from now on
        # Sent in one publish, so that they wait together behind one another however
        # slowly this machine runs the producer (one by one, a loaded machine could
        # hand each to the worker alone, and a batch needs company)
        results = celeriac_app.send_many([quick.s(n) for n in range(1, 301)])
        for n, result in enumerate(results, start=1):
            if n % 7 == 3:
                with pytest.raises(ValueError, match=f"bad {n}"):
                    result.get(timeout=10)
            else:
                assert result.get(timeout=10) == [n, result.id]
        consumer = worker.consumer
        assert consumer is not None
        assert consumer.stats.batched > 0, "quick tasks should have run in batches"
    assert all(attempts[n] == (2 if n % 11 == 5 and n % 7 != 3 else 1) for n in range(1, 301))


def test_a_revoked_task_in_a_batch_is_not_run(celeriac_app: App) -> None:
    ran: list[int] = []

    @celeriac_app.task
    def quick(n: int) -> int:
        ran.append(n)
        return n

    quick.delay(0)
    results = [quick.delay(n) for n in range(1, 50)]
    celeriac_app.control.revoke(results[20].id)
    with ThreadedWorker(celeriac_app, slots=1, pool="prefork"):
        with pytest.raises(TaskRevokedError):
            results[20].get(timeout=5)
        assert [r.get(timeout=5) for i, r in enumerate(results) if i != 20] == \
            [n for n in range(1, 50) if n != 21]
    assert 21 not in ran


def test_max_tasks_per_child_is_exact_when_tasks_run_in_batches(celeriac_app: App) -> None:
    ran: list[int] = []

    @celeriac_app.task
    def quick(n: int) -> int:
        ran.append(n)
        return n

    for n in range(100):
        quick.delay(n)

    async def consume() -> StopReason:
        queue = celeriac_app.conf.task_default_queue
        consumer = Consumer(celeriac_app, [queue], 1, runner_for("prefork", 1), max_tasks=30)
        return await consumer.run(grace=5)

    assert asyncio.run(consume()) is StopReason.RECYCLE
    assert ran == list(range(30))
    queue = celeriac_app.conf.task_default_queue
    [stats] = celeriac_app._run_sync(celeriac_app.broker.queue_stats([queue]))
    assert (stats.ready, stats.in_flight) == (70, 0)  # the rest handed back, untouched


def test_the_prefetch_widens_only_while_tasks_are_quick(celeriac_app: App) -> None:
    consumer = Consumer(celeriac_app, ["celeriac"], 1, runner_for("prefork", 1))
    base = consumer.budget
    assert consumer._budget() == base  # nothing measured yet: Celery's multiplier x slots
    for _ in range(20):
        consumer._timed("proj.quick", 0.00002)
    assert base < consumer._budget() <= PREFETCH_MAX
    for _ in range(5):
        consumer._timed("proj.slow", 0.5)
    assert consumer._budget() == base
