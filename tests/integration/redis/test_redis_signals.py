"""Celery's signals on real worker processes on Redis (scenarios: signal_cases), in DB 6
under a key prefix of each test's own, deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import signal_cases
from redis_harness import RedisDeployment, delete_prefix, ping, unavailable, unique_prefix

SIGNALS_DB = "redis://127.0.0.1:6379/6"
LEASE_SECONDS = 2.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RedisDeployment]:
    if not ping(SIGNALS_DB):
        unavailable(f"Redis is not running at {SIGNALS_DB}")
    prefix = unique_prefix("signals")
    deployment = RedisDeployment(tmp_path, f"{SIGNALS_DB}?key_prefix={prefix}", LEASE_SECONDS)
    try:
        yield deployment
    finally:
        deployment.close()
        delete_prefix(SIGNALS_DB, prefix)


def test_every_signal_fires_with_celerys_arguments(world: RedisDeployment) -> None:
    signal_cases.every_signal_fires_with_celerys_arguments(world)
