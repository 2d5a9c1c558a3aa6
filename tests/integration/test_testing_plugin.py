"""The pytest plugin of celeriac.testing: an in-memory app, a worker thread, eager mode."""

from __future__ import annotations

import asyncio

import pytest

from celeriac import App, EagerResult
from celeriac.testing import ThreadedWorker


class Declined(Exception):
    pass


def test_celeriac_app_is_on_the_in_memory_broker(celeriac_app: App) -> None:
    assert celeriac_app.conf.effective_broker_url == "memory://"
    assert celeriac_app.conf.effective_result_backend == "memory://"
    assert not celeriac_app.conf.task_always_eager


def test_celeriac_worker_runs_sync_and_async_tasks(
    celeriac_app: App, celeriac_worker: ThreadedWorker,
) -> None:
    @celeriac_app.task
    def add(x: int, y: int) -> int:
        return x + y

    @celeriac_app.task
    async def async_add(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @celeriac_app.task
    def charge(amount: int) -> None:
        raise Declined(f"declined: {amount}")

    assert add.delay(2, 3).get(timeout=5) == 5
    assert async_add.delay(4, 5).get(timeout=5) == 9
    with pytest.raises(Declined, match="declined: 7"):
        charge.delay(7).get(timeout=5)
    assert celeriac_worker.consumer is not None
    assert celeriac_worker.consumer.stats.succeeded == 2
    assert celeriac_worker.consumer.stats.failed == 1


def test_celeriac_eager_app_runs_tasks_inline_and_propagates_errors(
    celeriac_eager_app: App,
) -> None:
    calls: list[int] = []

    @celeriac_eager_app.task
    def add(x: int, y: int) -> int:
        calls.append(x)
        return x + y

    @celeriac_eager_app.task
    def charge(amount: int) -> None:
        raise Declined(f"declined: {amount}")

    result = add.delay(2, 3)
    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert calls == [2]  # ran here, before delay() returned
    with pytest.raises(Declined):
        charge.delay(7)
    with pytest.raises(TypeError):
        add.delay(1)  # type: ignore[call-arg]  # checked at run time too
