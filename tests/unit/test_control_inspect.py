"""Inspect and control on the memory bus, answered by ThreadedWorkers (real consumers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import App
from celeriac.control import commands
from celeriac.control.mailbox import Reply, Request, complete
from celeriac.control.replies import by_node
from celeriac.testing import ThreadedWorker


@pytest.fixture
def app() -> Iterator[App]:
    app = App("ctl", broker="memory://", backend="memory://")
    yield app
    app.close()


def _eventually(check, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_two_workers_answer_ping_active_registered_stats_queues(app: App) -> None:
    started, release = threading.Event(), threading.Event()

    @app.task(name="t.block")
    def block(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    with ThreadedWorker(app, hostname="a@h", slots=2), ThreadedWorker(app, hostname="b@h"):
        result = block.delay(7)
        assert started.wait(5)
        inspect = app.control.inspect(timeout=0.5)
        assert inspect.ping() == {"a@h": {"ok": "pong"}, "b@h": {"ok": "pong"}}
        active = inspect.active()
        assert set(active) == {"a@h", "b@h"}
        running = [task for tasks in active.values() for task in tasks]
        assert [(t["id"], t["name"], t["args"]) for t in running] == [
            (result.id, "t.block", "(7,)")]
        assert running[0]["delivery_info"]["routing_key"] == "celeriac"
        assert running[0]["time_start"] <= time.time()
        assert "t.block" in inspect.registered()["a@h"]
        stats = inspect.stats()
        assert stats["a@h"]["pool"]["max-concurrency"] == 2
        assert stats["a@h"]["broker"]["transport"] == "memory"
        assert [q["name"] for q in inspect.active_queues()["b@h"]] == ["celeriac"]
        assert inspect.scheduled() == {"a@h": [], "b@h": []}
        release.set()
        assert result.get(timeout=5) == 7
        totals = _eventually(lambda: {n: s["total"] for n, s in inspect.stats().items()
                                      if s["total"]})
        assert sum(t.get("t.block", 0) for t in totals.values()) == 1


def test_destination_only_the_named_node_answers(app: App) -> None:
    with ThreadedWorker(app, hostname="a@h"), ThreadedWorker(app, hostname="b@h"):
        assert app.control.ping(destination=["b@h"], timeout=0.3) == [{"b@h": {"ok": "pong"}}]
        # A single name (a string) returns that node's reply itself, as Celery does.
        assert app.control.inspect(destination="a@h", timeout=0.3).ping() == {"ok": "pong"}
        assert app.control.inspect(destination=["nobody@h"], timeout=0.2).ping() is None
        # Named nodes that answered in full end the wait before the timeout.
        began = time.monotonic()
        assert app.control.inspect(["a@h", "b@h"], timeout=5).active() == {"a@h": [],
                                                                            "b@h": []}
        assert time.monotonic() - began < 1.0


def test_nobody_answers_within_the_timeout(app: App) -> None:
    began = time.monotonic()
    assert app.control.inspect(timeout=0.3).active() is None
    assert 0.3 <= time.monotonic() - began < 2.0


def test_unknown_command_and_bad_arguments_are_error_replies(app: App) -> None:
    with ThreadedWorker(app, hostname="a@h") as worker:
        assert app.control.broadcast("frobnicate", reply=True, timeout=0.3) == [
            {"a@h": {"error": "unknown command 'frobnicate'"}}]
        [reply] = app.control.broadcast("time_limit", {"nope": 1}, reply=True, timeout=0.3)
        assert "error" in reply["a@h"]
        assert app.control.pool_shrink(5, reply=True, timeout=0.3)[0]["a@h"]["error"]
        assert worker.consumer is not None
        assert worker.consumer.stop_reason is None


def test_a_command_that_raises_is_an_error_reply_and_the_worker_goes_on(
        app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def explode(info: commands.ProcessInfo) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(commands.PROCESS_COMMANDS, "explode", explode)
    with ThreadedWorker(app, hostname="a@h"):
        assert app.control.broadcast("explode", reply=True, timeout=0.3) == [
            {"a@h": {"error": "RuntimeError: boom"}}]
        assert app.control.ping(timeout=0.3) == [{"a@h": {"ok": "pong"}}]
    assert "control command explode failed: RuntimeError: boom" in caplog.text


def test_conf_masks_secrets(app: App) -> None:
    app.conf.update(result_backend="memory://", broker_transport_options={
        "key_prefix": "x", "sentinel_kwargs": {"password": "hunter2"}},
        task_default_queue="celeriac",
        alert_webhooks=["https://hooks.example.com/services/T0/B0/tokenSECRETabc"])
    app.conf.task_routes = {"t.*": {"queue": "q"}}
    with ThreadedWorker(app, hostname="a@h"):
        conf = app.control.inspect(timeout=0.3).conf(with_defaults=True)["a@h"]
    text = repr(conf)
    assert "hunter2" not in text
    assert "tokenSECRETabc" not in text
    assert conf["broker_transport_options"]["sentinel_kwargs"]["password"] == "***"
    assert conf["task_default_queue"] == "celeriac"


def test_time_limit_applies_to_later_runs(app: App) -> None:
    @app.task(name="t.limited")
    def limited() -> None:
        pass

    with ThreadedWorker(app, hostname="a@h"):
        assert app.control.time_limit("t.limited", soft=5, hard=10, reply=True,
                                      timeout=0.3) == [
            {"a@h": {"ok": "time limits set successfully"}}]
        assert (limited.options.soft_time_limit, limited.options.time_limit) == (5.0, 10.0)
        assert app.control.time_limit("t.missing", reply=True, timeout=0.3) == [
            {"a@h": {"error": "unknown task"}}]


def test_add_and_cancel_consumer_change_what_is_consumed(app: App) -> None:
    @app.task(name="t.echo")
    def echo(x: int) -> int:
        return x

    with ThreadedWorker(app, hostname="a@h") as worker:
        extra = echo.apply_async((1,), queue="extra")
        time.sleep(0.2)
        assert not extra.ready()  # nobody consumes "extra" yet
        assert app.control.add_consumer("extra", reply=True, timeout=0.3) == [
            {"a@h": {"ok": "add consumer extra"}}]
        assert extra.get(timeout=5) == 1
        queues = app.control.inspect(timeout=0.3).active_queues()["a@h"]
        assert [q["name"] for q in queues] == ["celeriac", "extra"]
        assert app.control.cancel_consumer("extra", reply=True, timeout=0.3) == [
            {"a@h": {"ok": "no longer consuming from extra"}}]
        assert worker.consumer is not None
        assert worker.consumer.queues == ["celeriac"]


def test_pool_grow_and_shrink_change_the_slots(app: App) -> None:
    with ThreadedWorker(app, hostname="a@h", slots=2):
        assert app.control.pool_grow(3, reply=True, timeout=0.3) == [
            {"a@h": {"ok": "pool will grow to 5"}}]
        stats = app.control.inspect(timeout=0.3).stats()["a@h"]
        assert stats["pool"]["max-concurrency"] == 5
        app.control.pool_shrink(4, reply=True, timeout=0.3)
        assert app.control.inspect(timeout=0.3).stats()["a@h"]["pool"]["max-concurrency"] == 1


def test_shutdown_stops_a_threaded_worker(app: App) -> None:
    worker = ThreadedWorker(app, hostname="a@h").start()
    assert app.control.shutdown(reply=True, timeout=0.3) == [{"a@h": {"ok": "shutting down"}}]
    assert worker._thread is not None
    worker._thread.join(5)
    assert not worker._thread.is_alive()


def test_replies_of_one_node_merge_into_one() -> None:
    def reply(process: int | None, value: object, node: str = "n@h") -> Reply:
        return Reply("r", node, process, value)

    active = by_node("active", [reply(1, [{"id": "b"}]), reply(0, [{"id": "a"}]),
                                reply(0, [], node="m@h")])
    assert active == {"n@h": [{"id": "a"}, {"id": "b"}], "m@h": []}
    assert by_node("registered", [reply(0, ["x", "y"]), reply(1, ["y", "z"])]) == {
        "n@h": ["x", "y", "z"]}
    assert by_node("ping", [reply(None, {"ok": "pong"}), reply(0, {"ok": "pong"})]) == {
        "n@h": {"ok": "pong"}}
    assert by_node("rate_limit", [reply(0, {"ok": "fine"}),
                                  reply(1, {"error": "unknown task"})]) == {
        "n@h": {"error": "unknown task"}}
    stats = by_node("stats", [
        reply(0, {"pid": 9, "total": {"a": 1}, "uptime": 3.0, "processed": 1,
                  "pool": {"max-concurrency": 1, "processes": [10]},
                  "rusage": {"utime": 1.0, "maxrss": 5}}),
        reply(1, {"pid": 9, "total": {"a": 2, "b": 1}, "uptime": 4.0, "processed": 3,
                  "pool": {"max-concurrency": 1, "processes": [11]},
                  "rusage": {"utime": 0.5, "maxrss": 7}})])["n@h"]
    assert stats["total"] == {"a": 3, "b": 1}
    assert stats["pool"] == {"max-concurrency": 2, "processes": [10, 11]}
    assert (stats["uptime"], stats["processed"], stats["pid"]) == (4.0, 4, 9)
    assert stats["rusage"] == {"utime": 1.5, "maxrss": 7}


def test_a_named_node_is_complete_once_its_expected_processes_answered() -> None:
    roll = Reply("r", "n@h", None, {"ok": "pong"}, expect=(0, 1))
    first = Reply("r", "n@h", 0, {"ok": "pong"})
    second = Reply("r", "n@h", 1, {"ok": "pong"})
    assert not complete([first, second], ["n@h"])  # who answers is not known yet
    assert not complete([roll, first], ["n@h"])
    assert complete([roll, first, second], ["n@h"])
    assert not complete([roll, first, second], ["n@h", "m@h"])
    only_roll = Reply("r", "m@h", None, None, expect=(0,))
    assert by_node("active", [only_roll, Reply("r", "m@h", 0, [])]) == {"m@h": []}
    assert Reply.decode(roll.encode()) == roll


def test_requests_round_trip_and_filter_by_destination() -> None:
    request = Request("ping", {"x": 1}, ("a@h",), True)
    again = Request.decode(request.encode())
    assert again == request
    assert again.addressed_to("a@h")
    assert not again.addressed_to("b@h")
    assert Request("ping").addressed_to("anyone")
    with pytest.raises(ValueError, match="not a control request"):
        Request.decode(b"{}")
