"""The browser tests' cluster: a worker process, the dashboard in this process, the App.

Kept out of conftest.py so the tests can import its names: several conftest modules
share the module name ``conftest`` when the whole suite runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "integration"))  # the worker harness
sys.path.insert(0, str(HERE))  # the test app, for the producer side

from browser_app import MARKERS_ENV, register  # noqa: E402
from worker_harness import WorkerProcess  # noqa: E402

from celeriac import App  # noqa: E402
from celeriac.dashboard.app import Dashboard  # noqa: E402
from celeriac.dashboard.server import Background  # noqa: E402

PROCESSES = 2  # the worker's prefork processes at start


class BrowserAppWorker(WorkerProcess):
    app_module = "browser_app"


@dataclass
class Cluster:
    app: App  # the producer side, with the test app's tasks
    url: str  # the dashboard's
    worker: BrowserAppWorker
    markers: Path  # where the tasks look for their marker files


def _env(broker: str, markers: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CELERIAC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get(
        "PYTHONPATH")])])
    env[MARKERS_ENV] = str(markers)
    env["CELERIAC_BROKER_URL"] = json.dumps(broker)
    env["CELERIAC_RESULT_BACKEND"] = json.dumps(broker)
    return env


@contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    """A SQLite broker and backend in ``root``, a worker on it, the dashboard served."""
    markers = root / "markers"
    markers.mkdir()
    broker = f"sqlite:///{root / 'broker.db'}"
    worker = BrowserAppWorker(["-c", str(PROCESSES), "-n", "web@%h", "-l", "INFO"],
                              _env(broker, markers), root, root / "worker.log")
    app = App("web-tests", broker=broker, backend=broker)
    register(app)
    server: Background | None = None
    try:
        server = Background(Dashboard(app).asgi).start()
        worker.wait_ready(PROCESSES, timeout=30)
        yield Cluster(app, server.url, worker, markers)
    finally:
        if server is not None:
            server.close()
        worker.kill_all()
        app.close()
