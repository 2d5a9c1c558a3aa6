"""The dashboard's ingest (``dashboard.ingest``): events published on the real bus of an
SQLite, a Redis and a PostgreSQL broker end in the history the broker's file or server
keeps (PostgreSQL: a database of the test's own, dropped after); a
restarted ingest reads back what it missed; a failing store is retried; trims run.

No worker process: events are published as a worker publishes them (``event.encode``).
A worker's events end to end: the api helper's tests/integration/dashboard/.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from celeriac import App
from celeriac.bus.base import EVENTS
from celeriac.dashboard.history import TaskRecord
from celeriac.dashboard.history_memory import MemoryHistory
from celeriac.dashboard.history_open import open_history
from celeriac.dashboard.history_postgresql import PostgreSQLHistory
from celeriac.dashboard.history_redis import RedisHistory
from celeriac.dashboard.history_sqlite import SQLiteHistory
from celeriac.dashboard.ingest import HistoryIngest
from celeriac.events.event import FIELDS, encode

REDIS_URL = "redis://127.0.0.1:6379/5"
WAIT = 10.0
_seq = 0


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    if request.param == "sqlite":
        app = App("proj", broker=f"sqlite:///{tmp_path / 'broker.db'}")
        yield app
        app.close()
        return
    if request.param == "postgresql":
        yield from _on_postgresql()
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not running at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not running at {REDIS_URL}")
    prefix = f"ingest:{uuid.uuid4().hex[:12]}:"
    app = App("proj", broker=REDIS_URL, broker_transport_options={"key_prefix": prefix})
    try:
        yield app
    finally:
        app.close()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _on_postgresql() -> Iterator[App]:
    import psycopg

    server = "postgresql://postgres@127.0.0.1:5432"
    name = f"celeriac_ingest_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not running at {server}: {exc}")
        pytest.skip(f"PostgreSQL is not running at {server}")
    app = App("proj", broker=f"{server}/{name}?schema=dash")
    try:
        yield app
    finally:
        app.close()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def compact(kind: str, at: float, **fields: Any) -> list[Any]:
    return [kind, at, *(fields.get(name) for name in FIELDS[kind])]


def run_of(task_id: str, name: str, at: float) -> list[list[Any]]:
    """A task's received/started/succeeded, as a worker emits them."""
    task = {"uuid": task_id, "name": name, "queue": "celery"}
    return [compact("task-received", at, args="(1, 2)", kwargs="{'key': 'sk-secret'}",
                    retries=0, **task),
            compact("task-started", at + 0.001, **task),
            compact("task-succeeded", at + 0.002, runtime=0.001, result_size=1, **task)]


async def publish(app: App, events: Sequence[Sequence[Any]], hostname: str = "w1@h"
                  ) -> None:
    global _seq
    bus = await app.open_bus()
    try:
        await bus.publish(EVENTS, [encode(hostname, 42, _seq, [tuple(e) for e in events])])
        _seq += len(events)
    finally:
        await bus.close()


async def until(what: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not await what():
        assert time.monotonic() < deadline, "not within the wait"
        await asyncio.sleep(0.02)


async def state_of(store: Any, task_id: str) -> str | None:
    record: TaskRecord | None = await store.get(task_id)
    return record.state if record is not None else None


def test_events_on_the_bus_become_the_history_of_the_brokers_own_store(app: App) -> None:
    @app.task(name="proj.secret", dashboard_hide_args=True)
    def secret(a: int, b: int, key: str = "") -> int:
        return a + b

    @app.task(name="proj.plain")
    def plain(a: int, b: int, key: str = "") -> int:
        return a + b

    async def main() -> None:
        store = open_history(app)
        if app.broker.scheme == "sqlite":  # the broker's own file, or its server & prefix
            assert isinstance(store, SQLiteHistory)
            assert store.path == app.broker.path  # type: ignore[attr-defined]
        elif app.broker.scheme == "postgresql":  # the broker's schema
            assert isinstance(store, PostgreSQLHistory)
            assert store.settings == app.broker.settings  # type: ignore[attr-defined]
        else:
            assert isinstance(store, RedisHistory)
            assert store.prefix == app.broker.prefix + "dashboard:"  # type: ignore[attr-defined]
        ingest = HistoryIngest(app, store)
        await asyncio.to_thread(ingest.start)
        now = time.time()
        await publish(app, [compact("worker-online", now, freq=2.0, active=0, processed=0),
                            *run_of("p1", "proj.plain", now), *run_of("s1", "proj.secret",
                                                                       now)])
        await until(lambda: _all_succeeded(store, "p1", "s1"))
        plain_record, secret_record = await store.get("p1"), await store.get("s1")
        assert plain_record is not None
        assert secret_record is not None
        assert (plain_record.args, plain_record.kwargs) == ("(1, 2)", "{'key': 'sk-secret'}")
        assert (secret_record.args, secret_record.kwargs) == (None, None)  # never stored
        assert (plain_record.worker, plain_record.runtime) == ("w1@h", 0.001)
        assert (ingest.version >= 1, ingest.applied) == (True, 6)
        assert (0 <= ingest.lag < WAIT, ingest.events_per_second > 0) == (True, True)
        assert [w.hostname for w in ingest.view.workers()] == ["w1@h"]
        await asyncio.to_thread(ingest.close)
        await store.close()

        # Down for a while: what happened meanwhile is read back on restart.
        await publish(app, run_of("late", "proj.plain", time.time()))
        store = open_history(app)
        ingest = HistoryIngest(app, store)
        await asyncio.to_thread(ingest.start)
        await until(lambda: _all_succeeded(store, "late", "p1", "s1"))
        await asyncio.to_thread(ingest.close)
        await store.close()

    asyncio.run(main())


async def _all_succeeded(store: Any, *ids: str) -> bool:
    return all([await state_of(store, task_id) == "SUCCESS" for task_id in ids])


class FlakyHistory(MemoryHistory):
    """Fails its first write, as a store whose server is briefly unreachable."""

    def __init__(self) -> None:
        super().__init__(max_tasks=1)
        self.failures = 1

    async def apply(self, events: Sequence[dict[str, Any]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        await super().apply(events)


def test_a_failed_write_is_logged_once_and_read_again_and_trims_run(
        caplog: pytest.LogCaptureFixture) -> None:
    app = App("proj", broker="memory://")
    store = FlakyHistory()
    ingest = HistoryIngest(app, store, trim_interval=0.05)

    async def main() -> None:
        await asyncio.to_thread(ingest.start)
        now = time.time()
        await publish(app, [*run_of("a", "proj.x", now), *run_of("b", "proj.x", now + 1)])
        # Read again after the reconnect (a second later); the trim keeps max_tasks=1.
        await until(lambda: _is(store, "b"))
        await until(lambda: _count(store, 1))
        await until(lambda: _trimmed(ingest))

    with caplog.at_level(logging.ERROR, logger="celeriac.dashboard"):
        try:
            asyncio.run(main())
        finally:
            ingest.close()
            app.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dashboard: cannot follow the events (retrying in 1s): "
                     "ConnectionError: store unreachable"]


async def _is(store: MemoryHistory, task_id: str) -> bool:
    return await state_of(store, task_id) == "SUCCESS"


async def _count(store: MemoryHistory, count: int) -> bool:
    return len(store) == count


async def _trimmed(ingest: HistoryIngest) -> bool:
    return ingest.trimmed >= 1
