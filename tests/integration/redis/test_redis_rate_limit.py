"""Global rate limits with real worker processes on Redis (database 10).

The token buckets live on the Redis server (a Lua script on the server's clock), so the
limit holds for every worker process together. Each test uses a key prefix of its own
on database 10, deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rate_check import BUSIEST_AT_20, run_rate_check
from redis_harness import (
    RedisDeployment,
    delete_prefix,
    ping,
    unavailable,
    unique_prefix,
    with_prefix,
)

DB10 = "redis://127.0.0.1:6379/10"
LEASE_SECONDS = 2.0


@pytest.fixture
def db10_deployment(tmp_path: Path) -> Iterator[RedisDeployment]:
    if not ping(DB10):
        unavailable(f"Redis is not running at {DB10}")
    prefix = unique_prefix("ratelimit")
    world = RedisDeployment(tmp_path, with_prefix(DB10, prefix), LEASE_SECONDS)
    try:
        yield world
    finally:
        world.close()
        delete_prefix(DB10, prefix)


def test_a_global_rate_limit_holds_across_two_worker_processes_on_redis(
    db10_deployment: RedisDeployment,
) -> None:
    # Given a backlog of tasks limited to 20/s, run by two worker processes on Redis
    report = run_rate_check(db10_deployment, rate=20, seconds=10.0, workers=2)

    # Then the two together started 200 of them in 10 s, within 10%
    print(f"Redis, 2 processes: {report}")
    assert report.error <= 0.10, report
    assert report.busiest_second <= BUSIEST_AT_20, report
    assert len(report.pids) == 2, report
