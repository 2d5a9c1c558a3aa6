"""A Celery project, imports changed only, on RabbitMQ with rpc:// results
(tests/integration/celery_project.py)."""

from __future__ import annotations

from pathlib import Path

from celery_project import check, run_project
from rabbit_harness import Rabbit


def test_a_celery_project_runs_unchanged_on_rabbitmq(rabbit: Rabbit, tmp_path: Path) -> None:
    seen, failures = run_project(tmp_path, broker=rabbit.url(), backend="rpc://")
    check(seen, failures)
