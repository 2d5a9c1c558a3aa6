"""The Django project of test_django_project.py, on RabbitMQ with rpc:// results."""

from __future__ import annotations

from pathlib import Path

from rabbit_harness import Rabbit
from test_django_project import run_django_project


def test_a_django_project_runs_its_shared_tasks_unchanged_on_rabbitmq(
        rabbit: Rabbit, tmp_path: Path) -> None:
    run_django_project(tmp_path, broker=rabbit.url(), backend="rpc://")
