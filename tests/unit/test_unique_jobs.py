"""Unique jobs: how keys are derived and checked, and the send/release cycle in one process.

The memory and SQLite brokers here (a worker thread where a task must run); real worker
processes on SQLite, Redis and RabbitMQ are in tests/integration/test_unique_workers.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from celeriac import App, ConfigurationError, Task
from celeriac.errors import DecodeError
from celeriac.message import Message
from celeriac.testing import ThreadedWorker
from celeriac.uniqueness import derive_key, unique_keys
from celeriac.uniqueness.keys import check_unique_for, resolve

WAIT = 10.0


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'b.db'}"
    app = App("proj", broker=url, backend=url)
    yield app
    app.close()


def queued(app: App) -> int:
    stats = asyncio.run(app.broker.queue_stats(["celeriac"]))[0]
    return stats.ready + stats.scheduled + stats.in_flight


def holder(app: App, key: str) -> str | None:
    return asyncio.run(unique_keys(app).holder(key))


# -- keys ---------------------------------------------------------------------------------


def test_the_derived_key_is_the_same_for_the_same_call_however_written() -> None:
    app = App("proj", broker="memory://")

    @app.task
    def add(x: int, y: int = 2, *, scale: float = 1.0) -> float:
        return (x + y) * scale

    same = {derive_key(add.name, (1, 2), {}, add),
            derive_key(add.name, (1,), {"y": 2}, add),
            derive_key(add.name, (), {"x": 1, "y": 2, "scale": 1.0}, add),
            derive_key(add.name, (1,), {}, add)}  # the default filled in
    assert len(same) == 1
    key = same.pop()
    assert key.startswith(f"task:{add.name}:")
    assert len(key.rsplit(":", 1)[1]) == 64
    assert derive_key(add.name, (1, 3), {}, add) != key
    assert derive_key("other", (1, 2), {}, None) != derive_key(add.name, (1, 2), {}, None)


def test_keys_of_mappings_do_not_depend_on_their_order() -> None:
    a = derive_key("t", ({"a": 1, "b": [1, 2]},), {}, None)
    b = derive_key("t", ({"b": [1, 2], "a": 1},), {}, None)
    assert a == b


def test_arguments_without_canonical_json_are_refused_with_the_way_out() -> None:
    with pytest.raises(TypeError, match=r"bytes\).*unique_key="):
        derive_key("t", (b"raw",), {}, None)
    with pytest.raises(TypeError, match="canonical JSON"):
        derive_key("t", (float("nan"),), {}, None)


def test_unique_for_is_checked() -> None:
    assert check_unique_for(2) == 2.0
    assert check_unique_for(timedelta(minutes=1)) == 60.0
    assert check_unique_for(0) == 0.0
    for bad, error in ((-1, ValueError), (float("inf"), ValueError), ("60", TypeError),
                       (True, TypeError)):
        with pytest.raises(error, match="unique_for"):
            check_unique_for(bad)


def test_resolve_needs_a_duration_and_a_sound_key() -> None:
    assert resolve("t", (), {}, None, None, None) is None
    assert resolve("t", (), {}, None, None, 0) is None  # 0: not unique
    assert resolve("t", (), {}, None, "user:42", 5) == ("user:42", 5.0)
    with pytest.raises(TypeError, match="needs unique_for"):
        resolve("t", (), {}, None, "user:42", None)
    with pytest.raises(ValueError, match="> 0"):
        resolve("t", (), {}, None, "user:42", 0)
    with pytest.raises(TypeError, match="non-empty string"):
        resolve("t", (), {}, None, "", 5)
    with pytest.raises(ValueError, match="at most"):
        resolve("t", (), {}, None, "k" * 2000, 5)


def test_the_task_option_is_checked_when_the_task_is_declared() -> None:
    app = App("proj", broker="memory://")
    with pytest.raises(ValueError, match="unique_for"):
        app.task(unique_for=-5)(lambda: None)
    task = app.task(unique_for=timedelta(seconds=30))(lambda: None)
    assert task.options.unique_for == 30.0


def test_the_message_carries_the_key_and_workers_check_it() -> None:
    message = Message(id="x", task="t", unique_key="user:42", unique_for=5.0)
    payload = message.to_payload()
    assert payload["unique_key"] == "user:42"
    assert payload["unique_for"] == 5.0
    assert Message.from_payload(payload) == message
    assert "unique_key" not in Message(id="x", task="t").to_payload()
    for field, bad in (("unique_key", ""), ("unique_key", 5), ("unique_for", -1),
                       ("unique_for", "soon")):
        with pytest.raises(DecodeError, match=field):
            Message.from_payload({**payload, field: bad})


# -- sending ------------------------------------------------------------------------------


def test_a_second_send_returns_the_first_task_and_queues_nothing(app: App) -> None:
    @app.task(unique_for=60)
    def sync_user(user_id: int) -> int:
        return user_id

    first = sync_user.delay(42)
    again = sync_user.apply_async((42,))
    other = sync_user.delay(7)
    assert again.id == first.id
    assert other.id != first.id
    assert queued(app) == 2
    # an explicit key is shared across tasks and arguments
    by_key = app.send_task("anything", (1,), unique_key="user:42", unique_for=60)
    assert app.send_task("else", (2,), unique_key="user:42", unique_for=60).id == by_key.id
    assert queued(app) == 3


def test_unique_for_zero_on_the_call_sends_another_copy(app: App) -> None:
    @app.task(unique_for=60)
    def sync_user(user_id: int) -> int:
        return user_id

    first = sync_user.delay(1)
    assert sync_user.apply_async((1,), unique_for=0).id != first.id
    assert queued(app) == 2


def test_async_senders_share_the_keys(app: App) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    async def send() -> list[str]:
        return [(await job.adelay(1)).id for _ in range(5)]

    ids = asyncio.run(send())
    assert len(set(ids)) == 1
    assert job.delay(1).id == ids[0]
    assert queued(app) == 1


def test_send_many_sends_one_copy_per_key(app: App) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    results = app.send_many([job.s(1), job.s(1), job.s(2), (job, (1,))])
    assert results[0].id == results[1].id == results[3].id != results[2].id
    assert queued(app) == 2


def test_the_hold_ends_at_its_deadline(app: App) -> None:
    @app.task
    def job(n: int) -> int:
        return n

    first = job.apply_async((1,), unique_for=0.2)
    assert holder(app, derive_key(job.name, (1,), {}, job)) == first.id
    time.sleep(0.25)  # the deadline itself is what is tested
    assert job.apply_async((1,), unique_for=0.2).id != first.id


def test_a_failed_publish_releases_the_claim(app: App, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    def broken(*_: object) -> None:
        raise OSError("the broker is gone")

    # (SQLite: the insert in the claim's transaction; memory: the publish after the claim)
    where = "publish_in" if app.broker.scheme == "sqlite" else "publish"
    monkeypatch.setattr(app.broker, where, broken)
    with pytest.raises(OSError, match="gone"):
        job.delay(1)
    assert holder(app, derive_key(job.name, (1,), {}, job)) is None
    monkeypatch.undo()
    assert queued(app) == 0
    job.delay(1)
    assert queued(app) == 1


# -- the worker releases ------------------------------------------------------------------


def test_the_key_is_free_again_once_the_task_ended(app: App) -> None:
    started, proceed = threading.Event(), threading.Event()

    @app.task(unique_for=60)
    def slow(n: int) -> int:
        started.set()
        assert proceed.wait(WAIT)
        return n

    with ThreadedWorker(app, slots=2):
        first = slow.delay(1)
        assert started.wait(WAIT)
        assert slow.delay(1).id == first.id  # running: still held
        proceed.set()
        assert first.get(timeout=WAIT) == 1
        key = derive_key(slow.name, (1,), {}, slow)
        _wait(lambda: holder(app, key) is None, "the key released")
        second = slow.delay(1)
        assert second.id != first.id
        assert second.get(timeout=WAIT) == 1


def test_a_retry_keeps_the_key_and_the_final_failure_frees_it(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, unique_for=60, max_retries=2, default_retry_delay=0.05)
    def flaky(self: Task[..., int], n: int) -> int:
        attempts.append(self.request.retries)
        raise self.retry(exc=ValueError("not yet"))

    with ThreadedWorker(app, slots=2):
        first = flaky.delay(3)
        _wait(lambda: len(attempts) >= 1, "the first attempt")
        assert flaky.delay(3).id == first.id  # retrying: still held
        with pytest.raises(ValueError, match="not yet"):
            first.get(timeout=WAIT)
        key = derive_key(flaky.name, (3,), {}, flaky)
        _wait(lambda: holder(app, key) is None, "the key released after the last retry")
    assert attempts == [0, 1, 2]


def test_a_revoked_task_frees_its_key_when_its_message_comes_out(app: App) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    first = job.delay(5)
    first.revoke()
    key = derive_key(job.name, (5,), {}, job)
    assert holder(app, key) == first.id
    with ThreadedWorker(app):
        _wait(lambda: holder(app, key) is None, "the key released")
    assert job.delay(5).id != first.id


def test_unique_sends_need_a_server_to_hold_keys() -> None:
    app = App("proj", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://")

    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    try:
        with pytest.raises(ConfigurationError,
                           match="unique jobs.*set result_backend to a redis://"):
            job.delay(1)
    finally:
        app.close()


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_the_tasks_of_a_workflow_hold_no_key(app: App) -> None:
    from celeriac import group

    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    group(job.s(1), job.s(1)).apply_async()
    assert queued(app) == 2
    assert holder(app, derive_key(job.name, (1,), {}, job)) is None
    assert job.delay(1).id  # a single send still claims it
    assert holder(app, derive_key(job.name, (1,), {}, job)) is not None


def test_a_dead_lettered_task_frees_its_key(app: App) -> None:
    from celeriac.errors import Reject

    @app.task(unique_for=60)
    def refuse(n: int) -> None:
        raise Reject("no", requeue=False)

    first = refuse.delay(1)
    key = derive_key(refuse.name, (1,), {}, refuse)
    with ThreadedWorker(app):
        _wait(lambda: holder(app, key) is None, "the key released")
    assert refuse.delay(1).id != first.id


def test_a_message_dead_lettered_before_decoding_still_frees_its_key(app: App) -> None:
    # Past task_delivery_limit a message is dead-lettered before it is decoded; the
    # release decodes it to find its key.
    from celeriac.brokers.base import Delivery
    from celeriac.uniqueness.send import final_holds
    from celeriac.worker.executor import Action, Verdict

    message, outgoing = app.prepare("t", (1,), {}, {"unique_key": "k", "unique_for": 60})
    delivery = Delivery(message.id, "celeriac", outgoing.body, 0, 9, None)
    held = type("Held", (), {"delivery": delivery})()
    dead = Verdict(Action.DEAD_LETTER, reason="delivery limit exceeded")
    assert final_holds(app, [(held, dead)]) == [("k", message.id)]
    garbage = type("Held", (), {"delivery": Delivery("x", "celeriac", b"junk", 0, 9,
                                                     None)})()
    assert final_holds(app, [(garbage, dead)]) == []
    retried = Verdict(Action.RETRY, message=message)
    assert final_holds(app, [(held, retried)]) == []
