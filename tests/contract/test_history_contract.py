"""The dashboard's history stores agree: memory, an SQLite file, a Redis server, a
PostgreSQL schema (the contract suites' database, a schema of each test's own).

Every query is checked against what ``TaskQuery.matches`` and ``TaskQuery.order`` say
(the memory store's whole implementation), so a store that filters or sorts on its
server (SQL, Redis index sets) must mean the same. Redis: database 5, a key prefix per
test, its keys deleted after.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.dashboard.history import (
    GRAIN,
    SORTS,
    HistoryStore,
    TaskQuery,
    TaskRecord,
    merge_all,
)
from celeriac.dashboard.history_memory import MemoryHistory
from celeriac.dashboard.history_open import history_from_url

REDIS_URL = "redis://127.0.0.1:6379/5"

Opener = Callable[..., HistoryStore]


@pytest.fixture(params=["memory", "sqlite", "redis", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens store objects on one place (a memory store: the same object each time)."""
    if request.param == "postgresql":
        url, options = request.getfixturevalue("pg_isolated")
        on_schema = f"{url}?schema={options['schema']}"
        yield lambda max_tasks=100_000, ttl=3600.0: history_from_url(on_schema, max_tasks,
                                                                     ttl)
        return
    if request.param == "memory":
        shared: dict[str, MemoryHistory] = {}

        def memory(max_tasks: int = 100_000, ttl: float = 3600.0) -> HistoryStore:
            store = shared.setdefault("store", MemoryHistory(max_tasks, ttl))
            store.max_tasks, store.ttl = max_tasks, ttl
            return store

        yield memory
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'celeriac.db'}"
        yield lambda max_tasks=100_000, ttl=3600.0: history_from_url(url, max_tasks, ttl)
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
    prefix = f"history:{uuid.uuid4().hex[:12]}:"
    url = f"{REDIS_URL}?key_prefix={prefix}"
    try:
        yield lambda max_tasks=100_000, ttl=3600.0: history_from_url(url, max_tasks, ttl)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def task_events(task_id: str, at: float, *, name: str = "proj.add", queue: str = "celery",
                worker: str = "w1@h", outcome: str | None = "task-succeeded",
                args: str = "()", root: str | None = None, runtime: float = 0.1
                ) -> list[dict[str, Any]]:
    """One task's events from task-received, ``outcome`` last (None: still running)."""
    common = {"uuid": task_id, "name": name, "queue": queue, "root_id": root or task_id,
              "parent_id": root, "hostname": worker, "pid": 1}
    events = [
        {"type": "task-received", "timestamp": at, "args": args, "kwargs": "{}",
         "retries": 0, "eta": None, "expires": None, **common},
        {"type": "task-started", "timestamp": at + 0.01, **common},
    ]
    if outcome == "task-failed":
        events.append({"type": outcome, "timestamp": at + 0.02, "exception": "E: x",
                       "traceback": "Traceback", "runtime": runtime, **common})
    elif outcome is not None:
        events.append({"type": outcome, "timestamp": at + 0.02, "runtime": runtime,
                       **common})
    return events


def varied_tasks(now: float) -> list[dict[str, Any]]:
    """30 tasks of two names, three queues, two workers, every end, some at one moment."""
    events: list[dict[str, Any]] = []
    outcomes = ["task-succeeded", "task-failed", None, "task-revoked", "task-succeeded"]
    for i in range(30):
        at = now - 100 + (i // 3)  # three tasks per moment: ties broken by id
        events += task_events(
            f"task-{i:02d}", at, name="proj.add" if i % 2 else "proj.mul",
            queue=("celery", "high", "low")[i % 3], worker=("a@h", "b@h")[i % 4 // 2],
            outcome=outcomes[i % 5], args=f"('Item {i}', '{'50%' if i % 7 == 0 else i}')",
            root="task-00" if i % 10 == 0 else None, runtime=float(i % 6))
    return events


def reference(events: list[dict[str, Any]]) -> dict[str, TaskRecord]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_task.setdefault(event["uuid"], []).append(event)
    return {task_id: merge_all(None, task_id, evs) for task_id, evs in by_task.items()}


def expected(records: dict[str, TaskRecord], query: TaskQuery) -> tuple[list[str], int]:
    matched = [r for r in records.values() if query.matches(r)]
    page = query.order(matched)[query.offset:query.offset + query.limit]
    return [r.id for r in page], len(matched)


async def apply_in_batches(store: HistoryStore, events: list[dict[str, Any]],
                           size: int = 7) -> None:
    for start in range(0, len(events), size):
        await store.apply(events[start:start + size])


async def test_search_filters_sorts_and_pages_as_the_query_says(open_store: Opener) -> None:
    now = time.time()
    events = varied_tasks(now)
    store = open_store()
    heartbeat = {"type": "worker-heartbeat", "hostname": "a@h", "timestamp": now}
    await apply_in_batches(store, [*events, heartbeat])  # not a task event: left out
    records = reference(events)
    assert await store.get("task-07") == records["task-07"]
    assert await store.get("nope") is None
    queries = [TaskQuery(sort=sort, descending=desc, limit=7, offset=offset)
               for sort in SORTS for desc in (True, False) for offset in (0, 7, 28)]
    queries += [
        TaskQuery(name="proj.add"), TaskQuery(state="FAILURE"), TaskQuery(queue="high"),
        TaskQuery(worker="b@h", sort="runtime"), TaskQuery(id="task-03"),
        TaskQuery(id="task-03", state="SUCCESS"), TaskQuery(id="missing"),
        TaskQuery(name="proj.mul", queue="low", worker="a@h", descending=False),
        TaskQuery(name="proj.add", state="SUCCESS", queue="high", worker="b@h"),
        TaskQuery(since=now - 95, until=now - 90),
        TaskQuery(since=now - 95, name="proj.add", limit=2, offset=1),
        TaskQuery(text="ITEM 1"), TaskQuery(text="50%"), TaskQuery(text="%"),
        TaskQuery(text="_"), TaskQuery(text="item", state="STARTED", sort="name"),
        TaskQuery(text="item", sort="updated_at", limit=3, offset=2),
        TaskQuery(name="nothing"), TaskQuery(offset=100),
    ]
    for query in queries:
        page, total = await store.search(query)
        assert ([r.id for r in page], total) == expected(records, query), query
    family = await store.family("task-00")
    assert [r.id for r in family] == ["task-00", "task-10", "task-20"]
    assert [r.id for r in await store.family("task-00", limit=2)] == ["task-00", "task-10"]
    counts = await store.counts()
    assert counts == {"SUCCESS": 12, "FAILURE": 6, "STARTED": 6, "REVOKED": 6}
    # Counted by GRAIN: with buckets of one grain each, exactly the tasks finished in it.
    since = (now - 100) // GRAIN * GRAIN
    buckets = await store.throughput(since, GRAIN)
    assert [start for start, _, _ in buckets[:2]] == [since, since + GRAIN]
    for start, ok, failed in buckets:
        ended = [r.state for r in records.values()
                 if r.finished_at is not None and start <= r.finished_at < start + GRAIN]
        assert (ok, failed) == (ended.count("SUCCESS"), ended.count("FAILURE"))
    assert sum(ok + failed for _, ok, failed in buckets) == 18
    assert sum(b[1] for b in await store.throughput(since, 3 * GRAIN)) == 12
    await store.close()


async def test_repeated_reordered_and_concurrent_writes_converge(open_store: Opener) -> None:
    now = time.time()
    events = []
    for i in range(12):
        events += task_events(f"c{i}", now - 50 + i, outcome=("task-succeeded",
                                                              "task-failed")[i % 2])
        events.append({"type": "task-retried", "timestamp": now - 50 + i + 0.015,
                       "hostname": "w1@h", "pid": 1, "uuid": f"c{i}", "name": "proj.add",
                       "queue": "celery", "root_id": f"c{i}", "parent_id": None,
                       "exception": "E: again", "eta": None, "countdown": 0})
    want = reference(events)
    rng = random.Random(3)
    shuffled = events * 2
    rng.shuffle(shuffled)
    # Two store objects on one place (two dashboards), writing different orders at once.
    first, second = open_store(), open_store()
    other = list(reversed(events))
    await asyncio.gather(apply_in_batches(first, shuffled, 5),
                         apply_in_batches(second, other, 3))
    for store in (first, second):
        for task_id, record in want.items():
            assert await store.get(task_id) == record
        page, total = await store.search(TaskQuery(limit=500))
        assert (total, {r.id for r in page}) == (12, set(want))
        assert await store.counts() == {"SUCCESS": 6, "FAILURE": 6}
        # Throughput counts each task once, however often its events were applied.
        buckets = await store.throughput(now - 60, 60)
        assert [sum(b[1] for b in buckets), sum(b[2] for b in buckets)] == [6, 6]
    await first.close()
    await second.close()


async def test_a_new_store_object_reads_what_an_earlier_one_wrote(
        open_store: Opener) -> None:
    """The restart line at store level: a dashboard restarted lists the tasks from before."""
    now = time.time()
    before = open_store()
    await before.apply(task_events("kept", now - 5) + task_events("running", now - 4,
                                                                   outcome=None))
    await before.close()
    after = open_store()
    page, total = await after.search(TaskQuery())
    assert ([r.id for r in page], total) == (["running", "kept"], 2)
    assert (await after.counts()) == {"SUCCESS": 1, "STARTED": 1}
    # ...and goes on merging into them.
    await after.apply(task_events("running", now - 4)[2:])
    record = await after.get("running")
    assert record is not None
    assert (record.state, len(record.events)) == ("SUCCESS", 3)
    await after.close()


async def test_trim_keeps_the_newest_max_tasks_younger_than_the_ttl(
        open_store: Opener) -> None:
    now = time.time()
    store = open_store(max_tasks=5, ttl=60.0)
    events = []
    for i in range(12):
        events += task_events(f"n{i:02d}", now - 30 + i, root="n00" if i < 3 else None)
    events += task_events("old", now - 600)
    await store.apply(events)
    assert (await store.search(TaskQuery()))[1] == 13
    assert await store.trim() == 8
    kept = [f"n{i:02d}" for i in range(11, 6, -1)]
    page, total = await store.search(TaskQuery())
    assert ([r.id for r in page], total) == (kept, 5)
    # Every index forgot the removed tasks as well.
    assert await store.counts() == {"SUCCESS": 5}
    assert await store.family("n00") == []
    assert (await store.search(TaskQuery(name="proj.add", state="SUCCESS")))[1] == 5
    # Throughput counts outlive the records trimmed by max_tasks.
    assert sum(ok for _, ok, _ in await store.throughput(now - 60, 30)) == 12
    assert await store.get("old") is None
    assert await store.trim() == 0
    await store.close()
