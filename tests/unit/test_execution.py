"""What happens to a task on a worker: results, failures, retries, expiry, rejection.

These run a real consumer in a thread of the test process on the in-memory broker;
tests/integration covers the same paths with worker processes on SQLite.
"""

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import (
    App,
    MaxRetriesExceededError,
    Reject,
    TaskError,
    TaskRevokedError,
    TimeoutError,
    states,
)
from celeriac.testing import ThreadedWorker


class PaymentDeclined(Exception):
    pass


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://")
    yield app
    app.close()


def test_sync_and_async_tasks_return_their_values(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def slow_add(x: int, y: int) -> int:
        await asyncio.sleep(0.01)
        return x + y

    with ThreadedWorker(app):
        assert add.delay(2, 3).get(timeout=5) == 5
        result = slow_add.delay(4, 5)
        assert result.get(timeout=5) == 9
        assert result.state == states.SUCCESS
        assert result.successful()
        assert result.ready()
        assert result.args is None  # only a failure keeps its call's arguments


def test_failure_reraises_the_original_type_with_the_remote_traceback(app: App) -> None:
    @app.task
    def charge(amount: int) -> None:
        raise PaymentDeclined(f"card declined for {amount}")

    with ThreadedWorker(app):
        result = charge.delay(10)
        with pytest.raises(PaymentDeclined, match="card declined for 10") as caught:
            result.get(timeout=5)
    assert result.failed()
    assert result.state == states.FAILURE
    assert "raise PaymentDeclined" in (result.traceback or "")
    # it starts at the task's own code, without celeriac's frames calling it
    assert "celeriac/worker" not in (result.traceback or "")
    assert "Remote traceback" in caught.value.__notes__[0]
    assert isinstance(result.result, PaymentDeclined)
    # the failed call's arguments are kept with it, to send it again
    assert (result.args, result.kwargs) == ([10], {})


def test_exception_that_cannot_be_rebuilt_becomes_task_error(app: App) -> None:
    foreign = type("ForeignError", (Exception,), {"__module__": "not.imported.here"})

    @app.task
    def fail() -> None:
        raise foreign("from elsewhere")

    with ThreadedWorker(app):
        result = fail.delay()
        with pytest.raises(TaskError) as caught:
            result.get(timeout=5)
    assert caught.value.exc_type == "not.imported.here.ForeignError"
    assert caught.value.exc_message == "from elsewhere"
    assert "from elsewhere" in (caught.value.remote_traceback or "")


def test_get_without_propagate_returns_the_exception(app: App) -> None:
    @app.task
    def fail() -> None:
        raise ValueError("nope")

    with ThreadedWorker(app):
        error = fail.delay().get(timeout=5, propagate=False)
    assert isinstance(error, ValueError)


def test_get_times_out_with_a_clear_error(app: App) -> None:
    @app.task
    def never_consumed() -> None: ...

    result = never_consumed.delay()  # no worker
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within"):
        result.get(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2
    assert result.state == states.PENDING


def test_bound_task_retries_until_it_succeeds(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=5)
    def flaky(self: object) -> str:
        retries = app.tasks[flaky.name].request.retries
        attempts.append(retries)
        if retries < 2:
            raise flaky.retry(exc=ConnectionError("try again"), countdown=0.05)
        return "ok"

    with ThreadedWorker(app):
        assert flaky.delay().get(timeout=5) == "ok"
    assert attempts == [0, 1, 2]


def test_retry_past_max_retries_fails_with_the_last_error(app: App) -> None:
    @app.task(bind=True, max_retries=2)
    def stubborn(self: object) -> None:
        raise stubborn.retry(exc=ConnectionError("still down"), countdown=0.01)

    @app.task(bind=True, max_retries=1)
    def no_exc(self: object) -> None:
        raise no_exc.retry(countdown=0.01)

    with ThreadedWorker(app):
        with pytest.raises(ConnectionError, match="still down"):
            stubborn.delay().get(timeout=5)
        with pytest.raises(MaxRetriesExceededError, match="retried 1 times"):
            no_exc.delay().get(timeout=5)


def test_autoretry_with_backoff_then_failure(app: App) -> None:
    calls: list[float] = []

    @app.task(autoretry_for=(ConnectionError,), max_retries=3, retry_backoff=0.01,
              retry_jitter=False)
    def fetch() -> None:
        calls.append(time.monotonic())
        raise ConnectionError("unreachable")

    with ThreadedWorker(app):
        result = fetch.delay()
        with pytest.raises(ConnectionError, match="unreachable"):
            result.get(timeout=5)
    assert len(calls) == 4  # the first attempt and three retries
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert gaps[2] >= 0.04  # 0.01 * 2**2: backoff grows


def test_errors_not_listed_in_autoretry_fail_at_once(app: App) -> None:
    calls: list[int] = []

    @app.task(autoretry_for=(ConnectionError,), max_retries=3)
    def parse() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with ThreadedWorker(app), pytest.raises(ValueError, match="bad input"):
        parse.delay().get(timeout=5)
    assert calls == [1]


def test_ignore_result_runs_but_stores_nothing(app: App) -> None:
    ran = threading.Event()

    @app.task(ignore_result=True)
    def fire_and_forget() -> str:
        ran.set()
        return "unseen"

    with ThreadedWorker(app):
        result = fire_and_forget.delay()
        assert ran.wait(5)
    assert result.state == states.PENDING


def test_expired_task_is_revoked_not_run(app: App) -> None:
    ran: list[int] = []

    @app.task
    def report() -> None:
        ran.append(1)

    result = report.apply_async(expires=0.01)
    time.sleep(0.05)  # time passing is the behaviour under test
    with ThreadedWorker(app), pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=5)
    assert result.state == states.REVOKED
    assert ran == []


def test_reject_dead_letters_with_the_reason(app: App) -> None:
    @app.task
    def picky() -> None:
        raise Reject("payload references a deleted account")

    @app.task
    def fine() -> str:
        return "still working"

    with ThreadedWorker(app):
        picky.delay()
        assert fine.delay().get(timeout=5) == "still working"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not app._run_sync(app.broker.dead_letters()):
            time.sleep(0.01)
    dead = app._run_sync(app.broker.dead_letters())
    assert [d.reason for d in dead] == ["rejected by the task: payload references a "
                                        "deleted account"]


def test_request_context_is_per_task(app: App) -> None:
    @app.task(bind=True)
    def whoami(self: object) -> str | None:
        return whoami.request.id

    @app.task(bind=True)
    async def awhoami(self: object) -> str | None:
        return awhoami.request.id

    with ThreadedWorker(app):
        results = [whoami.delay() for _ in range(5)] + [awhoami.delay() for _ in range(5)]
        assert [r.get(timeout=5) for r in results] == [r.id for r in results]


def test_forget_deletes_the_result(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with ThreadedWorker(app):
        result = add.delay(1, 1)
        assert result.get(timeout=5) == 2
    fresh = app.AsyncResult(result.id)
    assert fresh.state == states.SUCCESS
    fresh.forget()
    assert app.AsyncResult(result.id).state == states.PENDING


@pytest.mark.parametrize("acks_late", [True, False])
def test_acks_late_keeps_the_message_until_the_task_ends(app: App, acks_late: bool) -> None:
    release = threading.Event()
    running = threading.Event()

    @app.task(acks_late=acks_late)
    def hold() -> None:
        running.set()
        release.wait(5)

    with ThreadedWorker(app):
        result = hold.delay()
        assert running.wait(5)
        in_flight = app._run_sync(app.broker.queue_stats(["celeriac"]))[0].in_flight
        release.set()
        result.get(timeout=5)
    # Late acks: the message stays leased while the task runs, so a crash re-runs it.
    # Early acks (at most once): it is gone before the task starts.
    assert in_flight == (1 if acks_late else 0)


def test_aget_waits_without_blocking_the_loop(app: App) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async def call() -> int:
        result = await add.adelay(20, 22)
        return await result.aget(timeout=5)

    with ThreadedWorker(app):
        assert asyncio.run(call()) == 42
