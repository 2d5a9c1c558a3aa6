"""Events on the in-memory broker: a worker thread of this process emits, ``app.events``
reads. Worker processes on SQLite, Redis and RabbitMQ: tests/integration/test_events_workers.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac import App, TaskRevokedError
from celeriac.bus.base import EVENTS, Bus, Subscription
from celeriac.cli.events import format_event, parse_duration
from celeriac.errors import Reject
from celeriac.events import emitter as emitter_module
from celeriac.events.event import encode, expand, reserve
from celeriac.events.receiver import since_time
from celeriac.testing import ThreadedWorker

WAIT = 10.0


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


def collect(app: App, until: Any, since: Any = None, timeout: float = WAIT) -> list[dict[str, Any]]:
    """Events from ``since`` until ``until(events)`` is true (or ``timeout`` of quiet)."""
    seen: list[dict[str, Any]] = []
    for event in app.events.iter(since=since, timeout=timeout):
        seen.append(event)
        if until(seen):
            break
    return seen


def of_type(events: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_every_task_has_received_started_succeeded_once_in_order(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    stream = app.events.iter(timeout=WAIT)  # the monitor: subscribed before the tasks
    with ThreadedWorker(app, slots=4) as worker:
        results = [add.delay(i, i) for i in range(300)]
        ids = {r.id for r in results}
        seen: list[dict[str, Any]] = []
        for event in stream:
            seen.append(event)
            if len(of_type(seen, "task-succeeded")) == len(ids):
                break
        stream.close()
        # a monitor that sees task-succeeded can read the result at once
        assert results[-1].get(timeout=WAIT) == 2 * 299

    for kind in ("task-received", "task-started", "task-succeeded"):
        counts = Counter(e["uuid"] for e in of_type(seen, kind))
        assert set(counts) == ids, kind
        assert set(counts.values()) == {1}, f"{kind} duplicated"
    by_process: dict[tuple[str, int], list[int]] = defaultdict(list)
    for event in seen:
        by_process[(event["hostname"], event["pid"])].append(event["seq"])
    for seqs in by_process.values():
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
    order = {(e["uuid"], e["type"]): e["seq"] for e in seen}
    for task_id in ids:
        assert order[(task_id, "task-received")] < order[(task_id, "task-started")] \
            < order[(task_id, "task-succeeded")]
    done = of_type(seen, "task-succeeded")[0]
    assert done["hostname"] == worker.hostname
    assert done["name"] == add.name
    assert done["queue"] == "celeriac"
    assert done["root_id"] == done["uuid"]
    assert done["parent_id"] is None
    assert done["runtime"] >= 0
    assert done["result_size"] > 0
    received = of_type(seen, "task-received")[0]
    assert received["args"].startswith("(")
    assert received["kwargs"] == "{}"
    assert received["retries"] == 0


def test_failed_retried_rejected_and_revoked_carry_their_fields(app: App) -> None:
    @app.task
    def boom() -> None:
        raise ValueError("the reason")

    @app.task(bind=True, max_retries=1)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=KeyError("once"), countdown=0.05)
        return "ok"

    @app.task
    def refuse() -> None:
        raise Reject("not for me", requeue=False)

    @app.task
    def record() -> str:
        return "ran"

    revoked = record.apply_async(expires=WAIT * 6)
    revoked.revoke()
    expired = record.apply_async(expires=0.01)
    time.sleep(0.05)  # its expiry passing is what is tested
    stream = app.events.iter(timeout=WAIT)
    with ThreadedWorker(app):
        failed, retried, rejected = boom.delay(), flaky.delay(), refuse.delay()
        expected = {("task-failed", failed.id), ("task-retried", retried.id),
                    ("task-succeeded", retried.id), ("task-rejected", rejected.id),
                    ("task-revoked", revoked.id), ("task-revoked", expired.id)}
        seen: list[dict[str, Any]] = []
        for event in stream:
            seen.append(event)
            if expected <= {(e["type"], e.get("uuid")) for e in seen}:
                break
        stream.close()
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=WAIT)

    def one(kind: str, task_id: str) -> dict[str, Any]:
        [event] = [e for e in seen if e["type"] == kind and e["uuid"] == task_id]
        return event

    fail = one("task-failed", failed.id)
    assert fail["exception"] == "ValueError: the reason"
    assert "the reason" in fail["traceback"]
    retry = one("task-retried", retried.id)
    assert retry["exception"] == "KeyError: 'once'"
    assert 0 <= retry["countdown"] <= 0.05
    assert retry["eta"] is not None
    assert [e["retries"] for e in seen if e["type"] == "task-received"
            and e["uuid"] == retried.id] == [0, 1]
    reject = one("task-rejected", rejected.id)
    assert reject["dead_lettered"] is True
    assert "not for me" in reject["reason"]
    assert one("task-revoked", revoked.id)["expired"] is False
    assert one("task-revoked", expired.id)["expired"] is True
    assert one("task-revoked", expired.id)["terminated"] is False
    # revoked before they ran: never received, as in Celery
    assert not [e for e in seen if e["type"] == "task-received"
                and e["uuid"] in (revoked.id, expired.id)]


def test_a_late_monitor_reads_back_with_since(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    started = time.time()
    with ThreadedWorker(app):
        results = [add.delay(i, 1) for i in range(20)]
        for result in results:
            result.get(timeout=WAIT)
    ids = {r.id for r in results}
    for since in (started - 0.01, timedelta(minutes=5)):
        seen = collect(app, lambda s: ids <= {e["uuid"] for e in of_type(s, "task-succeeded")},
                       since=since, timeout=2.0)
        assert {e["uuid"] for e in of_type(seen, "task-succeeded")} == ids
    # without since, only what happens next: nothing here
    assert list(app.events.iter(timeout=0.2)) == []


def test_async_iteration(app: App) -> None:
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    with ThreadedWorker(app):
        result = double.delay(21)
        assert result.get(timeout=WAIT) == 42

    async def read() -> list[dict[str, Any]]:
        return [event async for event in app.events.aiter(since=timedelta(minutes=1),
                                                          timeout=0.5)]

    seen = asyncio.run(read())
    assert [e["type"] for e in seen if e.get("uuid") == result.id] == \
        ["task-received", "task-started", "task-succeeded"]


def test_events_off_emits_no_task_events(app: App) -> None:
    app.conf.worker_send_task_events = False

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with ThreadedWorker(app):
        add.delay(1, 2).get(timeout=WAIT)
    assert list(app.events.iter(since=timedelta(minutes=1), timeout=0.3)) == []


def test_task_sent_when_enabled(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(0, 0)  # off by default
    app.conf.task_send_sent_event = True
    result = add.apply_async((1, 2), countdown=60)
    seen = list(app.events.iter(since=timedelta(minutes=1), timeout=0.3))
    assert [e["uuid"] for e in seen] == [result.id]
    sent = seen[0]
    assert sent["type"] == "task-sent"
    assert sent["hostname"].startswith("gen")
    assert sent["args"] == "(1, 2)"
    assert sent["eta"] is not None


class _DownBus(Bus):
    """The memory bus, whose events topic is unreachable: every publish on it fails
    (remote control, on the same bus, still works)."""

    attempts = 0

    def __init__(self, memory: Bus) -> None:
        self.memory = memory

    async def close(self) -> None:
        pass

    async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
        if topic == EVENTS:
            _DownBus.attempts += 1
            raise ConnectionError("connection refused")
        await self.memory.publish(topic, payloads)

    async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
        return await self.memory.subscribe(topic, since)


def test_a_down_bus_drops_the_oldest_events_and_never_fails_tasks(
        app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(emitter_module, "BUFFER_MAX", 50)
    monkeypatch.setattr(emitter_module, "CLOSE_TIMEOUT", 0.5)
    memory = app.broker.bus()
    monkeypatch.setattr(type(app.broker), "bus", lambda self: _DownBus(memory))

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    caplog.set_level(logging.WARNING, "celeriac.events")
    with ThreadedWorker(app):
        results = [add.delay(i, 1) for i in range(100)]
        assert [r.get(timeout=WAIT) for r in results] == [i + 1 for i in range(100)]
    assert _DownBus.attempts > 0
    dropped = [r.message for r in caplog.records if "dropped the" in r.message]
    assert dropped, caplog.text
    assert "at most 50 wait" in dropped[0]
    assert "not published at exit" in caplog.text  # and the worker still stopped


def test_a_broker_without_a_bus_turns_events_off_once(
        app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def no_bus(self: Any) -> Bus:
        raise NotImplementedError("MemoryBroker carries no event or control topics")

    monkeypatch.setattr(type(app.broker), "bus", no_bus)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    caplog.set_level(logging.WARNING, "celeriac.events")
    with ThreadedWorker(app):
        assert [add.delay(i, 1).get(timeout=WAIT) for i in range(5)] == [1, 2, 3, 4, 5]
    assert [r.message for r in caplog.records if "events are off" in r.message] == \
        ["events are off: MemoryBroker carries no event or control topics, nor does the "
         "memory:// result backend (use a Redis, PostgreSQL or SQLite result backend for "
         "events and remote control)"]


def test_a_broker_without_a_bus_sends_events_over_the_result_backends_server(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As with SQS or Kafka as broker: the topics live where the results do."""
    app = App("proj", broker="memory://", backend=f"sqlite:///{tmp_path / 'results.db'}")

    def no_bus(self: Any) -> Bus:
        raise NotImplementedError("MemoryBroker carries no event or control topics")

    monkeypatch.setattr(type(app.broker), "bus", no_bus)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    try:
        stream = app.events.iter(timeout=WAIT)
        with ThreadedWorker(app):
            result = add.delay(2, 3)
            assert result.get(timeout=WAIT) == 5
            for event in stream:
                if event["type"] == "task-succeeded" and event["uuid"] == result.id:
                    break
            else:
                pytest.fail("no task-succeeded event arrived over the backend's bus")
            # Remote control takes the same path: the worker answers a ping.
            answers = app.control.broadcast("ping", reply=True, timeout=WAIT, limit=1)
            assert [list(answer.values()) for answer in answers or []] == [[{"ok": "pong"}]]
    finally:
        app.close()


def test_a_batch_expands_into_one_dict_per_event_numbered_from_its_seq() -> None:
    first = reserve("unit@host", 2)
    record = encode("unit@host", 7, first, [
        ("task-started", 1.0, "id-1", "t", "q", "id-1", None),
        ("worker-heartbeat", 2.0, 2.0, 1, 5, (0.1, 0.2, 0.3), 2, "celeriac", "0.1", "Linux"),
    ])
    started, beat = expand(record)
    assert started == {"type": "task-started", "timestamp": 1.0, "hostname": "unit@host",
                       "pid": 7, "seq": first, "clock": first, "uuid": "id-1", "name": "t",
                       "queue": "q", "root_id": "id-1", "parent_id": None}
    assert beat["seq"] == first + 1
    assert beat["active"] == 1
    assert beat["processed"] == 5
    assert beat["freq"] == 2.0
    assert reserve("unit@host", 1) == first + 2
    assert list(expand(b"not json")) == []


def test_since_and_durations() -> None:
    assert since_time(None) is None
    assert since_time(12.5) == 12.5
    assert abs(since_time(timedelta(minutes=5)) - (time.time() - 300)) < 1  # type: ignore[operator]
    with pytest.raises(TypeError):
        since_time("5m")  # type: ignore[arg-type]
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    line = format_event({"type": "task-succeeded", "timestamp": time.time(),
                         "hostname": "w@h", "uuid": "abc", "name": "proj.add",
                         "runtime": 0.5, "result_size": 12})
    assert "task-succeeded" in line
    assert "w@h proj.add[abc] runtime=0.5000 result_size=12" in line


def test_closing_waits_for_the_publish_in_flight_and_sends_nothing_twice(app: App) -> None:
    memory = app.broker.bus()

    class SlowBus(Bus):
        """The memory bus, with publishes whose answer takes a while (a busy server)."""

        in_flight = asyncio.Event()

        async def close(self) -> None:
            pass

        async def publish(self, topic: str, payloads: Sequence[bytes]) -> None:
            await memory.publish(topic, payloads)  # the server has it ...
            SlowBus.in_flight.set()
            await asyncio.sleep(0.2)  # ... and its answer is on its way

        async def subscribe(self, topic: str, since: float | None = None) -> Subscription:
            return await memory.subscribe(topic, since)

    async def emit_and_close() -> None:
        SlowBus.in_flight = asyncio.Event()
        app.broker.bus = SlowBus  # type: ignore[method-assign]
        emitter = emitter_module.acquire(app, "slow@host")
        for index in range(10):
            emitter.emit(("task-started", time.time(), f"id-{index}", "t", "q", None, None))
        await SlowBus.in_flight.wait()
        emitter.emit(("task-started", time.time(), "id-10", "t", "q", None, None))
        await emitter_module.release(emitter)  # while the first batch is in flight

    since = time.time() - 1
    asyncio.run(emit_and_close())
    del app.broker.bus
    seen = list(app.events.iter(since=since, timeout=0.3))
    assert [e["uuid"] for e in seen] == [f"id-{index}" for index in range(11)]


def test_a_task_terminated_while_it_runs_is_revoked_with_terminated(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac.worker import guard as guard_module

    monkeypatch.setattr(guard_module, "REVOKE_POLL", 0.05)
    started = threading.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await asyncio.sleep(WAIT * 3)

    stream = app.events.iter(timeout=WAIT)
    with ThreadedWorker(app, slots=1):
        result = forever.delay()
        assert started.wait(WAIT)
        app.control.terminate(result.id)
        with pytest.raises(TaskRevokedError):
            result.get(timeout=WAIT)
        seen = collect_from(stream, lambda s: any(e["type"] == "task-revoked" for e in s))
    [revoked] = of_type(seen, "task-revoked")
    assert revoked["uuid"] == result.id
    assert revoked["terminated"] is True
    assert revoked["expired"] is False


def collect_from(stream: Iterator[dict[str, Any]], until: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for event in stream:
        seen.append(event)
        if until(seen):
            break
    return seen
