"""Events from real worker processes, on SQLite, Redis and RabbitMQ.

A monitor (``app.events.iter``) subscribed before the tasks are sent receives every
task's received, started and succeeded events from a 2-process prefork worker, once
each and in order per emitting process; a monitor that starts late reads them back with
``since``; failures, retries, dead letters and expired tasks carry their fields; the
node says online, heartbeat (with its counts) and offline. On SQLite only (they do not
depend on the broker): ``--without-events``, ``task_send_sent_event`` and
``celeriac events --json``.

Servers: Redis DB 8 under a key prefix of the test's own (deleted afterwards); RabbitMQ
on the default vhost under a queue namespace of the test's own (deleted afterwards),
results in a SQLite file. Without a server its cases are skipped (failed under CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from worker_harness import APPS_DIR, WorkerProcess, wait_until

from celeriac import App
from celeriac.brokers import create_broker

sys.path.insert(0, str(APPS_DIR))
from events_app import EventTasks, register

REDIS_URL = "redis://127.0.0.1:6379/8"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TASKS = 1000
WAIT = 60.0

pytestmark = pytest.mark.timeout(120)


class EventsWorker(WorkerProcess):
    app_module = "events_app"


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so every broker must be tested)")
    pytest.skip(reason)


@dataclass
class World:
    kind: str
    root: Path
    broker: str
    backend: str
    app: App
    tasks: EventTasks
    workers: list[WorkerProcess]

    def env(self, **settings: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELERIAC_", "CELERY_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(APPS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
        for name, value in {"broker_url": self.broker, "result_backend": self.backend,
                            **settings}.items():
            env[f"CELERIAC_{name.upper()}"] = json.dumps(value)
        return env

    def start_worker(self, *args: str) -> tuple[WorkerProcess, str]:
        """A prefork worker of 2 processes named ``events-<random>@<host>``."""
        name = f"events-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        worker = EventsWorker(["-c", "2", "-n", name, "-l", "INFO", *args], self.env(),
                              self.root, self.root / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker, name


def _redis_world(stack: contextlib.ExitStack) -> tuple[str, str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        unavailable(f"Redis is not running at {REDIS_URL}")
    prefix = f"events-test:{uuid.uuid4().hex[:10]}:"

    def clean() -> None:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()

    stack.callback(clean)
    url = f"{REDIS_URL}?key_prefix={prefix}"
    return url, url


def _amqp_world(stack: contextlib.ExitStack, root: Path) -> tuple[str, str]:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        unavailable("RabbitMQ is not running on 127.0.0.1:5672")
    url = f"{AMQP_URL}?namespace=events.{uuid.uuid4().hex[:10]}."

    async def delete() -> None:
        cleaner = create_broker(url)
        try:
            await cleaner.delete_namespace()  # type: ignore[attr-defined]
        finally:
            await cleaner.close()

    stack.callback(lambda: asyncio.run(delete()))
    return url, f"sqlite:///{root / 'results.db'}"


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    kind = request.param
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            broker = backend = f"sqlite:///{tmp_path / 'broker.db'}"
        elif kind == "redis":
            broker, backend = _redis_world(stack)
        else:
            broker, backend = _amqp_world(stack, tmp_path)
        app = App("events-tests", broker=broker, backend=backend)
        stack.callback(app.close)
        try:
            app.broker.bus()
        except NotImplementedError:
            pytest.skip(f"the {kind} broker carries no bus yet")
        workers: list[WorkerProcess] = []
        world = World(kind, tmp_path, broker, backend, app, register(app), workers)
        try:
            yield world
        finally:
            for worker in workers:
                worker.kill_all()


def read_until(stream: Iterator[dict[str, Any]], done: Any, what: str,
               seen: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Events from ``stream`` until ``done(seen)``; fails if the stream goes quiet."""
    seen = [] if seen is None else seen
    if done(seen):
        return seen
    for event in stream:
        seen.append(event)
        if done(seen):
            return seen
    raise AssertionError(f"the event stream went quiet before {what}; saw "
                         f"{Counter(e['type'] for e in seen)}")


def of(events: list[dict[str, Any]], kind: str, hostname: str | None = None,
       ) -> list[dict[str, Any]]:
    return [e for e in events
            if e["type"] == kind and (hostname is None or e["hostname"] == hostname)]


def test_a_monitor_receives_every_tasks_events_in_order(world: World) -> None:
    started_at = time.time()
    stream = world.app.events.iter(timeout=WAIT)  # subscribed now, before anything runs
    worker, name = world.start_worker()
    worker.wait_ready(2)
    results = world.app.send_many([(world.tasks.add, (i, i)) for i in range(TASKS)])
    ids = {r.id for r in results}

    def all_succeeded(seen: list[dict[str, Any]]) -> bool:
        return len({e["uuid"] for e in of(seen, "task-succeeded", name)}) >= TASKS

    seen = read_until(stream, all_succeeded, f"{TASKS} task-succeeded")
    assert results[-1].get(timeout=WAIT) == 2 * (TASKS - 1)

    # Then every task was received, started and succeeded exactly once
    for kind in ("task-received", "task-started", "task-succeeded"):
        counts = Counter(e["uuid"] for e in of(seen, kind, name))
        assert set(counts) == ids, f"{kind}: {len(ids - set(counts))} missing"
        assert max(counts.values()) == 1, f"{kind} duplicated"
    # in order per emitting process (hostname, pid), numbered without repeats
    by_process: dict[tuple[str, int], list[int]] = defaultdict(list)
    for event in seen:
        by_process[(event["hostname"], event["pid"])].append(event["seq"])
    for key, seqs in by_process.items():
        assert seqs == sorted(set(seqs)), f"{key} out of order or repeated"
    # (Which of the two processes ran how many is the broker's business: under load one
    # may fetch them all, so the order is checked per process, whichever ran them.)
    task_pids = {e["pid"] for e in of(seen, "task-started", name)}
    assert task_pids <= {child.pid for child in worker.children()}
    position = {(e["uuid"], e["type"]): e["seq"] for e in seen if "uuid" in e}
    for task_id in ids:
        assert position[(task_id, "task-received")] < position[(task_id, "task-started")] \
            < position[(task_id, "task-succeeded")]
    done = of(seen, "task-succeeded", name)[0]
    assert done["name"] == "events.add"
    assert done["queue"] == "celeriac"
    assert done["runtime"] >= 0
    assert done["result_size"] > 0

    # The node: online with its 2 processes, a heartbeat with the counts, offline at the end
    [online] = of(seen, "worker-online", name)
    assert online["processes"] == 2
    assert online["pid"] == worker.pid
    assert online["sw_ident"] == "celeriac"
    seen = read_until(stream, lambda s: any(e["processed"] >= TASKS
                                            for e in of(s, "worker-heartbeat", name)),
                      "a heartbeat counting the tasks", seen)
    beat = next(e for e in of(seen, "worker-heartbeat", name) if e["processed"] >= TASKS)
    assert beat["processed"] == TASKS
    assert beat["freq"] == 2.0
    assert len(beat["loadavg"]) == 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    seen = read_until(stream, lambda s: bool(of(s, "worker-offline", name)),
                      "worker-offline", seen)
    assert of(seen, "worker-offline", name)[0]["processed"] == TASKS
    stream.close()

    # A monitor that starts late reads them back with since=
    late = read_until(world.app.events.iter(since=started_at, timeout=10.0),
                      lambda s: bool(of(s, "worker-offline", name)), "the read-back")
    assert {e["uuid"] for e in of(late, "task-succeeded", name)} == ids
    assert len(of(late, "task-received", name)) == TASKS


def test_failures_retries_dead_letters_and_expiries_carry_their_fields(world: World) -> None:
    stream = world.app.events.iter(timeout=WAIT)
    worker, name = world.start_worker()
    worker.wait_ready(2)
    tasks = world.tasks
    failed = tasks.boom.delay("it broke")
    retried = tasks.flaky.delay()
    rejected = tasks.refuse.delay()
    expired = tasks.add.apply_async((1, 2), countdown=0.5, expires=0.2)
    expected = {("task-failed", failed.id), ("task-retried", retried.id),
                ("task-succeeded", retried.id), ("task-rejected", rejected.id),
                ("task-revoked", expired.id)}
    seen = read_until(stream, lambda s: expected <= {(e["type"], e.get("uuid")) for e in s},
                      f"{expected}")
    stream.close()

    def one(kind: str, task_id: str) -> dict[str, Any]:
        [event] = [e for e in of(seen, kind, name) if e["uuid"] == task_id]
        return event

    fail = one("task-failed", failed.id)
    assert fail["exception"] == "ValueError: it broke"
    assert "ValueError: it broke" in fail["traceback"]
    assert fail["name"] == "events.boom"
    retry = one("task-retried", retried.id)
    assert retry["exception"] == "KeyError: 'first attempt'"
    assert 0 <= retry["countdown"] <= 0.1
    assert [e["retries"] for e in of(seen, "task-received", name)
            if e["uuid"] == retried.id] == [0, 1]
    reject = one("task-rejected", rejected.id)
    assert reject["dead_lettered"] is True
    assert "not for this worker" in reject["reason"]
    revoke = one("task-revoked", expired.id)
    assert revoke["expired"] is True
    assert revoke["terminated"] is False


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    app = App("events-tests", broker=url, backend=url)
    try:
        app.broker.bus()
    except NotImplementedError:
        app.close()
        pytest.skip("the sqlite broker carries no bus yet")
    world = World("sqlite", tmp_path, url, url, app, register(app), [])
    try:
        yield world
    finally:
        for worker in world.workers:
            worker.kill_all()
        app.close()


def test_without_events_a_worker_emits_none(sqlite_world: World) -> None:
    world = sqlite_world
    started_at = time.time()
    worker, name = world.start_worker("--without-events")
    worker.wait_ready(2)
    assert world.tasks.add.delay(1, 2).get(timeout=WAIT) == 3
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    events = list(world.app.events.iter(since=started_at, timeout=1.0))
    assert [e for e in events if e["hostname"] == name] == []


def test_task_sent_and_the_events_command(sqlite_world: World) -> None:
    world = sqlite_world
    world.app.conf.task_send_sent_event = True
    worker, name = world.start_worker()
    worker.wait_ready(2)
    result = world.tasks.add.delay(20, 22)
    assert result.get(timeout=WAIT) == 42

    def succeeded_seen() -> bool:
        events = list(world.app.events.iter(since=time.time() - 60, timeout=0.3))
        return bool([e for e in events if e.get("uuid") == result.id
                     and e["type"] == "task-succeeded"])

    wait_until(succeeded_seen, 10.0, "the task's events on the bus")
    worker.signal(signal.SIGTERM)  # no more heartbeats: the stream goes quiet
    assert worker.wait(30) == 0
    # `celeriac events --json` prints one parseable object per line, and stops at --count
    command = [sys.executable, "-m", "celeriac", "-A", "events_app", "events", "--json",
               "--since", "5m", "--timeout", "3"]
    done = subprocess.run(command, env=world.env(), cwd=world.root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    mine = [e["type"] for e in printed if e.get("uuid") == result.id]
    assert mine == ["task-sent", "task-received", "task-started", "task-succeeded"]
    [sent] = [e for e in printed if e["type"] == "task-sent"]
    assert sent["hostname"].startswith("gen")
    assert sent["args"] == "(20, 22)"
    assert any(e["type"] == "worker-online" and e["hostname"] == name for e in printed)
    # and the readable form: one line per event, with the task's name[id]
    done = subprocess.run([*command[:-4], "--since", "5m", "--count", "2"], env=world.env(),
                          cwd=world.root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line, event in zip(lines, printed, strict=False):  # the same stream, from the start
        assert event["type"] in line
        assert event["hostname"] in line
