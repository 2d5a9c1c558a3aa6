"""Celery's signals: connected by name or by sender, sent with Celery's arguments, and a
receiver that raises changes nothing but a log line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celeriac import App, Reject, Task, signals
from celeriac.signals import Signal
from celeriac.testing import ThreadedWorker

TIMEOUT = 10


@pytest.fixture
def app() -> Iterator[App]:
    app = App("sig", broker="memory://", backend="memory://")
    yield app
    app.close()


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal of celeriac.signals, recorded as (name, arguments); disconnected after."""
    calls: list[tuple[str, dict[str, Any]]] = []
    connected: list[tuple[Signal, Any]] = []
    for name in signals.__all__:
        signal = getattr(signals, name)
        if not isinstance(signal, Signal) or name in ("setup_logging",):
            continue

        def receiver(sender: Any = None, signal: Signal = signal, **kwargs: Any) -> None:
            calls.append((signal.name, {"sender": sender, **kwargs}))

        signal.connect(receiver)
        connected.append((signal, receiver))
    yield calls
    for signal, receiver in connected:
        signal.disconnect(receiver)


def names(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in calls]


def test_a_signal_reaches_receivers_for_its_sender_and_isolates_errors(
        caplog: pytest.LogCaptureFixture) -> None:
    signal = Signal("demo", ("value",))
    got: list[Any] = []

    @signal.connect
    def everyone(sender: Any, value: int, **kwargs: Any) -> None:
        got.append(("everyone", sender, value))

    @signal.connect(sender="proj.add")
    def only_add(sender: Any, value: int, **kwargs: Any) -> None:
        got.append(("only_add", sender, value))

    @signal.connect
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    replies = signal.send(sender="proj.add", value=1)
    signal.send(sender="proj.mul", value=2)

    assert got == [("everyone", "proj.add", 1), ("only_add", "proj.add", 1),
                   ("everyone", "proj.mul", 2)]
    assert isinstance(replies[-1][1], RuntimeError)
    assert any("signal demo: receiver" in r.getMessage() and "broken" in r.getMessage()
               for r in caplog.records)
    assert signal.disconnect(broken)
    assert not signal.disconnect(broken)


def test_async_receivers_are_awaited_on_the_senders_loop() -> None:
    signal = Signal("demo")
    got: list[str] = []

    @signal.connect
    async def later(sender: Any, **kwargs: Any) -> None:
        got.append(sender)

    async def main() -> None:
        await signal.asend(sender="a")  # awaited here
        signal.send(sender="b")  # sent from sync code on this loop: scheduled beside it
        await asyncio.sleep(0.01)

    asyncio.run(main())
    signal.send(sender="c")  # no loop here: run to completion on a loop of its own
    assert got == ["a", "b", "c"]


def test_task_signals_fire_with_celerys_arguments(
        app: App, heard: list[tuple[str, dict[str, Any]]]) -> None:
    @app.task(name="sig.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="sig.boom")
    def boom() -> None:
        raise ValueError("boom")

    with ThreadedWorker(app):
        result = add.delay(2, 3)
        assert result.get(timeout=TIMEOUT) == 5
        with pytest.raises(ValueError, match="boom"):
            boom.delay().get(timeout=TIMEOUT)

    order = [n for n in names(heard) if n not in ("worker_ready",)]
    assert order == [
        "before_task_publish", "after_task_publish", "task_received", "task_prerun",
        "task_success", "task_postrun",
        "before_task_publish", "after_task_publish", "task_received", "task_prerun",
        "task_failure", "task_postrun",
    ]
    args = dict(heard)  # the last of each name
    assert args["task_prerun"]["task_id"] == args["task_postrun"]["task_id"]
    assert args["task_postrun"]["state"] == "FAILURE"
    failure = args["task_failure"]
    assert failure["sender"].name == "sig.boom"
    assert isinstance(failure["exception"], ValueError)
    assert "raise ValueError" in failure["einfo"]
    # Celery's einfo (billiard's ExceptionInfo): receivers read these
    assert failure["einfo"].traceback == str(failure["einfo"])
    assert failure["einfo"].exc_info == (ValueError, failure["exception"],
                                         failure["exception"].__traceback__)
    assert args["task_success"]["runtime"] >= 0
    success = next(kw for name, kw in heard if name == "task_success")
    assert success["result"] == 5
    assert success["sender"].name == "sig.add"
    published = next(kw for name, kw in heard if name == "before_task_publish")
    assert published["sender"] == "sig.add"
    assert published["routing_key"] == "celeriac"
    assert published["body"]["args"] == (2, 3)


def test_retry_rejected_and_revoked_signals(
        app: App, heard: list[tuple[str, dict[str, Any]]]) -> None:
    @app.task(name="sig.flaky", bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: Task[..., Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=OSError("again"))
        return "ok"

    @app.task(name="sig.refuse")
    def refuse() -> None:
        raise Reject("not wanted")

    with ThreadedWorker(app):
        assert flaky.delay().get(timeout=TIMEOUT) == "ok"
        app.send_task("sig.unknown")
        expired = flaky.apply_async(expires=datetime.now(UTC) - timedelta(seconds=1))
        with pytest.raises(Exception, match="expired"):
            expired.get(timeout=TIMEOUT)
        for _ in range(100):
            if "task_rejected" in names(heard):
                break
            time.sleep(0.05)

    retry = next(kw for name, kw in heard if name == "task_retry")
    assert repr(retry["reason"]) == "OSError('again')"
    assert retry["request"].task == "sig.flaky"
    rejected = next(kw for name, kw in heard if name == "task_rejected")
    assert "unknown task" in rejected["exc"]
    revoked = next(kw for name, kw in heard if name == "task_revoked")
    assert revoked["expired"] is True
    assert revoked["request"].id == expired.id


def test_a_receiver_can_add_headers_that_reach_the_task(app: App) -> None:
    @app.task(name="sig.trace", bind=True)
    def traced(self: Task[..., Any]) -> Any:
        return self.request.headers.get("traceparent")

    def inject(sender: Any = None, headers: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        assert headers is not None
        headers["traceparent"] = "00-abc-def-01"

    signals.before_task_publish.connect(inject)
    try:
        with ThreadedWorker(app):
            assert traced.delay().get(timeout=TIMEOUT) == "00-abc-def-01"
    finally:
        signals.before_task_publish.disconnect(inject)


def test_a_failing_receiver_does_not_fail_the_task(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    @app.task(name="sig.ok")
    def ok() -> str:
        return "fine"

    def broken(sender: Any = None, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.task_prerun.connect(broken)
    try:
        with ThreadedWorker(app), caplog.at_level(logging.ERROR):
            assert ok.delay().get(timeout=TIMEOUT) == "fine"
    finally:
        signals.task_prerun.disconnect(broken)
    assert any("signal task_prerun: receiver" in r.getMessage() for r in caplog.records)


def test_task_request_is_the_tasks_own_in_prerun_and_postrun(app: App) -> None:
    seen: list[Any] = []

    @app.task(name="sig.who")
    def who() -> None: ...

    def prerun(sender: Any = None, **kwargs: Any) -> None:
        seen.append(("prerun", sender.request.id, kwargs["task_id"]))

    def postrun(sender: Any = None, **kwargs: Any) -> None:
        seen.append(("postrun", sender.request.id, kwargs["task_id"]))

    signals.task_prerun.connect(prerun)
    signals.task_postrun.connect(postrun)
    try:
        with ThreadedWorker(app):
            result = who.delay()
            result.get(timeout=TIMEOUT)
    finally:
        signals.task_prerun.disconnect(prerun)
        signals.task_postrun.disconnect(postrun)
    assert seen == [("prerun", result.id, result.id), ("postrun", result.id, result.id)]
