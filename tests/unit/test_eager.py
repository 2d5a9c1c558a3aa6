"""Eager mode: tasks run inline when sent, through the same execution path as a worker."""

from collections.abc import Iterator

import pytest

from celeriac import App, EagerResult, states


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", task_always_eager=True)
    yield app
    app.close()


def test_always_eager_runs_inline_and_sends_nothing(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert result.state == states.SUCCESS
    assert app._run_sync(app.broker.queue_stats(["celeriac"]))[0].ready == 0


def test_eager_async_task(app: App) -> None:
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    assert double.delay(21).get() == 42


def test_eager_still_checks_arguments(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="missing a required argument"):
        add.delay(1)


def test_eager_failure_is_stored_unless_propagating(app: App) -> None:
    @app.task
    def fail() -> None:
        raise KeyError("missing")

    result = fail.delay()
    assert result.failed()
    with pytest.raises(KeyError):
        result.get()
    app.conf.task_eager_propagates = True
    with pytest.raises(KeyError):
        fail.delay()


def test_eager_retries_run_at_once(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: object) -> int:
        attempts.append(flaky.request.retries)
        if len(attempts) < 3:
            raise flaky.retry(countdown=3600)  # not waited for in eager mode
        return len(attempts)

    assert flaky.delay().get() == 3
    assert attempts == [0, 1, 2]


def test_eager_task_can_send_subtasks(app: App) -> None:
    @app.task
    def child(x: int) -> int:
        return x + 1

    @app.task
    def parent(x: int) -> int:
        return child.delay(x).get() * 10

    assert parent.delay(1).get() == 20


def test_apply_runs_here_without_always_eager() -> None:
    app = App("proj", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.apply((1, 2)).get() == 3
    assert add(1, 2) == 3  # calling the task calls the function
    app.close()


def test_testing_plugin_eager_fixture(celeriac_eager_app: App) -> None:
    @celeriac_eager_app.task
    def fail() -> None:
        raise RuntimeError("raised at the call site")

    with pytest.raises(RuntimeError, match="raised at the call site"):
        fail.delay()
