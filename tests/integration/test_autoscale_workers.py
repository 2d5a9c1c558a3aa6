"""Autoscaling on real worker processes on SQLite (tests/integration/autoscale_cases.py)."""

from __future__ import annotations

from autoscale_cases import (
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
