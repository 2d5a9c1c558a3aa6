"""Celery's task hooks with base=, and failures logged with a real exc_info."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from celeriac import App, Task
from celeriac.testing import ThreadedWorker

TIMEOUT = 10


@pytest.fixture
def app() -> Iterator[App]:
    app = App("hooks", broker="memory://", backend="memory://")
    yield app
    app.close()


class Recording(Task[Any, Any]):
    calls: ClassVar[list[tuple[Any, ...]]] = []

    def before_start(self, task_id: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
        self.calls.append(("before_start", args))

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> None:
        self.calls.append(("on_success", retval))

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: str) -> None:
        self.calls.append(("on_failure", repr(exc), "in explode" in einfo))

    def on_retry(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], einfo: str) -> None:
        self.calls.append(("on_retry", repr(exc)))

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple[Any, ...],
                     kwargs: dict[str, Any], einfo: str | None) -> None:
        self.calls.append(("after_return", status))


def explode(x: int) -> None:
    raise ValueError(f"bad {x}")


def test_hooks_run_around_success_and_failure(app: App) -> None:
    Recording.calls = []
    add = app.task(base=Recording)(lambda x, y: x + y)
    boom = app.task(base=Recording, name="hooks.explode")(explode)

    with ThreadedWorker(app):
        assert add.delay(2, 3).get(timeout=TIMEOUT) == 5
        with pytest.raises(ValueError, match="bad 7"):
            boom.delay(7).get(timeout=TIMEOUT)

    assert Recording.calls == [
        ("before_start", (2, 3)), ("on_success", 5), ("after_return", "SUCCESS"),
        ("before_start", (7,)), ("on_failure", "ValueError('bad 7')", True),
        ("after_return", "FAILURE"),
    ]


def test_on_retry_runs_when_another_attempt_is_scheduled(app: App) -> None:
    Recording.calls = []

    @app.task(base=Recording, bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: Task[..., Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=OSError("try again"))
        return "ok"

    with ThreadedWorker(app):
        assert flaky.delay().get(timeout=TIMEOUT) == "ok"
    assert ("after_return", "RETRY") in Recording.calls
    assert [c for c in Recording.calls if c[0] == "on_retry"] == [
        ("on_retry", "OSError('try again')")]
    assert Recording.calls[-1] == ("after_return", "SUCCESS")


def test_a_hook_that_raises_is_logged_and_the_outcome_stands(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Task[Any, Any]):
        def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> None:
            raise RuntimeError("hook bug")

    double = app.task(base=Broken, name="hooks.double")(lambda x: 2 * x)
    with ThreadedWorker(app):
        assert double.delay(4).get(timeout=TIMEOUT) == 8
    assert any("its on_success hook raised" in r.getMessage() for r in caplog.records)


def test_a_base_that_is_not_a_task_class_is_refused(app: App) -> None:
    with pytest.raises(TypeError, match="base must be a subclass of celeriac.Task"):
        app.task(base=object)(explode)  # type: ignore[arg-type]
    assert app.Task is Task


def test_a_failed_task_is_logged_with_exc_info_starting_at_the_users_code(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    boom = app.task(name="hooks.plain_explode")(explode)
    with ThreadedWorker(app), caplog.at_level(logging.ERROR, "celeriac.worker"), \
            pytest.raises(ValueError, match="bad 1"):
        boom.delay(1).get(timeout=TIMEOUT)
    [record] = [r for r in caplog.records if "failed in" in r.getMessage()]
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    frames = traceback.extract_tb(record.exc_info[2])
    assert frames[0].name == "explode"  # the user's frame first, celeriac's left out
