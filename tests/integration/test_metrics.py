"""``worker --metrics-port`` on the embedded SQLite broker (scenarios: metrics_cases)."""

from __future__ import annotations

import metrics_cases
from worker_harness import Deployment


def test_counts_are_exact_across_recycled_processes(deployment: Deployment) -> None:
    metrics_cases.exact_counts_across_recycled_processes(deployment)


def test_queue_gauges_show_a_backlog(deployment: Deployment) -> None:
    metrics_cases.queue_gauges_show_a_backlog(deployment)


def test_not_ready_while_stopping(deployment: Deployment) -> None:
    metrics_cases.not_ready_while_stopping(deployment)
