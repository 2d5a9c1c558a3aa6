"""A project written for Celery, with only its imports changed, to run on celeriac.

``write_project(root, backend)`` lays it out in ``root``: an old-style uppercase
``celeryconfig`` module (kombu's ``Queue``/``Exchange`` with Celery's transient queue),
``proj/celery.py`` making ``Celery("proj")`` and autodiscovering its tasks,
``proj/tasks.py`` with ``shared_task``s, a ``base=`` task class with ``on_failure`` and
``priority=10``. The broker URL comes from ``CELERY_BROKER_URL`` in the environment, as
deployments of Celery set it. ``run_project`` starts a worker with ``-A proj`` and a
producer process, and returns what the producer saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from worker_harness import WorkerProcess, wait_until

FILES = {
    "celeryconfig.py": '''
        from celeriac import Exchange, Queue  # was: from kombu import Exchange, Queue

        CELERY_RESULT_BACKEND = {backend!r}
        CELERY_DEFAULT_QUEUE = "celery"
        CELERY_QUEUES = (
            Queue("celery", routing_key="celery"),
            Queue("transient", Exchange("transient", delivery_mode=1),
                  routing_key="transient", durable=False),
        )
        CELERY_ROUTES = {{"proj.tasks.fire_and_forget": {{"queue": "transient"}}}}
        CELERYD_PREFETCH_MULTIPLIER = 1
        CELERY_ACKS_LATE = True
        CELERY_TASK_SERIALIZER = "json"
    ''',
    "proj/__init__.py": '''
        from .celery import app as celery_app

        __all__ = ("celery_app",)
    ''',
    "proj/celery.py": '''
        from celeriac import Celery  # was: from celery import Celery

        app = Celery("proj")
        app.config_from_object("celeryconfig")
        app.autodiscover_tasks(["proj"])
    ''',
    "proj/tasks.py": '''
        import os

        from celeriac import Task, shared_task  # was: from celery import Task, shared_task


        class Notifying(Task):
            def on_failure(self, exc, task_id, args, kwargs, einfo):
                with open(os.environ["FAILURES_FILE"], "a") as failures:
                    failures.write(f"{{task_id}} {{exc!r}}\\n")


        @shared_task(bind=True)
        def add(self, x, y):
            return [x + y, self.request.delivery_info["queue"]]


        @shared_task(bind=True, priority=10)
        def urgent(self):
            return self.request.delivery_info["priority"]


        @shared_task(bind=True)
        def fire_and_forget(self, n):
            return [n, self.request.delivery_info["queue"]]


        @shared_task(base=Notifying)
        def explode():
            raise ValueError("boom")
    ''',
}

PRODUCER = '''
    import json
    from proj.tasks import add, explode, fire_and_forget, urgent

    seen = {"add": add.delay(2, 3).get(timeout=30), "urgent": urgent.delay().get(timeout=30),
            "transient": [r.get(timeout=30) for r in [fire_and_forget.delay(n)
                                                      for n in range(3)]]}
    failed = explode.delay()
    try:
        failed.get(timeout=30)
    except ValueError as exc:
        seen["explode"] = [failed.id, repr(exc)]
    print(json.dumps(seen))
'''


class ProjectWorker(WorkerProcess):
    app_module = "proj"


def write_project(root: Path, backend: str) -> None:
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text.format(backend=backend)).lstrip())


def run_project(root: Path, broker: str, backend: str) -> tuple[dict[str, Any], str]:
    """Run the project on ``broker``/``backend``: (what the producer saw, the failures
    file written by the base class's on_failure)."""
    write_project(root, backend)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["CELERY_BROKER_URL"] = broker  # as a Celery deployment sets it
    env["FAILURES_FILE"] = str(root / "failures.txt")
    worker = ProjectWorker(["-c", "2", "-l", "INFO"], env, root, root / "worker.log")
    try:
        wait_until(lambda: worker.log().count(" ready: consuming celery,transient") == 2
                   or not worker.running, 60, "two ready worker processes")
        assert worker.running, worker.log()
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(PRODUCER)], cwd=root,
                             env=env, capture_output=True, text=True, timeout=120,
                             check=False)
        assert run.returncode == 0, run.stderr + worker.log()
        failures = (root / "failures.txt").read_text()
        return json.loads(run.stdout), failures
    finally:
        worker.kill_all()


def check(seen: dict[str, Any], failures: str) -> None:
    """Every task ran where its settings say, with the options Celery code gives it."""
    assert seen["add"] == [5, "celery"]  # the default queue of CELERY_DEFAULT_QUEUE
    assert seen["urgent"] == 9  # priority=10: the highest of celeriac's ten levels
    assert seen["transient"] == [[n, "transient"] for n in range(3)]  # CELERY_ROUTES
    task_id, error = seen["explode"]
    assert error == "ValueError('boom')"
    assert f"{task_id} ValueError('boom')" in failures  # the base class's on_failure ran
