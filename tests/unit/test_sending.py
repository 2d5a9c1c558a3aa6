"""The producer side: wrong calls fail at .delay() and send nothing; options shape messages."""

import asyncio
from collections.abc import Iterator

import pytest

from celeriac import App, ContentDisallowed, MessageTooLarge
from celeriac.brokers.base import QueueStats


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://")
    yield app
    app.close()


def stats(app: App, queue: str = "celeriac") -> QueueStats:
    return app._run_sync(app.broker.queue_stats([queue]))[0]


def test_wrong_arguments_raise_at_delay_and_send_nothing(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"\.add\(x: int, y: int\): missing a required argument: "
                                        r"'y'"):
        add.delay(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        add.apply_async((1, 2), {"z": 3})
    assert stats(app) == QueueStats("celeriac", 0, 0, 0)


def test_bound_task_arguments_exclude_self(app: App) -> None:
    @app.task(bind=True)
    def hello(self: object, name: str) -> str:
        return name

    hello.delay("ann")
    with pytest.raises(TypeError):
        hello.delay()
    assert stats(app).ready == 1


def test_task_names_default_to_module_and_function(app: App) -> None:
    @app.task
    def ping() -> str:
        return "pong"

    @app.task(name="custom.name")
    def other() -> None: ...

    assert ping.name.endswith("test_task_names_default_to_module_and_function.<locals>.ping")
    assert "custom.name" in app.tasks
    assert app.get_task("custom.name") is other


def test_unknown_task_option_suggests(app: App) -> None:
    with pytest.raises(TypeError, match="unknown task option 'max_retry'.*max_retries"):
        app.task(max_retry=3)


def test_unknown_send_option_suggests(app: App) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(TypeError, match="unknown apply_async option 'countdwn'.*countdown"):
        noop.apply_async(countdwn=3)


@pytest.mark.parametrize("priority", [-1, 256, "high", True, 5.0])
def test_priority_out_of_range_is_refused(app: App, priority: object) -> None:
    @app.task
    def noop() -> None: ...

    with pytest.raises(ValueError, match="priority must be a whole number from 0 to 255"):
        noop.apply_async(priority=priority)
    assert stats(app).ready == 0


def test_priorities_above_nine_count_as_nine_as_celerys_docs_write_them(app: App) -> None:
    # Celery's docs and RabbitMQ take 0-255; the seeds' own example is priority=10
    @app.task(priority=10)
    def urgent() -> None: ...

    @app.task
    def normal() -> None: ...

    normal.apply_async(priority=9)
    urgent.delay()
    normal.apply_async(priority=255)
    normal.apply_async(priority=3)
    got = app._run_sync(app.broker.fetch(["celeriac"], 10, 1.0))
    assert [d.priority for d in got] == [9, 9, 9, 3]


def test_task_queue_max_priority_lowers_the_highest_level(app: App) -> None:
    app.conf.task_queue_max_priority = 5

    @app.task
    def noop() -> None: ...

    noop.apply_async(priority=8)
    noop.apply_async(priority=2)
    got = app._run_sync(app.broker.fetch(["celeriac"], 10, 1.0))
    assert sorted(d.priority for d in got) == [2, 5]


def test_countdown_waits_in_the_broker(app: App) -> None:
    @app.task
    def later() -> None: ...

    later.apply_async(countdown=60)
    assert stats(app) == QueueStats("celeriac", 0, 1, 0)


def test_countdown_and_eta_together_are_refused(app: App) -> None:
    import datetime

    @app.task
    def later() -> None: ...

    with pytest.raises(TypeError, match="countdown or eta"):
        later.apply_async(countdown=1, eta=datetime.datetime.now(datetime.UTC))


def test_queue_comes_from_call_then_task_then_routes(app: App) -> None:
    app.conf.task_routes = {"proj.reports.*": {"queue": "reports"}, "proj.mail": "mail"}

    @app.task(name="proj.reports.monthly")
    def monthly() -> None: ...

    @app.task(name="proj.mail")
    def mail() -> None: ...

    @app.task(name="proj.pinned", queue="pinned")
    def pinned() -> None: ...

    monthly.delay()
    mail.delay()
    pinned.delay()
    mail.apply_async(queue="urgent")
    counts = {s.queue: s.ready for s in
              app._run_sync(app.broker.queue_stats(["reports", "mail", "pinned", "urgent"]))}
    assert counts == {"reports": 1, "mail": 1, "pinned": 1, "urgent": 1}


def test_send_task_by_name_needs_no_registration(app: App) -> None:
    result = app.send_task("elsewhere.add", args=(1, 2))
    assert result.id
    assert stats(app).ready == 1


def test_oversized_message_fails_at_delay(app: App) -> None:
    app.conf.task_message_max_size = 1000

    @app.task
    def store(blob: str) -> None: ...

    with pytest.raises(MessageTooLarge, match="over the limit of 1,000 bytes"):
        store.delay("x" * 5000)
    assert stats(app).ready == 0


def test_pickle_cannot_be_sent_when_not_accepted(app: App) -> None:
    @app.task(serializer="pickle")
    def risky() -> None: ...

    with pytest.raises(ContentDisallowed, match="pickle.*accept_content"):
        risky.delay()


def test_adelay_publishes_from_async_code(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def produce() -> str:
        result = await add.adelay(1, 2)
        return result.id

    asyncio.run(produce())
    assert stats(app).ready == 1


def test_sent_message_carries_the_call(app: App) -> None:
    @app.task(queue="math", priority=3)
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply_async((1,), {"y": 2}, task_id="fixed-id", expires=30)
    delivery = app._run_sync(app.broker.fetch(["math"], 1, 1.0))[0]
    message = app.decode_message(delivery.body)
    assert (message.id, message.args, message.kwargs) == ("fixed-id", (1,), {"y": 2})
    assert (message.queue, message.priority, delivery.priority) == ("math", 3, 3)
    assert message.expires is not None
    assert message.expires > message.sent_at
    assert result.id == "fixed-id"


def test_send_many_checks_everything_before_sending(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="missing a required argument"):
        app.send_many([(add, (1, 2)), (add, (1,))])
    assert stats(app).ready == 0

    results = app.send_many([(add, (i, i)) for i in range(2500)] +
                            [("elsewhere.task", (), {}, {"queue": "other"})], chunk_size=1000)
    assert len({r.id for r in results}) == 2501
    assert stats(app).ready == 2500
    assert stats(app, "other").ready == 1


# Calls checked against many signatures: .delay() must accept exactly what the function
# accepts, and refuse the rest with the TypeError Python itself would give.
def plain(a, b, c=3): ...
def no_params(): ...
def star(a, *rest, key=1, **extra): ...
def keyword_only(a, *, b): ...
def positional_only(a, /, b=2): ...


CALLS: list[tuple[tuple[object, ...], dict[str, object]]] = [
    ((), {}), ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1, 2, 3, 4), {}),
    ((), {"a": 1, "b": 2}), ((1,), {"b": 2}), ((1,), {"b": 2, "c": 3}), ((1,), {"a": 1}),
    ((1, 2), {"c": 3}), ((1, 2), {"d": 4}), ((), {"b": 2}), ((1,), {"c": 3}),
    ((1, 2), {"a": 1}), ((), {"a": 1}), ((1,), {"rest": 2}), ((1,), {"key": 2, "z": 3}),
]


@pytest.mark.parametrize("fn", [plain, no_params, star, keyword_only, positional_only])
def test_delay_accepts_exactly_the_calls_the_function_accepts(app: App, fn: object) -> None:
    import inspect

    task = app.task(fn)
    signature = inspect.signature(fn)

    def python_says(args: tuple[object, ...], kwargs: dict[str, object]) -> str | None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            return str(exc)
        return None

    for args, kwargs in CALLS:
        expected = python_says(args, kwargs)
        if expected is None:
            task.delay(*args, **kwargs)  # sent without a complaint
        else:
            with pytest.raises(TypeError) as raised:
                task.delay(*args, **kwargs)
            assert str(raised.value).endswith(f": {expected}"), (args, kwargs)


def test_task_ids_are_distinct_random_uuids(app: App) -> None:
    import uuid

    @app.task
    def noop() -> None: ...

    ids = [noop.delay().id for _ in range(1000)]

    assert len(set(ids)) == 1000
    for task_id in ids[:50]:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
