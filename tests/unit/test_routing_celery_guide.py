"""Examples of Celery's routing guide ("Routing Tasks") and tasks guide ("Tasks":
retrying, rate limits, annotations), run here.

Each test holds the guide's configuration and calls as the guide writes them, with only
the import changed (``from kombu import Queue`` -> ``from celeriac import Queue``); the
asserts check where the messages went or what the tasks did. docs/routing.md lists the
examples run here and those that do not run (and why).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import App, Queue
from celeriac.testing import ThreadedWorker
from celeriac.worker.options import WorkerOptions


@pytest.fixture
def app() -> Iterator[App]:
    app = App("proj", broker="memory://", backend="memory://")
    yield app
    app.close()


def waiting(app: App, *queues: str) -> dict[str, int]:
    stats = app._run_sync(app.broker.queue_stats(list(queues)))
    return {s.queue: s.ready + s.scheduled for s in stats}


def register(app: App, *names: str) -> dict[str, Any]:
    found = {}
    for name in names:
        @app.task(name=name)
        def task(*args: Any, **kwargs: Any) -> None: ...

        found[name] = task
    return found


# -- Routing Tasks: automatic routing ------------------------------------------------------


def test_automatic_routing_by_name(app: App) -> None:
    app.conf.update(task_routes={"feed.tasks.import_feed": {"queue": "feeds"}})
    tasks = register(app, "feed.tasks.import_feed", "proj.tasks.add")
    tasks["feed.tasks.import_feed"].delay("http://cnn.com/rss")
    tasks["proj.tasks.add"].delay(2, 2)
    assert waiting(app, "feeds", "celeriac") == {"feeds": 1, "celeriac": 1}


def test_automatic_routing_by_glob(app: App) -> None:
    app.conf.task_routes = {"feed.tasks.*": {"queue": "feeds"}}
    register(app, "feed.tasks.a", "feed.tasks.b")["feed.tasks.b"].delay()
    assert waiting(app, "feeds") == {"feeds": 1}


def test_ordered_patterns_with_a_regular_expression(app: App) -> None:
    app.conf.task_routes = ([
        ("feed.tasks.*", {"queue": "feeds"}),
        ("web.tasks.*", {"queue": "web"}),
        (re.compile(r"(video|image)\.tasks\..*"), {"queue": "media"}),
    ],)
    tasks = register(app, "feed.tasks.x", "web.tasks.x", "video.tasks.x", "image.tasks.y")
    for task in tasks.values():
        task.delay()
    assert waiting(app, "feeds", "web", "media") == {"feeds": 1, "web": 1, "media": 2}


def test_the_queue_at_runtime_and_a_worker_consuming_several(app: App) -> None:
    app.conf.update(task_routes={"proj.tasks.add": {"queue": "hipri"}})

    @app.task(name="proj.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    first = add.apply_async((2, 2), queue="hipri")
    # "celery -A proj worker -Q hipri,celery" ("celeriac" is our default queue's name)
    with ThreadedWorker(app, queues=["hipri", "celeriac"]):
        assert first.get(timeout=5) == 4
        assert add.delay(1, 1).get(timeout=5) == 2


def test_changing_the_name_of_the_default_queue(app: App) -> None:
    app.conf.task_default_queue = "default"
    register(app, "proj.tasks.x")["proj.tasks.x"].delay()
    assert waiting(app, "default") == {"default": 1}


# -- Routing Tasks: manual routing (the parts that do not need exchanges) ------------------


def test_declared_queues_with_routing_keys_and_a_route_naming_both(app: App) -> None:
    app.conf.task_default_queue = "default"
    app.conf.task_queues = (
        Queue("default", routing_key="task.#"),
        Queue("feed_tasks", routing_key="feed.#"),
    )
    task_routes = {
        "feeds.tasks.import_feed": {
            "queue": "feed_tasks",
            "routing_key": "feed.import",
        },
    }
    app.conf.task_routes = task_routes
    import_feed = register(app, "feeds.tasks.import_feed")["feeds.tasks.import_feed"]
    import_feed.delay("http://cnn.com/rss")
    # "You can also override this using the routing_key argument to Task.apply_async()"
    import_feed.apply_async(args=["http://cnn.com/rss"], queue="feed_tasks",
                            routing_key="feed.import")
    # and a routing key alone picks the queue bound to it
    import_feed.apply_async(args=["http://cnn.com/rss"], routing_key="task.default")
    assert waiting(app, "feed_tasks", "default") == {"feed_tasks": 2, "default": 1}
    # A worker without -Q consumes every declared queue
    assert WorkerOptions.from_settings("proj", app.conf).queues == ("default", "feed_tasks")


def test_a_router_function(app: App) -> None:
    def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                   **kw: Any) -> Any:
        if name == "myapp.tasks.compress_video":
            return {"queue": "video", "routing_key": "video.compress"}
        return None

    app.conf.task_routes = (route_task,)
    tasks = register(app, "myapp.tasks.compress_video", "myapp.tasks.other")
    for task in tasks.values():
        task.delay()
    assert waiting(app, "video", "celeriac") == {"video": 1, "celeriac": 1}


def test_message_priorities(app: App) -> None:
    app.conf.task_default_priority = 5
    order: list[int] = []

    @app.task(bind=True)
    def note(self: Any) -> None:
        order.append(self.request.priority)

    sent = [note.apply_async(priority=p) for p in (0, 9)] + [note.delay()]
    with ThreadedWorker(app, slots=1):
        for result in sent:
            result.get(timeout=5)
    assert order == [9, 5, 0]


# -- Tasks: retrying, rate limits, annotations ---------------------------------------------


class FailWhaleError(Exception):
    pass


def test_retrying_with_exc_and_a_custom_delay(app: App) -> None:
    tries: list[int] = []

    @app.task(bind=True, default_retry_delay=30 * 60)  # retry in 30 minutes.
    def add(self: Any, x: int, y: int) -> int:
        try:
            tries.append(self.request.retries)
            if self.request.retries < 1:
                raise FailWhaleError("fail whale")
        except Exception as exc:
            # overrides the default delay to retry after 1 minute (0.01 s here)
            raise self.retry(exc=exc, countdown=0.01) from None
        return x + y

    with ThreadedWorker(app):
        assert add.delay(2, 2).get(timeout=5) == 4
    assert tries == [0, 1]


def test_automatic_retry_for_known_exceptions(app: App) -> None:
    calls: list[int] = []

    @app.task(autoretry_for=(FailWhaleError,), retry_kwargs={"max_retries": 5, "countdown": 0})
    def refresh_timeline(user: str) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise FailWhaleError()
        return f"timeline of {user}"

    @app.task(autoretry_for=(Exception,), dont_autoretry_for=(ValueError,),
              retry_backoff=True, retry_backoff_max=700, retry_jitter=False)
    def picky() -> None:
        raise ValueError("not worth retrying")

    with ThreadedWorker(app):
        assert refresh_timeline.delay("ask").get(timeout=5) == "timeline of ask"
        with pytest.raises(ValueError, match="not worth retrying"):
            picky.delay().get(timeout=5)
    assert len(calls) == 3


def test_rate_limits_and_annotations(app: App) -> None:
    @app.task(name="tasks.add", rate_limit="10/m")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="tasks.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    assert add.options.rate_limit == "10/m"
    app.conf.task_annotations = {"tasks.add": {"rate_limit": "10/s"}}
    assert add.options.rate_limit == "10/s"
    app.conf.task_annotations = {"*": {"rate_limit": "10/s"}}
    assert mul.options.rate_limit == "10/s"

    class MyAnnotate:
        def annotate(self, task: Any) -> dict[str, Any] | None:
            if task.name.startswith("tasks."):
                return {"rate_limit": "10/s"}
            return None

    app.conf.task_annotations = (MyAnnotate(), {"tasks.mul": {"max_retries": 1}})
    assert (add.options.rate_limit, mul.options.rate_limit) == ("10/s", "10/s")


def test_changing_a_rate_limit_at_run_time(app: App) -> None:
    # Workers guide, "Rate limits": for every worker at once (no destination)
    app.control.rate_limit("myapp.mytask", "200/m")
    buckets = app.broker.token_buckets()
    assert buckets is not None
    assert app._run_sync(buckets.overrides()) == {"myapp.mytask": "200/m"}
