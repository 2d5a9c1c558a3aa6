"""Workflows on a worker: chains, groups, chords, callbacks, and what happens on failure.

A real consumer runs in a thread of the test process on the in-memory broker and
backend (tests/integration runs the same workflows on every broker and on real worker
processes). Tasks record their calls in lists, so the tests count executions exactly.
"""

import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from celeriac import (
    App,
    AsyncResult,
    ChordError,
    GroupResult,
    Request,
    chain,
    chord,
    group,
    states,
)
from celeriac.canvas_run import plan
from celeriac.testing import ThreadedWorker

WAIT = 10.0


class Boom(Exception):
    pass


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


@pytest.fixture
def t(app: App) -> Any:
    calls: Counter[str] = Counter()
    errors: list[tuple[str | None, str, str]] = []
    release = threading.Event()

    @app.task
    def add(x: int, y: int) -> int:
        calls["add"] += 1
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task
    def tsum(numbers: list[int]) -> int:
        calls["tsum"] += 1
        return sum(numbers)

    @app.task
    def fail(x: Any = None) -> None:
        raise Boom(f"no good: {x}")

    @app.task
    def blocked(x: int) -> int:
        release.wait(WAIT)
        return x

    @app.task(ignore_result=True)
    def quiet(x: int) -> int:
        return x + 1

    @app.task
    def log_error(request: Request, exc: BaseException, traceback: str | None) -> None:
        errors.append((request.id, repr(exc), traceback or ""))

    @app.task
    def on_failed(task_id: str) -> str:
        calls[f"failed:{task_id}"] += 1
        return task_id

    return SimpleNamespace(add=add, mul=mul, tsum=tsum, fail=fail, blocked=blocked,
                           quiet=quiet, log_error=log_error, on_failed=on_failed,
                           calls=calls, errors=errors, release=release)


@pytest.fixture
def worker(app: App, t: Any) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(app, slots=8) as running:
        yield running
    t.release.set()


def test_a_chain_of_three_resolves_to_the_last_result_and_walks_back(
    t: Any, worker: ThreadedWorker,
) -> None:
    result = chain(t.add.s(4, 4), t.mul.s(8), t.mul.s(10)).delay()
    assert isinstance(result, AsyncResult)
    assert result.get(timeout=WAIT) == 640
    assert result.parent is not None
    assert result.parent.get(timeout=WAIT) == 64
    assert result.parent.parent is not None
    assert result.parent.parent.get(timeout=WAIT) == 8
    assert result.parent.parent.parent is None


def test_immutable_steps_ignore_the_previous_result(t: Any, worker: ThreadedWorker) -> None:
    result = (t.add.si(2, 2) | t.add.si(4, 4) | t.add.si(8, 8))()
    assert result.get(timeout=WAIT) == 16
    assert result.parent.get(timeout=WAIT) == 8
    assert result.parent.parent.get(timeout=WAIT) == 4


def test_a_group_of_100_collects_every_result_in_order(t: Any, worker: ThreadedWorker) -> None:
    result = group(t.add.s(i, i) for i in range(100)).delay()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=WAIT) == [i + i for i in range(100)]
    assert result.completed_count() == 100
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert not result.waiting()


def test_a_chord_of_100_calls_its_body_once_with_every_result(
    t: Any, worker: ThreadedWorker,
) -> None:
    result = chord(t.add.s(i, i) for i in range(100))(t.tsum.s())
    assert result.get(timeout=WAIT) == 9900
    header = result.parent
    assert isinstance(header, GroupResult)
    assert header.get(timeout=WAIT) == [i + i for i in range(100)]
    assert t.calls["tsum"] == 1


def test_a_chain_in_a_group_in_a_chord_nests(t: Any, worker: ThreadedWorker) -> None:
    # Given a chord whose header holds a task, a chain, and a group holding a chain,
    # after two steps and before one more
    header = group(
        t.add.s(1),
        chain(t.add.s(2), t.mul.s(10)),
        group(t.add.s(3), chain(t.add.s(4), t.add.s(1))),
    )
    result = chain(t.add.s(0, 1), t.add.s(1), chord(header, t.tsum.s()), t.mul.s(2)).delay()
    # Then every header task got the result before the chord (2), the body got the
    # header's results in order (the nested group's flattened), and the last step the sum
    assert result.parent.get(timeout=WAIT) == 3 + 40 + 5 + 7
    assert result.get(timeout=WAIT) == 2 * (3 + 40 + 5 + 7)
    assert result.parent.parent.get(timeout=WAIT) == [3, 40, [5, 7]]
    assert t.calls["tsum"] == 1


def test_a_group_piped_into_a_task_is_a_chord_and_chains_after_one_step(
    t: Any, worker: ThreadedWorker,
) -> None:
    assert (group(t.add.s(i, i) for i in range(10)) | t.tsum.s())().get(timeout=WAIT) == 90
    # A step followed by a group: the group's members each get the step's result
    fanned = (t.add.s(1, 1) | group(t.mul.s(10), t.mul.s(100))).delay()
    assert isinstance(fanned, GroupResult)
    assert fanned.get(timeout=WAIT) == [20, 200]
    assert fanned.parent is not None
    assert fanned.parent.get(timeout=WAIT) == 2
    # A chord whose body is a chain, and a chord with an empty header
    assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.mul.s(3))().get(
        timeout=WAIT) == 18
    assert chord([], t.tsum.s())().get(timeout=WAIT) == 0


def test_a_chord_with_a_failing_member_fails_at_once_with_chord_error(
    t: Any, worker: ThreadedWorker,
) -> None:
    # Given a chord whose header has a member that fails and one that is still running
    result = chord([t.add.s(1, 1), t.fail.s(7), t.blocked.s(3)], t.tsum.s()).delay()
    # Then the chord fails while that member is still blocked: promptly, not at the end
    with pytest.raises(ChordError, match=r"raised Boom: no good: 7") as caught:
        result.get(timeout=WAIT)
    assert t.fail.name in str(caught.value)
    assert result.state == states.FAILURE
    assert not t.release.is_set()
    t.release.set()
    assert t.calls["tsum"] == 0  # and the body never ran
    assert result.parent.get(timeout=WAIT, propagate=False)[2] == 3


def test_a_failed_step_fails_the_rest_of_its_chain_at_once(
    t: Any, worker: ThreadedWorker,
) -> None:
    result = chain(t.add.s(1, 1), t.fail.s(), t.add.s(5), t.add.s(6)).delay()
    with pytest.raises(Boom, match="no good: 2"):
        result.get(timeout=WAIT)
    assert result.parent.failed()  # the step that never ran has the same failure
    assert result.parent.parent.failed()
    assert result.parent.parent.parent.get(timeout=WAIT) == 2
    assert t.calls["add"] == 1


def test_link_and_link_error_callbacks(t: Any, worker: ThreadedWorker) -> None:
    # A link callback gets the result; a chain of callbacks goes on from there
    linked = t.mul.s(16)
    result = t.add.apply_async((2, 2), link=linked)
    assert result.get(timeout=WAIT) == 4
    # link_error: a (request, exc, traceback) errback runs in the worker, a one-argument
    # errback is sent with the failed task's id
    failed = t.fail.apply_async((1,), link_error=[t.log_error.s(), t.on_failed.s()])
    with pytest.raises(Boom):
        failed.get(timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while (not t.errors or not t.calls[f"failed:{failed.id}"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    [(request_id, exc, traceback)] = t.errors
    assert request_id == failed.id
    assert "Boom('no good: 1')" in exc
    assert "raise Boom" in traceback
    assert t.calls[f"failed:{failed.id}"] == 1
    # on_error() is link_error returning the signature
    again = t.fail.s(2).on_error(t.on_failed.s()).delay()
    with pytest.raises(Boom):
        again.get(timeout=WAIT)


def test_a_task_that_ignores_its_result_still_passes_it_on(
    t: Any, worker: ThreadedWorker,
) -> None:
    assert (t.quiet.s(1) | t.quiet.s() | t.add.s(10)).delay().get(timeout=WAIT) == 13


def test_map_starmap_and_chunks_run_many_calls_per_message(
    t: Any, worker: ThreadedWorker,
) -> None:
    assert ~t.tsum.map([list(range(10)), list(range(100))]) == [45, 4950]
    assert ~t.add.starmap(zip(range(10), range(10), strict=True)) == [i + i for i in range(10)]
    parts = t.add.chunks(zip(range(100), range(100), strict=True), 10)()
    assert parts.get(timeout=WAIT) == [[2 * (10 * c + i) for i in range(10)] for c in range(10)]


def test_async_sending_of_a_workflow(app: App, t: Any, worker: ThreadedWorker) -> None:
    import asyncio

    async def main() -> Any:
        result = await chord([t.add.s(1, 2), t.add.s(3, 4)], t.tsum.s()).adelay()
        return await result.aget(timeout=WAIT)

    assert asyncio.run(main()) == 10


def test_a_chord_member_that_runs_twice_is_counted_once_and_its_body_runs_once(
    app: App, t: Any,
) -> None:
    # Given the messages of a two-member chord, where the last member's message is
    # published twice, as when its worker died after sending the body and before acking
    tree = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())
    result, outgoing = plan(app, tree, (), {}, {})
    app._run_sync(app.publish([outgoing[0], outgoing[1], outgoing[1]]))
    # When a worker runs them all
    with ThreadedWorker(app, slots=1):
        # Then the duplicate member ran (at least once, as promised) but counted once,
        # and the body, sent twice by the two runs, ran once
        assert result.get(timeout=WAIT) == 6
        wait_until_empty(app)
    assert t.calls["add"] == 3
    assert t.calls["tsum"] == 1


def test_a_chain_step_sent_twice_runs_once(app: App, t: Any) -> None:
    # Given a chain whose first step's message is published twice (a crash before its ack)
    result, outgoing = plan(app, chain(t.add.s(1, 1), t.add.s(5)), (), {}, {})
    app._run_sync(app.publish([outgoing[0], outgoing[0]]))
    with ThreadedWorker(app, slots=1):
        assert result.get(timeout=WAIT) == 7
        wait_until_empty(app)
    # Then the first step ran twice and the second, sent by both runs, ran once
    assert t.calls["add"] == 3


def wait_until_empty(app: App) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        [stats] = app._run_sync(app.broker.queue_stats(["celeriac"]))
        if stats.ready == stats.scheduled == stats.in_flight == 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"the queue did not empty: {stats}")
