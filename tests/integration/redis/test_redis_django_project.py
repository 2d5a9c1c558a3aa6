"""The Django project of test_django_project.py, on Redis (broker and results)."""

from __future__ import annotations

from pathlib import Path

from test_django_project import run_django_project


def test_a_django_project_runs_its_shared_tasks_unchanged_on_redis(
        shared_redis: str, tmp_path: Path) -> None:
    run_django_project(tmp_path, broker=shared_redis, backend=shared_redis)
