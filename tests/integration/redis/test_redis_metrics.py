"""``worker --metrics-port`` on Redis (scenarios: metrics_cases), in DB 11 under a key
prefix of each test's own, deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import metrics_cases
import pytest
from redis_harness import RedisDeployment, delete_prefix, ping, unavailable, unique_prefix

METRICS_DB = "redis://127.0.0.1:6379/11"
LEASE_SECONDS = 2.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RedisDeployment]:
    if not ping(METRICS_DB):
        unavailable(f"Redis is not running at {METRICS_DB}")
    prefix = unique_prefix("metrics")
    deployment = RedisDeployment(tmp_path, f"{METRICS_DB}?key_prefix={prefix}", LEASE_SECONDS)
    try:
        yield deployment
    finally:
        deployment.close()
        delete_prefix(METRICS_DB, prefix)


def test_counts_are_exact_across_recycled_processes(world: RedisDeployment) -> None:
    metrics_cases.exact_counts_across_recycled_processes(world)


def test_queue_gauges_show_a_backlog(world: RedisDeployment) -> None:
    metrics_cases.queue_gauges_show_a_backlog(world)


def test_not_ready_while_stopping(world: RedisDeployment) -> None:
    metrics_cases.not_ready_while_stopping(world)


def test_not_ready_without_broker(world: RedisDeployment) -> None:
    closed = metrics_cases.free_port()
    metrics_cases.not_ready_without_broker(world, f"redis://127.0.0.1:{closed}/11")
