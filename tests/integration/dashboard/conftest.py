"""The dashboard's API tests: one real worker and one in-process dashboard per broker.

``world`` is module-scoped and parametrised over SQLite, Redis and RabbitMQ
(``dash_harness.servers``): a module's tests share one worker process and one dashboard
(the real history store and ingest), so each broker costs one worker start however many
endpoints are checked.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dash_harness import (
    DashWorker,
    World,
    make_app,
    servers,
    wait_for,
    worker_env,
)

from celeriac.dashboard.app import Dashboard
from celeriac.dashboard.auth import AuthConfig
from celeriac.dashboard.server import Background


@pytest.fixture(scope="module", params=["sqlite", "redis", "amqp"])
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A worker, a producer App and a dashboard on one broker (see the module)."""
    kind: str = request.param
    root = tmp_path_factory.mktemp(f"dash-{kind}")
    markers = root / "markers"
    markers.mkdir()
    closers: list[Callable[[], None]] = []
    try:
        place = servers(kind, root)
        closers.append(place.cleanup)
        hostname = f"dash-{kind}-{uuid.uuid4().hex[:6]}@localhost"
        env = worker_env(place.broker, place.backend, markers)
        worker = DashWorker(["-n", hostname, "-P", "threads", "-c", "2", "-l", "INFO"],
                            env, root, root / "worker.log")
        closers.append(worker.kill_all)
        # The producer sends task-sent events: the scheduled list on RabbitMQ uses them.
        app = make_app(place, task_send_sent_event=True)
        closers.append(app.close)
        dashboard = Dashboard(app, AuthConfig())
        server = Background(dashboard.asgi).start()
        closers.append(server.close)
        client = httpx.Client(base_url=server.url, timeout=30)
        closers.append(client.close)
        built = World(kind, root, app, dashboard, server, client, worker, hostname, markers,
                      env, closers)
        worker.wait_ready()
        wait_for(lambda: any(w["hostname"] == hostname and w["online"]
                             for w in built.get("/api/workers")), "the worker online")
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    try:
        yield built
    finally:
        built.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    funcargs = getattr(item, "funcargs", {})
    built = funcargs.get("world")
    if report.failed and isinstance(built, World):
        report.sections.append(("worker log", built.worker.log()[-15000:]))
    return report
