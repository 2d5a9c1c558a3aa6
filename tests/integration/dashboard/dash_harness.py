"""What the dashboard's integration tests share: the broker places, the worker, the world.

- ``servers(kind, root)``: SQLite (a file), Redis (database 4, a key prefix of the
  caller's own, deleted by ``cleanup``) or RabbitMQ (a vhost of its own, created and
  deleted with rabbitmqctl; results in a SQLite file);
- ``DashWorker``: ``celeriac -A dash_app worker`` (apps/dash_app.py);
- ``World``: one broker's worker, producer App and in-process dashboard (uvicorn on a
  free port in a thread), with JSON helpers that check the status;
- ``wait_for``: poll a condition against a deadline (nothing sleeps and hopes).

A module, not the conftest: test modules import it by name (``conftest`` is ambiguous
when several test directories run together).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

HERE = Path(__file__).parent
APPS = HERE / "apps"
for extra in (APPS, HERE.parent / "redis", HERE.parent / "amqp"):
    sys.path.insert(0, str(extra))

from dash_app import MARKERS_ENV, register  # noqa: E402
from worker_harness import WorkerProcess  # noqa: E402

from celeriac import App  # noqa: E402
from celeriac.dashboard.app import Dashboard  # noqa: E402
from celeriac.dashboard.server import Background  # noqa: E402

REDIS = "redis://127.0.0.1:6379/4"
T = TypeVar("T")


def wait_for(condition: Callable[[], T | bool | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


class DashWorker(WorkerProcess):
    app_module = "dash_app"


@dataclass
class Servers:
    """Where one broker kind's test world lives, and how to clean it up."""

    kind: str
    broker: str
    backend: str
    cleanup: Callable[[], None] = lambda: None


def servers(kind: str, root: Path) -> Servers:
    if kind == "sqlite":
        url = f"sqlite:///{root / 'broker.db'}"
        return Servers(kind, url, url)
    if kind == "redis":
        from redis_harness import delete_prefix, ping, unavailable

        if not ping(REDIS):
            unavailable(f"Redis is not running at {REDIS}")
        prefix = f"dash-test-{uuid.uuid4().hex[:10]}:"
        url = f"{REDIS}?key_prefix={prefix}"
        return Servers(kind, url, url, lambda: delete_prefix(REDIS, prefix))
    from rabbit_harness import Rabbit

    rabbit = Rabbit()
    return Servers(kind, rabbit.url(), f"sqlite:///{root / 'results.db'}", rabbit.close)


@dataclass
class World:
    kind: str
    root: Path
    app: App
    dashboard: Dashboard
    server: Background
    client: httpx.Client
    worker: DashWorker
    hostname: str
    markers: Path
    env: dict[str, str]
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def get(self, path: str, status: int = 200, **params: Any) -> Any:
        response = self.client.get(path, params=params or None)
        assert response.status_code == status, f"GET {path}: {response.status_code} " \
                                               f"{response.text}"
        return response.json()

    def post(self, path: str, body: Any = None, status: int = 200, **params: Any) -> Any:
        token = self.client.get("/api/csrf").json()["token"]
        response = self.client.post(path, json=body, params=params or None,
                                    headers={"X-CSRF-Token": token})
        assert response.status_code == status, f"POST {path}: {response.status_code} " \
                                               f"{response.text}"
        return response.json()

    def task_in(self, task_id: str, *wanted: str, timeout: float = 20.0) -> dict[str, Any]:
        """The task's record once the history has it in one of ``wanted``."""
        def seen() -> dict[str, Any] | None:
            response = self.client.get(f"/api/tasks/{task_id}")
            found = response.json() if response.status_code == 200 else None
            return found if found and found["state"] in wanted else None
        return wait_for(seen, f"task {task_id} in {wanted}", timeout)

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # clean up the rest whatever one of them does
                print(f"cleanup failed: {exc!r}", file=sys.stderr)


def worker_env(broker: str, backend: str, markers: Path, **settings: Any) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CELERIAC_")
           and key not in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), *filter(None, [os.environ.get(
        "PYTHONPATH")])])
    env[MARKERS_ENV] = str(markers)
    values = {"broker_url": broker, "result_backend": backend,
              "broker_transport_options": {"lease_seconds": 2.0}, **settings}
    for name, value in values.items():
        env[f"CELERIAC_{name.upper()}"] = json.dumps(value)
    return env


def make_app(place: Servers, **settings: Any) -> App:
    app = App("dash-tests", broker=place.broker, backend=place.backend,
              broker_transport_options={"lease_seconds": 2.0}, **settings)
    register(app)
    return app
