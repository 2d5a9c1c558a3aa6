"""The task-thread runner: a single-thread runner waits for a call off the loop, briefly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from celeriac.worker.pools import SINGLE_THREAD_WAIT, ThreadRunner, runner_for

pytestmark = pytest.mark.timeout(30)


def _in_thread() -> str:
    return threading.current_thread().name


def test_a_call_runs_on_a_task_thread_and_returns_its_value() -> None:
    for threads in (1, 4):
        runner = ThreadRunner(threads)
        try:
            assert asyncio.run(runner(_in_thread)).startswith("celeriac-task")
        finally:
            runner.shutdown()


def test_a_call_that_raises_raises_in_the_caller() -> None:
    def fail() -> None:
        raise ValueError("boom")

    runner = ThreadRunner(1)
    try:
        with pytest.raises(ValueError, match="boom"):
            asyncio.run(runner(fail))
    finally:
        runner.shutdown()


def test_a_long_call_holds_the_loop_no_longer_than_the_wait() -> None:
    """Leases, acks and fetches keep going while a single-thread call runs long."""
    asyncio.run(_long_call())


async def _long_call() -> None:
    release = threading.Event()
    ticks: list[float] = []

    async def tick() -> None:
        while not release.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    runner = ThreadRunner(1)
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    try:
        call = asyncio.create_task(runner(lambda: release.wait(10)))
        await asyncio.sleep(SINGLE_THREAD_WAIT + 0.2)  # the loop is free again meanwhile
        during = [t for t in ticks if t > time.monotonic() - 0.15]
        assert len(during) >= 5, "the event loop stood still while the call ran"
        assert not call.done()
        release.set()
        assert await call is True
    finally:
        release.set()
        await ticker
        runner.shutdown()


def test_one_thread_per_slot_and_at_most_eight_for_the_async_pool() -> None:
    assert runner_for("prefork", 1).threads == 1
    assert runner_for("threads", 4).threads == 4
    assert runner_for("async", 100).threads == 8


def test_the_loop_gets_a_turn_between_calls_run_back_to_back() -> None:
    """A slot running call after call never starves the loop for more than one call."""

    async def scenario() -> tuple[int, int]:
        runner = ThreadRunner(1)
        turns = 0
        running = True

        async def other_work() -> None:  # stands for the flush, fetch and lease loops
            nonlocal turns
            while running:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        before = turns
        try:
            for _ in range(20):
                await runner(lambda: time.sleep(0.002))  # each within the wait
        finally:
            running = False
            await other
            runner.shutdown()
        return before, turns

    before, after = asyncio.run(scenario())

    assert after - before >= 20
