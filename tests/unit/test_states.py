"""Task state truth: what AsyncResult.state says, and when SENT tells queued from unknown.

See docs/states.md. In-process workers on the memory broker and backend, plus the
``add_many`` primitive that SENT relies on, on every backend that keeps markers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis_db10

from celeriac import App, AsyncResult, states
from celeriac.backends import ResultBackend, create_backend
from celeriac.outcome import Outcome
from celeriac.testing import ThreadedWorker


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


def test_without_tracking_an_unknown_id_and_a_queued_task_both_read_pending(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    queued = add.delay(1, 2)  # no worker: it waits in its queue
    assert queued.state == states.PENDING
    assert app.AsyncResult("no-such-task").state == states.PENDING


def test_with_track_sent_a_queued_task_reads_sent_and_an_unknown_id_pending(app: App) -> None:
    app.conf.task_track_sent = True
    gate = threading.Event()

    @app.task
    def add(x: int, y: int) -> int:
        gate.wait(5)
        return x + y

    # Given a task sent while no worker runs
    queued = add.delay(1, 2)
    # Then it reads SENT, and an id nobody sent reads PENDING
    assert queued.state == states.SENT
    assert not queued.ready()
    assert queued.result is None
    assert app.AsyncResult(str(uuid.uuid4())).state == states.PENDING
    # and once a worker ran it, its final state replaces SENT
    with ThreadedWorker(app):
        gate.set()
        assert queued.get(timeout=5) == 3
    assert queued.state == states.SUCCESS


def test_every_way_of_sending_records_sent(app: App) -> None:
    app.conf.task_track_sent = True

    @app.task
    def noop() -> None: ...

    @app.task(ignore_result=True)
    def fire_and_forget() -> None: ...

    async def from_async_code() -> str:
        return (await noop.adelay()).id

    sent = [noop.delay(), noop.apply_async(countdown=60), app.send_task(noop.name),
            app.AsyncResult(asyncio.run(from_async_code())),
            *app.send_many([(noop, ()), (noop.name, ())])]
    assert [r.state for r in sent] == [states.SENT] * 6
    # A task that keeps no result gets no marker: nothing would ever replace it
    assert fire_and_forget.delay().state == states.PENDING


def test_a_retry_state_replaces_sent(app: App) -> None:
    app.conf.task_track_sent = True

    @app.task(bind=True, max_retries=1)
    def flaky(self: object) -> None:
        raise flaky.retry(exc=ConnectionError("down"), countdown=30)

    result = flaky.delay()
    assert result.state == states.SENT
    with ThreadedWorker(app):
        _wait_for_state(result, states.RETRY)
    assert isinstance(result.result, ConnectionError)


def _wait_for_state(result: AsyncResult[object], state: str, timeout: float = 5.0) -> None:
    started = time.monotonic()
    while result.state != state:
        assert time.monotonic() - started < timeout, f"still {result.state}, not {state}"
        time.sleep(0.01)


def test_a_sent_marker_never_replaces_what_a_worker_stored(app: App) -> None:
    # Given a result already stored (the worker was faster than the producer's marker)
    backend = app.backend
    done = app.encode_outcome(Outcome.success(5, "proj.add"))
    sent = app.encode_outcome(Outcome(states.SENT, task="proj.add"))
    app._run_sync(backend.store_many({"t1": done}, None))
    # When the marker arrives late
    app._run_sync(backend.add_many({"t1": sent, "t2": sent}, None))
    # Then the result stands, and only the id with nothing stored got the marker
    assert app.AsyncResult("t1").state == states.SUCCESS
    assert app.AsyncResult("t2").state == states.SENT


# -- the add_many primitive, on every backend that keeps markers ---------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    with contextlib.ExitStack() as stack:
        if request.param == "memory":
            url, options = "memory://", {}
        elif request.param == "sqlite":
            url, options = f"sqlite:///{tmp_path / 'results.db'}", {}
        else:
            prefix = stack.enter_context(redis_db10.isolated_prefix("states"))
            url, options = redis_db10.URL, {"key_prefix": prefix}
        yield create_backend(url, options)


def test_add_many_stores_only_where_nothing_is_stored(backend: ResultBackend) -> None:
    async def check() -> None:
        await backend.connect()
        try:
            await backend.store_many({"done": b"final"}, None)
            await backend.add_many({"done": b"marker", "new": b"marker"}, 60)
            assert await backend.load_many(["done", "new"]) == {"done": b"final",
                                                                "new": b"marker"}
            # An expired result is as good as none
            await backend.store_many({"old": b"gone"}, 0.05)
            await asyncio.sleep(0.1)
            await backend.add_many({"old": b"marker"}, 60)
            assert await backend.load("old") == b"marker"
        finally:
            await backend.close()

    asyncio.run(check())


def test_task_track_started_stores_started_with_the_worker_while_it_runs(app: App) -> None:
    app.conf.task_track_started = True
    running, finish = threading.Event(), threading.Event()

    @app.task
    def slow() -> str:
        running.set()
        finish.wait(5)
        return "done"

    @app.task(track_started=False)
    def untracked() -> str:
        running.set()
        finish.wait(5)
        return "done"

    with ThreadedWorker(app, hostname="celeriac@test"):
        result = slow.delay()
        assert running.wait(5)
        _wait_for_state(result, states.STARTED)
        assert result.info == {"pid": os.getpid(), "hostname": "celeriac@test"}
        assert not result.ready()
        finish.set()
        assert result.get(timeout=5) == "done"
        # A task may opt out (Celery's track_started option)
        running.clear()
        finish.clear()
        other = untracked.delay()
        assert running.wait(5)
        assert other.state == states.PENDING
        finish.set()
        assert other.get(timeout=5) == "done"
