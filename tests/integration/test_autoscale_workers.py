"""Autoscaling on real worker processes on SQLite (tests/integration/autoscale_cases.py)."""

from __future__ import annotations

from autoscale_cases import (
    node_name,
    prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle,
    prefork_shrinks_idle_processes_and_keeps_the_busy_one,
    threads_grow_their_slots_under_a_backlog_and_shrink_when_idle,
)
from worker_harness import Deployment


def test_prefork_autoscale_grows_under_a_backlog_and_shrinks_when_idle(
        deployment: Deployment) -> None:
    prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle(deployment)


def test_threads_autoscale_grows_slots_under_a_backlog_and_shrinks_when_idle(
        deployment: Deployment) -> None:
    threads_grow_their_slots_under_a_backlog_and_shrink_when_idle(deployment)


def test_prefork_autoscale_stops_idle_processes_and_keeps_the_busy_one(
        deployment: Deployment) -> None:
    prefork_shrinks_idle_processes_and_keeps_the_busy_one(deployment)


def test_bad_autoscale_bounds_are_one_clear_line(deployment: Deployment) -> None:
    swapped = deployment.start_worker("-n", node_name(), "--autoscale=1,4")
    solo = deployment.start_worker("-n", node_name(), "-P", "solo", "--autoscale=4,1")
    assert swapped.wait(20) == 2
    assert solo.wait(20) == 2
    assert "MAX (1) must be at least MIN (4): Celery's order is --autoscale=MAX,MIN" \
        in swapped.log()
    assert "--autoscale needs a pool that can change size" in solo.log()
    for worker in (swapped, solo):
        assert "Traceback" not in worker.log()
        lines = [line for line in worker.log().splitlines() if line.strip()]
        assert len(lines) == 3  # click's usage line and hint, then the one error line
