"""Retries in full: retry() options, retry_kwargs, backoff, and how retries run out.

In-process workers on the memory broker; tests/unit/test_execution.py covers the basic
retry loop, tests/integration/test_retries.py worker processes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celeriac import App, MaxRetriesExceededError, Task, states
from celeriac.testing import ThreadedWorker


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


def test_retry_kwargs_give_autoretry_its_countdown_and_limit(app: App) -> None:
    calls: list[float] = []

    @app.task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 2,
                                                             "countdown": 0.1})
    def fetch() -> None:
        calls.append(time.monotonic())
        raise ConnectionError(f"attempt {len(calls)}")

    with ThreadedWorker(app):
        result = fetch.delay()
        # The task ends FAILURE with the last error once its two retries are used up
        with pytest.raises(ConnectionError, match="attempt 3"):
            result.get(timeout=5)
    assert result.state == states.FAILURE
    assert len(calls) == 3
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(calls))


def test_retry_can_change_the_arguments_queue_and_priority(app: App) -> None:
    seen: list[tuple[Any, ...]] = []

    @app.task(bind=True)
    def paged(self: Task[..., Any], page: int, size: int = 10) -> int:
        seen.append((page, size, self.request.queue, self.request.priority))
        if page < 3:
            raise self.retry(args=(page + 1,), kwargs={"size": size * 2}, countdown=0,
                             queue="pages", priority=page + 5)
        return page

    with ThreadedWorker(app, queues=["celeriac", "pages"]):
        assert paged.delay(1).get(timeout=5) == 3
    assert seen == [(1, 10, "celeriac", 0), (2, 20, "pages", 6), (3, 40, "pages", 7)]


def test_retry_at_an_eta_naive_datetimes_being_utc(app: App) -> None:
    etas: list[float | None] = []

    @app.task(bind=True)
    def later(self: Task[..., Any], naive: bool) -> str:
        etas.append(self.request.eta)
        if self.request.retries == 0:
            when = datetime.now(UTC) + timedelta(seconds=0.2)
            raise self.retry(eta=when.replace(tzinfo=None) if naive else when)
        return "ok"

    with ThreadedWorker(app):
        for naive in (True, False):
            sent = time.time()
            assert later.delay(naive).get(timeout=5) == "ok"
            eta = etas[-1]
            assert eta is not None
            assert 0.15 < eta - sent < 0.5, eta - sent


def test_max_retries_given_to_retry_overrides_the_tasks(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=10)
    def impatient(self: Task[..., Any]) -> None:
        attempts.append(self.request.retries)
        raise self.retry(countdown=0, max_retries=1)

    @app.task(bind=True, max_retries=None)
    def patient(self: Task[..., Any]) -> int:
        if self.request.retries < 12:  # None: no limit at all
            raise self.retry(countdown=0)
        return self.request.retries

    with ThreadedWorker(app):
        with pytest.raises(MaxRetriesExceededError, match="max_retries=1"):
            impatient.delay().get(timeout=5)
        assert patient.delay().get(timeout=5) == 12
    assert attempts == [0, 1]


def test_exhausted_retries_end_in_failure_with_the_last_error_not_retry(app: App) -> None:
    @app.task(bind=True, max_retries=2)
    def doomed(self: Task[..., Any]) -> None:
        raise self.retry(exc=TimeoutError(f"try {self.request.retries}"), countdown=0)

    with ThreadedWorker(app):
        result = doomed.delay()
        with pytest.raises(TimeoutError, match="try 2"):
            result.get(timeout=5)
    assert result.state == states.FAILURE
    assert "TimeoutError: try 2" in (result.traceback or "")


def test_retry_backoff_doubles_up_to_its_cap_with_optional_jitter(app: App) -> None:
    @app.task(retry_backoff=True, retry_backoff_max=20, retry_jitter=False)
    def plain() -> None: ...

    @app.task(retry_backoff=3, retry_backoff_max=100, retry_jitter=True)
    def jittered() -> None: ...

    assert [plain.backoff_countdown(n) for n in range(7)] == [1, 2, 4, 8, 16, 20, 20]
    for n in range(8):
        assert 0 <= jittered.backoff_countdown(n) <= min(100, 3 * 2 ** n)


@pytest.mark.parametrize(("call", "message"), [
    ({"countdown": 1, "eta": datetime.now(UTC)}, "countdown or eta, not both"),
    ({"routing_key": "x"}, "unexpected option 'routing_key'"),
    ({"priority": 256}, "priority must be a whole number"),
])
def test_malformed_retry_calls_fail_the_task_clearly(app: App, call: dict[str, Any],
                                                     message: str) -> None:
    @app.task(bind=True)
    def bad(self: Task[..., Any]) -> None:
        raise self.retry(**call)

    with ThreadedWorker(app), pytest.raises((TypeError, ValueError), match=message):
        bad.delay().get(timeout=5)


def test_unknown_retry_kwargs_are_refused_at_decoration(app: App) -> None:
    with pytest.raises(TypeError, match="unknown option 'max_retrys'"):
        @app.task(autoretry_for=(OSError,), retry_kwargs={"max_retrys": 3})
        def typo() -> None: ...
