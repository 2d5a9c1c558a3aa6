"""Routing: task_routes, task_queues, task_annotations, queue= per call, worker queue order.

Sending is checked on the memory broker by where the messages land; running, with
in-process workers (``ThreadedWorker``) that consume the queues given.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import App, ConfigurationError, Exchange, Queue, QueueNotFound, Task
from celeriac.routing import Router, topic_matches
from celeriac.testing import ThreadedWorker
from celeriac.worker.options import WorkerOptions


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


def ready(app: App, *queues: str) -> dict[str, int]:
    """How many messages wait in each queue."""
    return {s.queue: s.ready for s in app._run_sync(app.broker.queue_stats(list(queues)))}


def route(routes: Any, name: str, queues: Any = None, **options: Any) -> dict[str, Any]:
    from celeriac.routing import declared_queues

    return Router(routes, declared_queues(queues)).route(name, (), {}, options, None)


# -- task_routes --------------------------------------------------------------------------


def test_a_route_table_matches_exact_names_first_then_patterns_in_order() -> None:
    table = {
        "feed.tasks.*": {"queue": "feeds"},
        "feed.tasks.import_feed": "imports",  # exact wins over the earlier glob
        re.compile(r"(video|image)\.tasks\..*"): {"queue": "media", "priority": 3},
        "feed.*": "everything-feed",
    }
    assert route(table, "feed.tasks.import_feed") == {"queue": "imports"}
    assert route(table, "feed.tasks.parse") == {"queue": "feeds"}
    assert route(table, "feed.other") == {"queue": "everything-feed"}
    assert route(table, "image.tasks.resize") == {"queue": "media", "priority": 3}
    assert route(table, "audio.tasks.mix") == {}


def test_celerys_ordered_list_of_pattern_pairs() -> None:
    # From Celery's routing guide: a tuple holding one list of (pattern, route) pairs
    routes = ([
        ("feed.tasks.*", {"queue": "feeds"}),
        ("web.tasks.*", {"queue": "web"}),
        (re.compile(r"(video|image)\.tasks\..*"), {"queue": "media"}),
    ],)
    assert route(routes, "web.tasks.render") == {"queue": "web"}
    assert route(routes, "video.tasks.encode") == {"queue": "media"}


def test_routers_are_tried_in_order_and_the_first_answer_wins() -> None:
    seen: list[tuple[Any, ...]] = []

    def by_argument(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                    **kw: Any) -> Any:
        seen.append((name, options))
        return "priority-customers" if kwargs.get("vip") else None

    routes = [by_argument, {"proj.*": "default-proj"}, lambda *a, **k: "never"]
    router = Router(routes)
    assert router.route("proj.x", (), {"vip": True}, {"countdown": 1}, None) \
        == {"queue": "priority-customers"}
    assert router.route("proj.x", (), {}, {}, None) == {"queue": "default-proj"}
    assert router.route("other", (), {}, {}, None) == {"queue": "never"}
    assert seen[0] == ("proj.x", {"countdown": 1})


def test_a_route_may_name_a_queue_object_or_a_routing_key_bound_by_task_queues() -> None:
    queues = [Queue("default", routing_key="task.#"), Queue("feed_tasks", routing_key="feed.#")]
    assert route({"a": Queue("q1")}, "a") == {"queue": "q1"}
    assert route({"a": {"queue": Queue("q2"), "priority": 1}}, "a") == {"queue": "q2",
                                                                         "priority": 1}
    assert route({"feed.import": {"routing_key": "feed.import"}}, "feed.import", queues)[
        "queue"] == "feed_tasks"
    with pytest.raises(ConfigurationError, match="no queue in task_queues is bound to"):
        route({"x": {"exchange": "media", "routing_key": "media.image"}}, "x", queues)


@pytest.mark.parametrize(("pattern", "key", "matches"), [
    ("feed.#", "feed.import", True), ("feed.#", "feed", True), ("feed.#", "feeds.x", False),
    ("*.import", "feed.import", True), ("*.import", "a.feed.import", False),
    ("#", "anything.at.all", True), ("a.*.c", "a.b.c", True), ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True), ("a.b", "a.b.c", False),
])
def test_routing_keys_match_as_amqp_topics(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


@pytest.mark.parametrize(("routes", "message"), [
    ("proj.routers.route_task", "pass the router function itself"),
    (["proj.routers.route_task"], "pass the router function itself"),
    (42, "must be a mapping, a callable or a list"),
    ({1: "q"}, "a route key must be a task name"),
])
def test_malformed_routes_are_refused_when_set(app: App, routes: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.conf.task_routes = routes


def test_call_then_task_then_annotation_then_route_then_default(app: App) -> None:
    app.conf.update(task_default_queue="fallback",
                    task_routes={"proj.*": {"queue": "routed", "priority": 4}})

    @app.task(name="proj.plain")
    def plain() -> None: ...

    @app.task(name="proj.pinned", queue="pinned")
    def pinned() -> None: ...

    @app.task(name="other.free")
    def free() -> None: ...

    plain.delay()  # routed (and the route's priority)
    pinned.delay()  # the task's own queue wins over the route
    plain.apply_async(queue="called")  # the call's wins over everything
    free.delay()  # nothing matches: the default
    assert ready(app, "routed", "pinned", "called", "fallback") == {
        "routed": 1, "pinned": 1, "called": 1, "fallback": 1}
    # Annotations change the task's own options, so they too beat the routes
    app.conf.task_annotations = {"proj.plain": {"queue": "annotated"}}
    plain.delay()
    assert ready(app, "annotated", "routed") == {"annotated": 1, "routed": 1}


def test_routing_sends_tasks_to_the_right_queues_and_workers(app: App) -> None:
    # Given two queues, each with a worker of its own, and routes by name
    app.conf.task_routes = {"proj.images.*": "images", "proj.mail.send": {"queue": "mail"}}
    seen: dict[str, list[str | None]] = {"images": [], "mail": []}
    lock = threading.Lock()

    def make(name: str) -> Task[..., str | None]:
        @app.task(name=name, bind=True)
        def where(self: Task[..., Any]) -> str | None:
            with lock:
                seen[self.request.delivery_info["queue"]].append(name)
            return self.request.delivery_info["queue"]

        return where

    resize, thumbnail, send = (make(n) for n in
                               ("proj.images.resize", "proj.images.thumb", "proj.mail.send"))
    with ThreadedWorker(app, queues=["images"]), ThreadedWorker(app, queues=["mail"]):
        # When tasks of both kinds are sent
        results = [resize.delay(), send.delay(), thumbnail.delay(), send.delay()]
        # Then each ran on its own queue's worker
        assert [r.get(timeout=5) for r in results] == ["images", "mail", "images", "mail"]
    assert sorted(seen["images"]) == ["proj.images.resize", "proj.images.thumb"]
    assert seen["mail"] == ["proj.mail.send"] * 2


# -- task_queues --------------------------------------------------------------------------


def test_task_queues_takes_celerys_shapes(app: App) -> None:
    app.conf.task_queues = [Queue("default", routing_key="task.#"), "bulk",
                            {"name": "volatile", "durable": False}]
    assert [q.name for q in app.conf.task_queues] == ["default", "bulk", "volatile"]
    assert app.conf.task_queues[2].durable is False
    app.conf.task_queues = {"a": None, "b": {"queue_arguments": {"x-queue-type": "quorum"}}}
    assert [(q.name, q.quorum) for q in app.conf.task_queues] == [("a", False), ("b", True)]


@pytest.mark.parametrize(("queues", "message"), [
    (["a", "a"], "declares 'a' more than once"),
    ({"a": {"durabel": False}}, 'did you mean "durable"'),
    ([{"durable": False}], "needs a non-empty name"),
    ({"a": {"durable": "yes"}}, "must be true or false"),
    ({"a": {"queue_arguments": {"x-queue-type": "stream"}}}, "classic or quorum"),
    (42, "must be a list of queues"),
])
def test_malformed_queues_are_refused_when_set(app: App, queues: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.conf.task_queues = queues


def test_an_undeclared_queue_is_an_error_at_send_time_when_missing_queues_are_not_made(
    app: App,
) -> None:
    app.conf.update(task_queues=["celeriac", "reports"], task_create_missing_queues=False,
                    task_routes={"proj.typo": "reprots"})

    @app.task(name="proj.typo")
    def typo() -> None: ...

    @app.task(name="proj.fine")
    def fine() -> None: ...

    with pytest.raises(QueueNotFound, match='not in task_queues .did you mean "reports"'):
        typo.delay()
    with pytest.raises(QueueNotFound, match="'elsewhere'"):
        fine.apply_async(queue="elsewhere")
    fine.apply_async(queue="reports")
    fine.delay()
    # nothing was sent for the refused calls
    assert ready(app, "reprots", "elsewhere", "reports", "celeriac") == {
        "reprots": 0, "elsewhere": 0, "reports": 1, "celeriac": 1}
    # With missing queues made (the default), any queue will do
    app.conf.task_create_missing_queues = True
    typo.delay()
    assert ready(app, "reprots") == {"reprots": 1}


def test_a_worker_without_q_consumes_every_declared_queue_in_order(app: App) -> None:
    assert WorkerOptions.from_settings("proj", app.conf).queues == ("celeriac",)
    app.conf.task_queues = ["high", "default", "low"]
    assert WorkerOptions.from_settings("proj", app.conf).queues == ("high", "default", "low")
    assert WorkerOptions.from_settings("proj", app.conf, queues=("low",)).queues == ("low",)


def test_a_worker_takes_its_queues_in_the_order_given(app: App) -> None:
    # Given tasks waiting in two queues, the later queue's sent first
    order: list[str] = []

    @app.task(bind=True)
    def note(self: Task[..., Any], tag: str) -> None:
        order.append(tag)

    last = [note.apply_async((f"b{i}",), queue="b") for i in range(5)]
    last += [note.apply_async((f"a{i}",), queue="a") for i in range(5)]
    # When one slot consumes "-Q a,b"
    with ThreadedWorker(app, queues=["a", "b"], slots=1):
        for result in last:
            result.get(timeout=5)
    # Then every task of "a" ran before any of "b"
    assert order == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


def test_declared_queue_options_reach_a_broker_that_declares_queues() -> None:
    app = App("proj", broker="amqp://guest:guest@127.0.0.1:5672/", backend="memory://",
              task_queues=[Queue("volatile", durable=False), "kept",
                           Queue("safe", queue_arguments={"x-queue-type": "quorum"})],
              broker_transport_options={"queues": {"kept": {"type": "classic"}}})
    try:
        broker: Any = app.broker  # constructed, not connected
        assert broker.queue_spec("volatile").durable is False
        assert broker.queue_spec("kept").durable is True
        assert broker.queue_spec("safe").quorum is True
    finally:
        app.close()
    # A broker without the capability gets no queue options (only the connection timeout
    # every broker gets from broker_connection_timeout)
    sqlite = App("proj", broker="memory://", task_queues=[Queue("volatile", durable=False)])
    assert sqlite.broker.options == {"connection_timeout": 4.0}
    sqlite.close()


# -- task_annotations ---------------------------------------------------------------------


def test_annotations_change_task_options_by_name_and_for_all(app: App) -> None:
    @app.task(name="proj.a", max_retries=3, priority=1)
    def a() -> None: ...

    @app.task(name="proj.b")
    def b() -> None: ...

    app.conf.task_annotations = {"proj.a": {"max_retries": 9},
                                 "*": {"priority": 5, "acks_late": False}}
    assert (a.max_retries, a.priority, a.acks_late) == (9, 5, False)
    assert (b.max_retries, b.priority, b.acks_late) == (3, 5, False)
    # The first annotation naming a task wins; a named one beats "*"
    app.conf.task_annotations = [{"proj.a": {"priority": 7}}, {"proj.a": {"priority": 8}},
                                 {"*": {"priority": 2}}]
    assert (a.priority, b.priority) == (7, 2)
    app.conf.task_annotations = None
    assert (a.max_retries, a.priority, a.acks_late) == (3, 1, True)


def test_class_based_annotations(app: App) -> None:
    class SlowDownImports:
        def annotate(self, task: Task[..., Any]) -> dict[str, Any] | None:
            return {"rate_limit": "2/s"} if task.name.startswith("proj.imports.") else None

    @app.task(name="proj.imports.one")
    def one() -> None: ...

    @app.task(name="proj.other")
    def other() -> None: ...

    app.conf.task_annotations = (SlowDownImports(),)
    assert one.options.rate_limit == "2/s"
    assert other.options.rate_limit is None


@pytest.mark.parametrize(("annotations", "message"), [
    ({"proj.a": {"rate_limt": "1/s"}}, 'did you mean "rate_limit"'),
    ({"proj.a": {"priority": 300}}, "priority must be a whole number"),
    ({"proj.a": "fast"}, "must be a mapping of task options"),
    ([42], "an object with an annotate"),
])
def test_malformed_annotations_are_refused_when_set(app: App, annotations: Any,
                                                    message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.conf.task_annotations = annotations


# -- kombu's shapes (issue 11) -----------------------------------------------------------


def test_celerys_transient_queue_declaration_works_unchanged() -> None:

    # Celery's optimization guide, word for word apart from the import
    app = App("proj", broker="memory://", task_queues=(
        Queue("celery", routing_key="celery"),
        Queue("transient", Exchange("transient", delivery_mode=1),
              routing_key="transient", durable=False),
    ), task_routes={"proj.tasks.add": {"queue": "transient"}})
    transient = app.conf.task_queues[1]
    assert (transient.name, transient.durable) == ("transient", False)


def test_a_transient_exchange_on_a_durable_queue_is_refused() -> None:

    with pytest.raises(ConfigurationError, match="declare it with durable=False"):
        Queue("q", Exchange("q", delivery_mode="transient"))
    with pytest.raises(ConfigurationError, match="delivery_mode must be 1 or 'transient'"):
        Exchange("q", delivery_mode=3)


def test_a_typo_in_a_route_option_is_an_error() -> None:
    with pytest.raises(ConfigurationError,
                       match="unknown option 'queu' in the route of 'proj.add'"):
        App("proj", broker="memory://", task_routes={"proj.add": {"queu": "io"}})
