"""shared_task, include/imports and autodiscover_tasks: where a Celery project's tasks come from."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import App, ConfigurationError, shared, shared_task
from celeriac.loader import load_app
from celeriac.testing import ThreadedWorker


@pytest.fixture(autouse=True)
def forget_shared_tasks() -> Iterator[None]:
    """Shared tasks are process-wide: those declared here must not reach other tests' apps."""
    declared = list(shared._declared)
    yield
    shared._declared[:] = declared


def double(x: int) -> int:
    return 2 * x


def test_a_shared_task_is_registered_on_apps_before_and_after_it_is_declared() -> None:
    # Given an app, then a shared task, then another app
    before = App("before", broker="memory://", backend="memory://")
    task = shared_task(name="shared.double", queue="maths")(double)
    after = App("after", broker="memory://", backend="memory://")

    # Then both apps know it, with its options
    assert before.tasks["shared.double"].fn is double
    assert after.tasks["shared.double"].queue == "maths"
    # And the shared object sends through the current app: the one created last
    assert task.app is after
    assert task(21) == 42  # calling it runs it here, as any task


def test_a_shared_task_runs_on_a_worker_of_the_current_app() -> None:
    task = shared_task(double)
    app = App("proj", broker="memory://", backend="memory://")
    with ThreadedWorker(app):
        assert task.delay(4).get(timeout=10) == 8


def test_shared_task_options_are_checked_at_once() -> None:
    with pytest.raises(TypeError, match="unknown task option 'queu'"):
        shared_task(queu="maths")(double)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throwaway modules; they are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_include_modules_are_imported_when_the_app_is_loaded(project: Path) -> None:
    (project / "inc_app.py").write_text(
        "from celeriac import App\n"
        "app = App('inc', broker='memory://', include=['inc_tasks'])\n")
    (project / "inc_tasks.py").write_text(
        "from inc_app import app\n@app.task\ndef ping():\n    return 'pong'\n")

    app = load_app("inc_app")

    assert "inc_tasks.ping" in app.tasks


def test_a_missing_include_module_is_an_error_naming_it(project: Path) -> None:
    (project / "bad_inc.py").write_text(
        "from celeriac import App\napp = App('x', broker='memory://', include=['nope.tasks'])\n")
    with pytest.raises(ConfigurationError, match="cannot import 'nope.tasks', listed in include"):
        load_app("bad_inc")


def test_autodiscover_finds_tasks_modules_lazily(project: Path) -> None:
    # Given a project whose app autodiscovers in two packages, one without tasks
    for package in ("shop", "blog"):
        (project / package).mkdir()
        (project / package / "__init__.py").write_text("")
    (project / "shop" / "tasks.py").write_text(
        "from celeriac import shared_task\n@shared_task\ndef checkout():\n    return 1\n")
    (project / "auto_app.py").write_text(
        "from celeriac import App\napp = App('auto', broker='memory://')\n"
        "app.autodiscover_tasks(lambda: ['shop', 'blog'])\n")

    # When the app module is imported, nothing is discovered yet (Django may not be ready)
    import auto_app  # type: ignore[import-not-found]
    assert "shop.tasks.checkout" not in auto_app.app.tasks
    # Then loading it as a worker does imports them
    app = load_app("auto_app")
    assert "shop.tasks.checkout" in app.tasks


def test_autodiscover_of_a_missing_package_is_an_error(project: Path) -> None:
    app = App("x", broker="memory://")
    with pytest.raises(ConfigurationError, match="cannot autodiscover tasks in 'nowhere'"):
        app.autodiscover_tasks(["nowhere"], force=True)
