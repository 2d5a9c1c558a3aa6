"""The standard Django layout, as Celery's "First steps with Django" writes it, with only
the imports changed: config_from_object("django.conf:settings", namespace="CELERY"),
autodiscover_tasks(), shared_task, and the ORM used from prefork worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from worker_harness import WorkerProcess, wait_until

pytest.importorskip("django")  # in the test extra; CI installs it

FILES = {
    "proj/__init__.py": "from .celery import app as celery_app\n\n__all__ = ('celery_app',)\n",
    "proj/celery.py": """
        import os

        from celeriac import App

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
        app = App("proj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
    """,
    "proj/settings.py": """
        import os
        from pathlib import Path

        BASE_DIR = Path(__file__).resolve().parent.parent
        SECRET_KEY = "test-only"
        INSTALLED_APPS = ["django.contrib.contenttypes", "shop"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                                 "NAME": BASE_DIR / "db.sqlite3"}}
        USE_TZ = True
        CELERY_BROKER_URL = os.environ.get("PROJ_BROKER_URL",
                                           f"sqlite:///{BASE_DIR / 'broker.db'}")
        CELERY_RESULT_BACKEND = os.environ.get("PROJ_RESULT_BACKEND", CELERY_BROKER_URL)
        CELERY_TASK_DEFAULT_QUEUE = "django-tasks"
        CELERY_WORKER_PREFETCH_MULTIPLIER = 1
    """,
    "shop/__init__.py": "",
    "shop/apps.py": """
        from django.apps import AppConfig


        class ShopConfig(AppConfig):
            name = "shop"
    """,
    "shop/tasks.py": """
        import os

        from django.contrib.contenttypes.models import ContentType
        from django.db import connection

        from celeriac import shared_task


        @shared_task
        def orm_check(label):
            with connection.cursor() as cursor:
                cursor.execute("select 1")
                (one,) = cursor.fetchone()
            return [label, one, ContentType.objects.count() >= 0, os.getpid()]
    """,
}


class ProjectWorker(WorkerProcess):
    app_module = "proj"  # -A proj finds proj/celery.py's app through proj/__init__.py


def write_project(root: Path) -> None:
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def project_env(root: Path, broker: str | None, backend: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_", "DJANGO_", "PROJ_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    for name, value in (("PROJ_BROKER_URL", broker), ("PROJ_RESULT_BACKEND", backend)):
        if value is not None:
            env[name] = value
    return env


def test_a_django_project_runs_its_shared_tasks_unchanged(tmp_path: Path) -> None:
    run_django_project(tmp_path)


def run_django_project(django_project: Path, broker: str | None = None,
                       backend: str | None = None) -> None:
    """The scenario, on the embedded broker or on ``broker``/``backend``."""
    write_project(django_project)
    env = project_env(django_project, broker, backend)
    subprocess.run([sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
                   cwd=django_project, env=env, check=True, timeout=120)
    # Given a worker started the Celery way: -A proj, two prefork processes
    worker = ProjectWorker(["-c", "2", "-l", "INFO"], env, django_project,
                           django_project / "worker.log")
    try:
        wait_until(lambda: worker.log().count(" ready: consuming django-tasks") == 2
                   or not worker.running, 60, "two ready worker processes")
        log = worker.log()
        assert worker.running, log
        # Then it found the task through autodiscover_tasks, and consumes the queue the
        # CELERY_-prefixed settings name
        assert "    . shop.tasks.orm_check" in log

        # When the web side sends tasks with the shared task's delay()
        producer = textwrap.dedent("""
            import django, json
            django.setup()
            from proj import celery_app
            from shop.tasks import orm_check
            results = [orm_check.delay(f"t{n}") for n in range(6)]
            print(json.dumps([r.get(timeout=30) for r in results]))
        """)
        run = subprocess.run([sys.executable, "-c", producer], cwd=django_project, env=env,
                             capture_output=True, text=True, timeout=90, check=False)

        # Then each ran in a worker process, with a working Django database connection
        assert run.returncode == 0, run.stderr + worker.log()
        outcomes = json.loads(run.stdout)
        assert [o[:3] for o in outcomes] == [[f"t{n}", 1, True] for n in range(6)]
        assert {o[3] for o in outcomes} <= {c.pid for c in worker.children()}
    finally:
        worker.kill_all()
