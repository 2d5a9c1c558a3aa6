"""``worker --metrics-port`` on RabbitMQ (scenarios: metrics_cases), in a vhost of each
test's own, deleted afterwards."""

from __future__ import annotations

import metrics_cases
from rabbit_harness import RabbitDeployment


def test_counts_are_exact_across_recycled_processes(deployment: RabbitDeployment) -> None:
    metrics_cases.exact_counts_across_recycled_processes(deployment)


def test_queue_gauges_show_a_backlog(deployment: RabbitDeployment) -> None:
    metrics_cases.queue_gauges_show_a_backlog(deployment, amqp=True)


def test_not_ready_while_stopping(deployment: RabbitDeployment) -> None:
    metrics_cases.not_ready_while_stopping(deployment)


def test_not_ready_without_broker(deployment: RabbitDeployment) -> None:
    closed = metrics_cases.free_port()
    metrics_cases.not_ready_without_broker(
        deployment, f"amqp://guest:guest@127.0.0.1:{closed}/")
