"""Sync producers and waiters on Redis: ``delay()`` and ``get()`` from plain threads.

They do not go through the app's bridge loop but through the broker's and backend's
blocking calls, on one sync connection pool per process. What a user relies on: sends
from many threads at once all land, a forked process gets connections of its own,
``pool_limit`` holds, ``task_track_sent`` still marks SENT, results and states read the
same as through the async API, and a server that forgot its scripts or restarted is
used again without an error.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_harness import SHARED, RedisServer

from celeriac import App, states
from celeriac.backends.redis import RedisBackend
from celeriac.errors import BackendError
from celeriac.task import Task
from celeriac.testing import ThreadedWorker

QUEUE = "celeriac"


def make_app(url: str, **settings: Any) -> App:
    app = App("sync", broker=url, backend=url, **settings)

    @app.task(name="sync.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def add_task(app: App) -> Task[..., int]:
    return app.tasks["sync.add"]


def queued(app: App) -> int:
    [stats] = asyncio.run(app.broker.queue_stats([QUEUE]))  # its client closes with the loop
    return stats.ready + stats.scheduled


@pytest.fixture
def app(shared_redis: str) -> Iterator[App]:
    app = make_app(shared_redis)
    yield app
    app.close()


def send_from_threads(app: App, threads: int, each: int) -> list[str]:
    task = add_task(app)
    sent: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            for i in range(each):
                sent[n].append(task.delay(n, i).id)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(30)
    assert errors == []
    return [task_id for ids in sent for task_id in ids]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool_limit", [None, 2])
def test_sends_from_many_threads_at_once_all_land(shared_redis: str,
                                                  pool_limit: int | None) -> None:
    # Given an app whose broker keeps at most pool_limit connections (None: unbounded)
    app = make_app(shared_redis, broker_transport_options={"pool_limit": pool_limit})
    try:
        # When 8 threads send 50 tasks each at the same time
        ids = send_from_threads(app, threads=8, each=50)

        # Then every send returned a distinct id and every message is queued
        assert len(set(ids)) == 400
        assert queued(app) == 400
        # and the sync pool never opened more connections than allowed
        if pool_limit is not None:
            pool = app.broker._blocking.pool()  # type: ignore[attr-defined]
            assert 1 <= len(pool._connections) <= pool_limit
    finally:
        app.close()


def _send_in_child(app: App, count: int, done: Any) -> None:
    task = add_task(app)
    for i in range(count):
        task.delay(i, i)
    done.put("ok")


@pytest.mark.timeout(60)
def test_a_forked_process_sends_on_connections_of_its_own(app: App) -> None:
    # Given a producer that has sent already (its pool holds an open connection)
    add = add_task(app)
    add.delay(0, 0)

    # When it forks a child that sends while the parent goes on sending
    context = multiprocessing.get_context("fork")
    done = context.Queue()
    child = context.Process(target=_send_in_child, args=(app, 100, done))
    child.start()
    for i in range(100):
        add.delay(i, i)
    child.join(30)

    # Then neither process read the other's replies: both sent everything, no errors
    assert child.exitcode == 0
    assert done.get(timeout=5) == "ok"
    assert queued(app) == 201


@pytest.mark.timeout(60)
def test_get_state_and_send_many_from_a_sync_caller(app: App) -> None:
    add = add_task(app)
    # Sent before any worker runs: PENDING, not ready
    first = add.delay(2, 3)
    assert first.state == states.PENDING
    assert not first.ready()

    with ThreadedWorker(app, slots=4):
        assert first.get(timeout=10) == 5
        results = app.send_many([(add, (n, n)) for n in range(50)])
        assert [r.get(timeout=10) for r in results] == [2 * n for n in range(50)]

    assert first.state == states.SUCCESS
    assert first.successful()
    # A fresh handle on the same id reads the stored outcome
    again = app.AsyncResult(first.id)
    assert again.state == states.SUCCESS
    assert again.get(timeout=1) == 5


@pytest.mark.timeout(60)
def test_task_track_sent_still_marks_sent(shared_redis: str) -> None:
    app = make_app(shared_redis, task_track_sent=True)
    try:
        add = add_task(app)
        result = add.delay(1, 2)
        batch = app.send_many([(add, (n, n)) for n in range(3)])

        assert result.state == states.SENT
        assert {r.state for r in batch} == {states.SENT}
        with ThreadedWorker(app):
            assert result.get(timeout=10) == 3
        assert result.state == states.SUCCESS
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_a_server_that_forgot_its_scripts_or_restarted_is_used_again(
        redis_server: RedisServer) -> None:
    # Given a producer that has sent to its own redis-server (append-only file on)
    app = make_app(redis_server.url)
    try:
        add = add_task(app)
        add.delay(1, 1)

        # When the server forgets its Lua scripts, then restarts (closing every connection)
        client = redis_server.client()
        client.script_flush()
        client.close()
        add.delay(2, 2)
        redis_server.restart()

        # Then sending goes on without an error, on new connections, and nothing is lost
        add.delay(3, 3)
        assert queued(app) == 3
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_an_old_result_whose_wake_up_token_expired_is_read_at_once(app: App) -> None:
    # Given results stored long ago: their wake-up tokens (which live seconds) are gone
    backend = app.backend
    assert isinstance(backend, RedisBackend)
    add = add_task(app)
    with ThreadedWorker(app):
        results = [add.delay(n, n) for n in range(3)]
        assert [r.get(timeout=10) for r in results] == [0, 2, 4]
    client = redis.Redis.from_url(SHARED)
    try:
        client.delete(*(backend.ready_key(r.id) for r in results))
    finally:
        client.close()

    # When they are read again with fresh handles, one after another
    started = time.monotonic()
    again = [app.AsyncResult(r.id).get(timeout=10) for r in results]

    # Then each comes at once, not after a wait for a wake-up that will never come
    assert again == [0, 2, 4]
    assert time.monotonic() - started < 1.0


@pytest.mark.timeout(60)
def test_an_error_reply_is_a_backend_error_and_the_connection_stays_usable(app: App) -> None:
    # Given a result key that another program overwrote with a list
    backend = app.backend
    assert isinstance(backend, RedisBackend)
    client = redis.Redis.from_url(SHARED)
    try:
        client.rpush(backend.result_key("clobbered"), b"x")
    finally:
        client.close()

    # Then reading it is celeriac's BackendError (what callers catch), not redis-py's
    with pytest.raises(BackendError, match="WRONGTYPE"):
        app.AsyncResult("clobbered").get(timeout=1)
    # and the next call works as usual
    assert app.AsyncResult("never-sent").state == states.PENDING
