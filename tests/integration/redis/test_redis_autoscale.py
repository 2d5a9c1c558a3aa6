"""Autoscaling on Redis (tests/integration/autoscale_cases.py): DB 12, a key prefix of the
test's own, deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from autoscale_cases import prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle
from redis_harness import (
    RedisDeployment,
    delete_prefix,
    ping,
    unavailable,
    unique_prefix,
    with_prefix,
)

SERVER = "redis://127.0.0.1:6379/12"
LEASE_SECONDS = 2.0


@pytest.fixture
def autoscale_deployment(tmp_path: Path, request: pytest.FixtureRequest
                         ) -> Iterator[RedisDeployment]:
    if not ping(SERVER):
        unavailable(f"Redis is not running at {SERVER}")
    prefix = unique_prefix("autoscale")
    world = RedisDeployment(tmp_path, with_prefix(SERVER, prefix), LEASE_SECONDS)
    try:
        yield world
    except BaseException:
        print(world.dump_logs())
        raise
    finally:
        world.close()
        delete_prefix(SERVER, prefix)


def test_prefork_autoscale_grows_under_a_backlog_and_shrinks_when_idle(
        autoscale_deployment: RedisDeployment) -> None:
    prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle(autoscale_deployment)
