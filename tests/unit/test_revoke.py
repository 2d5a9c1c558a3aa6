"""Revoke and expiry: tasks that must not run, and running tasks that must stop.

A real consumer runs in a thread of the test process on the in-memory broker and
backend. The revocation stores themselves are tested on every backend in
tests/contract/test_revocation_contract.py; worker processes in
tests/integration/test_limits_workers.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import App, ConfigurationError, TaskRevokedError, states
from celeriac.backends import create_backend
from celeriac.backends.revocations import REVOKE, revocation_store
from celeriac.testing import ThreadedWorker
from celeriac.worker import guard as guard_module

WAIT = 10.0


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


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers read revocations every 50 ms instead of every second."""
    monkeypatch.setattr(guard_module, "REVOKE_POLL", 0.05)


def test_a_revoke_sent_before_the_worker_starts_is_honoured(app: App) -> None:
    ran: list[int] = []

    @app.task
    def record(n: int) -> int:
        ran.append(n)
        return n

    # Given tasks queued with no worker running, two of them revoked
    results = [record.delay(n) for n in range(4)]
    app.control.revoke(results[1].id)
    results[3].revoke()

    # When a worker starts
    with ThreadedWorker(app, slots=2):
        # Then the revoked ones are REVOKED without running; the others run
        assert [results[0].get(timeout=WAIT), results[2].get(timeout=WAIT)] == [0, 2]
        for revoked in (results[1], results[3]):
            with pytest.raises(TaskRevokedError, match="revoked before it ran"):
                revoked.get(timeout=WAIT)
            assert revoked.state == states.REVOKED
            assert revoked.ready()
            assert not revoked.successful()
    assert sorted(ran) == [0, 2]


@pytest.mark.usefixtures("fast_polls")
def test_a_running_worker_learns_of_a_revoke_within_a_poll(app: App) -> None:
    ran: list[str] = []

    @app.task
    def record(tag: str) -> str:
        ran.append(tag)
        return tag

    with ThreadedWorker(app):
        # A task waiting for its countdown in the broker, then revoked
        later = record.apply_async(("later",), countdown=0.5)
        later.revoke()
        with pytest.raises(TaskRevokedError):
            later.get(timeout=WAIT)
        assert record.delay("now").get(timeout=WAIT) == "now"
    assert ran == ["now"]


@pytest.mark.usefixtures("fast_polls")
def test_revoke_without_terminate_lets_a_running_task_finish(app: App) -> None:
    started, proceed = threading.Event(), threading.Event()

    @app.task
    def work() -> str:
        started.set()
        proceed.wait(WAIT)
        return "finished"

    with ThreadedWorker(app, slots=1) as worker:
        result = work.delay()
        assert started.wait(WAIT)
        result.revoke()
        assert worker.consumer is not None
        guard = worker.consumer.executor.guard
        deadline = time.monotonic() + WAIT
        while not guard.is_revoked(result.id):  # the worker has read the revoke
            assert time.monotonic() < deadline, "the worker never read the revoke"
            time.sleep(0.01)
        proceed.set()
        assert result.get(timeout=WAIT) == "finished"


@pytest.mark.usefixtures("fast_polls")
def test_terminate_stops_a_running_sync_task(app: App, release: threading.Event) -> None:
    started = threading.Event()

    @app.task
    def forever() -> None:
        started.set()
        release.wait(WAIT * 3)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with ThreadedWorker(app, slots=1):
        result = forever.delay()
        assert started.wait(WAIT)

        app.control.revoke(result.id, terminate=True)

        with pytest.raises(TaskRevokedError, match="terminated while it ran"):
            result.get(timeout=WAIT)
        assert result.state == states.REVOKED
        # the stuck thread is abandoned: a one-slot worker still runs the next task
        assert add.delay(1, 2).get(timeout=WAIT) == 3
        release.set()


@pytest.mark.usefixtures("fast_polls")
def test_terminate_cancels_a_running_async_task(app: App) -> None:
    started = threading.Event()
    seen: list[str] = []

    @app.task
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(WAIT * 3)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    with ThreadedWorker(app, slots=1):
        result = forever.delay()
        assert started.wait(WAIT)
        app.control.terminate(result.id)
        with pytest.raises(TaskRevokedError, match="terminated"):
            result.get(timeout=WAIT)
    assert seen == ["cancelled"]


def test_an_expired_task_is_revoked_not_run(app: App) -> None:
    ran: list[str] = []

    @app.task
    def record(tag: str) -> str:
        ran.append(tag)
        return tag

    # Given a task whose expiry passes while it waits, one revoked and unexpired, and
    # one both revoked and expired
    expired = record.apply_async(("expired",), expires=0.05)
    revoked = record.apply_async(("revoked",), expires=WAIT * 6)
    revoked.revoke()
    both = record.apply_async(("both",), expires=0.05)
    both.revoke()
    time.sleep(0.1)  # the expiry is the behaviour under test

    # When a worker takes them, none runs, and each is REVOKED for its reason
    with ThreadedWorker(app):
        with pytest.raises(TaskRevokedError, match="expired before it ran"):
            expired.get(timeout=WAIT)
        with pytest.raises(TaskRevokedError, match="revoked before it ran"):
            revoked.get(timeout=WAIT)
        with pytest.raises(TaskRevokedError):
            both.get(timeout=WAIT)
        assert record.delay("fresh").get(timeout=WAIT) == "fresh"
    assert ran == ["fresh"]
    assert {expired.state, revoked.state, both.state} == {states.REVOKED}


@pytest.mark.usefixtures("fast_polls")
def test_a_revoked_task_waiting_to_retry_is_not_run_again(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, autoretry_for=(RuntimeError,), default_retry_delay=0.5,
              retry_jitter=False, max_retries=5)
    def flaky(self: object) -> None:
        attempts.append(1)
        raise RuntimeError("try again")

    with ThreadedWorker(app):
        result = flaky.delay()
        deadline = time.monotonic() + WAIT
        while result.state != states.RETRY:  # the first attempt failed: a retry waits
            assert time.monotonic() < deadline, "no retry was scheduled"
            time.sleep(0.01)
        result.revoke()
        with pytest.raises(TaskRevokedError):
            result.get(timeout=WAIT)
    assert len(attempts) == 1


def test_revoke_checks_its_arguments(app: App) -> None:
    with pytest.raises(TypeError, match="task ids are non-empty strings"):
        app.control.revoke(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        app.control.revoke("")


def test_revoke_needs_a_backend_that_keeps_state_on_a_server() -> None:
    # rpc:// results travel in the caller's own reply queue: no server-side store
    app = App("proj", broker="memory://", backend="rpc://guest:guest@127.0.0.1:5672/")
    try:
        assert revocation_store(app.backend) is None
        with pytest.raises(ConfigurationError, match="use a stored result backend"):
            app.control.revoke("some-id")
    finally:
        app.close()


def test_revocations_live_as_long_as_results(app: App) -> None:
    app.conf.result_expires = 0.2
    app.control.revoke("short-lived")
    store = revocation_store(app.backend)
    assert store is not None
    entries, _ = asyncio.run(store.read(""))
    assert [(e.task_id, e.mode) for e in entries] == [("short-lived", REVOKE)]
    assert entries[0].expires_at is not None
    assert entries[0].expires_at - time.time() <= 0.2


def test_each_backend_object_has_one_store() -> None:
    backend = create_backend("memory://")
    assert revocation_store(backend) is revocation_store(backend)
    assert revocation_store(backend) is not revocation_store(create_backend("memory://"))


def test_the_celery_revoke_and_expiry_examples_run_with_only_the_import_changed(
    app: App,
) -> None:
    # From Celery's workers guide ("Revoking tasks") and calling guide ("Expiration").
    from datetime import datetime, timedelta, timezone  # as in Celery's example

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    kwargs: dict[str, int] = {}
    result = add.apply_async((10, 10), expires=60)
    result.revoke()
    app.AsyncResult(result.id).revoke()  # Celery: AsyncResult(id), with its default app
    ids = [add.apply_async((10, 10), kwargs, expires=datetime.now(timezone.utc)  # noqa: UP017
                           + timedelta(days=1)).id for _ in range(4)]
    app.control.revoke(ids[0])
    app.control.revoke(ids[1], terminate=True)
    app.control.revoke(ids[2], terminate=True, signal="SIGKILL")
    app.control.revoke(ids[3:])
    with ThreadedWorker(app):
        for task_id in [result.id, *ids]:
            with pytest.raises(TaskRevokedError):
                app.AsyncResult(task_id).get(timeout=WAIT)


def test_a_worker_reads_every_revocation_before_its_first_task(
    app: App, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given more revocations than one read returns, the first ones expired by now
    from celeriac.backends import revocations

    monkeypatch.setattr(revocations, "READ_BATCH", 2)

    @app.task
    def record(tag: str) -> str:
        return tag

    store = revocation_store(app.backend)
    assert store is not None
    asyncio.run(store.add(["gone-1", "gone-2", "gone-3"], REVOKE, 0.01))
    time.sleep(0.02)  # the expiry is the behaviour under test
    late = [record.delay(f"late-{n}") for n in range(3)]
    app.control.revoke([result.id for result in late])

    # When a worker starts, then none of them runs
    with ThreadedWorker(app):
        for result in late:
            with pytest.raises(TaskRevokedError):
                result.get(timeout=WAIT)
