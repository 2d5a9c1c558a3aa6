"""Fixtures for the Redis tests: the shared server's test database, or a server of one's own.

Every fixture cleans up after itself: keys under the test's prefix are deleted, servers
a test started are killed, worker processes are killed. When a test fails, the logs of
its worker processes and of its own redis-server are added to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from redis_harness import (
    SHARED,
    RedisDeployment,
    RedisServer,
    delete_prefix,
    ping,
    unavailable,
    unique_prefix,
    with_prefix,
)

LEASE_SECONDS = 2.0  # as the sqlite deployments of the integration harness

_REPORTS = pytest.StashKey[list[RedisDeployment | RedisServer]]()


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """A URL on the shared server's test database, with a key prefix of this test's own."""
    if not ping(SHARED):
        unavailable(f"Redis is not running at {SHARED}")
    prefix = unique_prefix("redis")
    try:
        yield with_prefix(SHARED, prefix)
    finally:
        delete_prefix(SHARED, prefix)


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server of this test's own, with persistence, killed after the test."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    request.node.stash.setdefault(_REPORTS, []).append(server)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def deployment(shared_redis: str, tmp_path: Path,
               request: pytest.FixtureRequest) -> Iterator[RedisDeployment]:
    """The integration harness's deployment, on Redis: ledger, workers, probe."""
    world = RedisDeployment(tmp_path, shared_redis, LEASE_SECONDS)
    request.node.stash.setdefault(_REPORTS, []).append(world)
    try:
        yield world
    finally:
        world.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for thing in item.stash.get(_REPORTS, []):
            if isinstance(thing, RedisServer):
                report.sections.append((f"redis-server :{thing.port}", thing.log()[-5000:]))
            elif thing.workers:
                report.sections.append(("worker logs", thing.dump_logs()))
    return report
