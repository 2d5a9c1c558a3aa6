"""A Celery project, imports changed only, on Redis (tests/integration/celery_project.py)."""

from __future__ import annotations

from pathlib import Path

from celery_project import check, run_project


def test_a_celery_project_runs_unchanged_on_redis(shared_redis: str, tmp_path: Path) -> None:
    seen, failures = run_project(tmp_path, broker=shared_redis, backend=shared_redis)
    check(seen, failures)
