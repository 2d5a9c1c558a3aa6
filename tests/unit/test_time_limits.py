"""Time limits: soft ones the task can handle, hard ones it cannot, and where they come from.

A real consumer runs in a thread of the test process on the in-memory broker
(``ThreadedWorker``). Limits are a few tenths of a second; a task that must stay stuck
waits on an event the test sets at the end, so no thread outlives its test.
tests/integration/test_limits_workers.py covers worker processes and the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from celeriac import (
    App,
    ConfigurationError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    states,
)
from celeriac.supervisor.deadlines import KILL_MARGIN, Deadlines
from celeriac.testing import ThreadedWorker
from celeriac.worker.deadlines import DeadlineSlot, Entry, Published
from celeriac.worker.options import WorkerOptions

WAIT = 10.0  # seconds any result may take; the limits themselves are far shorter


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://")
    yield app
    app.close()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set when the test ends: tasks that must stay stuck wait on it."""
    event = threading.Event()
    yield event
    event.set()


def test_a_soft_limit_raises_inside_a_sync_task_which_cleans_up(app: App) -> None:
    steps: list[str] = []

    @app.task(soft_time_limit=0.2)
    def careful() -> str:
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            steps.append("cleaned up")
            return "stopped cleanly"

    with ThreadedWorker(app, slots=1):
        started = time.monotonic()
        assert careful.delay().get(timeout=WAIT) == "stopped cleanly"
        assert 0.15 < time.monotonic() - started < 2
        assert steps == ["cleaned up"]


def test_a_soft_limit_the_task_lets_through_fails_it_and_the_thread_serves_on(
    app: App,
) -> None:
    @app.task(soft_time_limit=0.2)
    def busy() -> None:
        while True:
            time.sleep(0.01)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with ThreadedWorker(app, slots=1):
        result = busy.delay()
        with pytest.raises(SoftTimeLimitExceeded):
            result.get(timeout=WAIT)
        assert result.state == states.FAILURE
        assert [add.delay(n, 1).get(timeout=WAIT) for n in range(3)] == [1, 2, 3]


def test_a_hard_limit_fails_a_stuck_sync_task_and_the_worker_runs_on(
    app: App, release: threading.Event,
) -> None:
    # A one-thread worker: if the stuck thread were still its only thread, nothing else
    # could run.
    @app.task(time_limit=0.3)
    def stuck() -> None:
        release.wait(WAIT * 3)  # one blocking call: no soft limit could reach it

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with ThreadedWorker(app, slots=1):
        started = time.monotonic()
        result = stuck.delay()
        with pytest.raises(TimeLimitExceeded, match="time limit of 0.3s"):
            result.get(timeout=WAIT)
        assert 0.25 < time.monotonic() - started < 2
        assert result.state == states.FAILURE
        assert add.delay(2, 3).get(timeout=WAIT) == 5
        release.set()


def test_a_hard_limit_spares_the_other_tasks_running_beside_it(
    app: App, release: threading.Event,
) -> None:
    neighbour_started = threading.Event()

    @app.task(time_limit=0.3)
    def stuck() -> None:
        release.wait(WAIT * 3)

    @app.task
    def neighbour() -> str:
        neighbour_started.set()
        release.wait(WAIT)
        return "finished"

    with ThreadedWorker(app, slots=2):
        beside = neighbour.delay()
        assert neighbour_started.wait(WAIT)
        with pytest.raises(TimeLimitExceeded):
            stuck.delay().get(timeout=WAIT)
        release.set()
        assert beside.get(timeout=WAIT) == "finished"


def test_a_soft_limit_cancels_an_async_task(app: App) -> None:
    seen: list[str] = []

    @app.task(soft_time_limit=0.2)
    async def fetch() -> None:
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    with ThreadedWorker(app, slots=1):
        result = fetch.delay()
        with pytest.raises(SoftTimeLimitExceeded, match="soft time limit of 0.2s"):
            result.get(timeout=WAIT)
        assert seen == ["cancelled"]


def test_an_async_task_that_ignores_its_soft_limit_is_stopped_by_the_hard_one(
    app: App,
) -> None:
    @app.task(soft_time_limit=0.1, time_limit=0.3)
    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # ignores the soft limit
            await asyncio.sleep(WAIT)
        await asyncio.sleep(WAIT)
        return "never"

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    with ThreadedWorker(app, slots=1):
        with pytest.raises(TimeLimitExceeded, match="time limit of 0.3s"):
            stubborn.delay().get(timeout=WAIT)
        assert add.delay(1, 1).get(timeout=WAIT) == 2


@pytest.mark.parametrize(("setting", "option", "call", "fired"), [
    (0.2, None, None, "0.2s"),  # the settings' limit, when nothing else says otherwise
    (WAIT, 0.2, None, "0.2s"),  # the task's option beats the settings
    (WAIT, WAIT, 0.2, "0.2s"),  # the call's option beats both
])
def test_limits_come_from_the_call_then_the_task_then_the_settings(
    app: App, setting: float, option: float | None, call: float | None, fired: str,
) -> None:
    app.conf.task_time_limit = setting

    @app.task(time_limit=option)
    async def slow() -> None:
        await asyncio.sleep(WAIT * 2)

    options = {} if call is None else {"time_limit": call}
    with ThreadedWorker(app, slots=1), \
            pytest.raises(TimeLimitExceeded, match=f"time limit of {fired}"):
        slow.apply_async(**options).get(timeout=WAIT)


def test_a_soft_limit_in_the_settings_applies_to_every_task(app: App) -> None:
    app.conf.update(task_soft_time_limit=0.2)

    @app.task
    async def slow() -> None:
        await asyncio.sleep(WAIT * 2)

    with ThreadedWorker(app, slots=1), pytest.raises(SoftTimeLimitExceeded):
        slow.delay().get(timeout=WAIT)


@pytest.mark.parametrize("bad", [0, -1, "10", True, float("nan")])
def test_time_limits_are_checked_where_they_are_given(app: App, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="task_time_limit must be a number"):
        app.conf.task_time_limit = bad
    with pytest.raises(ConfigurationError, match="task_soft_time_limit"):
        app.conf.update(task_soft_time_limit=bad)
    with pytest.raises(ValueError, match="time_limit must be a number"):
        app.task(time_limit=bad)(lambda: None)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ValueError, match="soft_time_limit must be a number"):
        add.apply_async((1, 2), soft_time_limit=bad)


def test_time_limits_accept_seconds_and_timedeltas(app: App) -> None:
    app.conf.task_time_limit = timedelta(minutes=1)
    assert app.conf.task_time_limit == 60.0

    @app.task(soft_time_limit=timedelta(seconds=5), time_limit=10)
    def add(x: int, y: int) -> int:
        return x + y

    assert (add.options.soft_time_limit, add.options.time_limit) == (5.0, 10.0)


def test_only_a_calls_own_limits_travel_in_its_message(app: App) -> None:
    @app.task(time_limit=30)
    def add(x: int, y: int) -> int:
        return x + y

    plain, _ = app.prepare(add.name, (1, 2), {}, {}, add)
    assert "time_limit" not in plain.to_payload()  # the worker reads the task's own
    _, outgoing = app.prepare(add.name, (1, 2), {},
                              {"time_limit": 5, "soft_time_limit": 4}, add)
    decoded = app.decode_message(outgoing.body)
    assert (decoded.time_limit, decoded.soft_time_limit) == (5.0, 4.0)


def _slot() -> DeadlineSlot:
    entries = multiprocessing.get_context("spawn").RawArray(Entry, 1)
    return DeadlineSlot(entries, 0)


def test_a_limited_task_publishes_its_deadline_for_the_supervisor(
    app: App, release: threading.Event,
) -> None:
    slot = _slot()
    seen: list[Published | None] = []
    stuck_calls: list[str] = []

    @app.task(time_limit=5)
    def quick() -> None:
        seen.append(slot.read())

    @app.task(time_limit=0.3)
    def stuck() -> None:
        release.wait(WAIT * 3)

    with ThreadedWorker(app, slots=1) as worker:
        assert worker.consumer is not None
        worker.consumer.executor.guard.supervise(lambda: stuck_calls.append("replace me"),
                                                 slot, exit_within=30.0)
        result = quick.delay()
        result.get(timeout=WAIT)
        # While it ran: its id, name and hard deadline; after: nothing
        [published] = seen
        assert published is not None
        assert published.task_id == result.id
        assert published.task == quick.name
        assert 4 < published.deadline - time.monotonic() < 5.1
        assert slot.read() is None

        # A hard limit on a stuck thread asks for the process to be replaced, and tells
        # the supervisor how long the replacement may take
        with pytest.raises(TimeLimitExceeded):
            stuck.delay().get(timeout=WAIT)
        assert stuck_calls == ["replace me"]
        exit_deadline = slot.read()
        assert exit_deadline is not None
        assert exit_deadline.task_id is None
        assert 25 < exit_deadline.deadline - time.monotonic() <= 30
        release.set()


def test_the_supervisor_kills_a_process_stuck_past_its_deadline(app: App) -> None:
    # Given a worker process (here: any process) whose published hard deadline passed
    options = WorkerOptions(app_spec="unused", queues=("celeriac",), concurrency=2)
    deadlines = Deadlines(multiprocessing.get_context("spawn"), options)
    deadlines._app = app  # the app the supervisor would load from app_spec
    stuck = subprocess.Popen(["sleep", "60"])
    calm = subprocess.Popen(["sleep", "60"])

    @app.task
    def ran(tag: str) -> str:
        return tag

    try:
        deadlines.slot(0).publish(time.monotonic() - KILL_MARGIN - 0.1, "stuck-id", ran.name)
        deadlines.slot(1).publish(time.monotonic() + 60, "calm-id", ran.name)

        # When the supervisor checks
        deadlines.enforce({0: stuck.pid, 1: calm.pid})

        # Then the stuck one is killed, the other left alone
        assert stuck.wait(WAIT) == -9
        assert calm.poll() is None
        assert deadlines.slot(0).read() is None
        # and the killed task's failure is stored
        with pytest.raises(TimeLimitExceeded, match="worker process was killed"):
            app.AsyncResult("stuck-id").get(timeout=WAIT)
        # And when its message comes back, a worker acks it without running it
        with ThreadedWorker(app, slots=1):
            again = ran.apply_async(("again",), task_id="stuck-id")
            with pytest.raises(TimeLimitExceeded):
                again.get(timeout=WAIT)
            assert ran.delay("other").get(timeout=WAIT) == "other"
    finally:
        for process in (stuck, calm):
            process.kill()
            process.wait()


def test_soft_time_limit_exceeded_has_a_message_when_raised_by_class() -> None:
    assert str(SoftTimeLimitExceeded()) == "soft time limit exceeded"
    assert str(SoftTimeLimitExceeded("over 5s")) == "over 5s"


def test_the_celery_time_limit_examples_run_with_only_the_import_changed(app: App) -> None:
    # From Celery's workers guide ("Time Limits") and tasks guide (task options), with
    # ``from celery.exceptions import ...`` turned into ``from celeriac import ...``.
    from celeriac import SoftTimeLimitExceeded

    cleaned: list[str] = []

    def do_work() -> None:
        while True:
            time.sleep(0.01)

    def clean_up_in_a_hurry() -> None:
        cleaned.append("hurried")

    @app.task
    def mytask() -> None:
        try:
            do_work()
        except SoftTimeLimitExceeded:
            clean_up_in_a_hurry()

    @app.task(time_limit=30, soft_time_limit=25)
    def send_email(to: str) -> str:
        return to

    app.conf.task_time_limit = 60
    with ThreadedWorker(app, slots=1):
        mytask.apply_async(args=[], kwargs={}, time_limit=30, soft_time_limit=0.2) \
            .get(timeout=WAIT)
        assert send_email.delay("someone").get(timeout=WAIT) == "someone"
    assert cleaned == ["hurried"]
