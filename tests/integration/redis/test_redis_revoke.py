"""Revoke with real worker processes on Redis: the revocations live in the server.

These run on database 11 of the local server (each test with a key prefix of its own,
deleted afterwards), through this directory's ``deployment`` fixture.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis_harness import RedisDeployment, delete_prefix, ping, unavailable, unique_prefix
from worker_harness import wait_until

from celeriac import TaskRevokedError, states

REVOKE_DB = "redis://127.0.0.1:6379/11"


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """Database 11, with a key prefix of this test's own (overrides conftest's)."""
    if not ping(REVOKE_DB):
        unavailable(f"Redis is not running at {REVOKE_DB}")
    prefix = unique_prefix("revoke")
    try:
        yield f"{REVOKE_DB}?key_prefix={prefix}"
    finally:
        delete_prefix(REVOKE_DB, prefix)


def test_a_revoke_sent_before_a_worker_starts_is_honoured(
    deployment: RedisDeployment,
) -> None:
    # Given tasks queued while no worker runs, some revoked, one of them with a countdown
    sent = [deployment.tasks.record.delay(f"task-{n}") for n in range(4)]
    deployment.app.control.revoke([sent[0].id, sent[2].id])
    later = deployment.tasks.record.apply_async(("later",), countdown=1.0)
    later.revoke()

    # When a worker starts
    deployment.start_worker("-c", "2").wait_ready(2)

    # Then the revoked ones are REVOKED without running, and the others run
    assert [sent[1].get(timeout=20), sent[3].get(timeout=20)] == ["task-1", "task-3"]
    for result in (sent[0], sent[2], later):
        with pytest.raises(TaskRevokedError, match="revoked before it ran"):
            result.get(timeout=20)
        assert result.state == states.REVOKED
    deployment.wait_for_queue()
    assert sorted(deployment.ledger.tags()) == ["task-1", "task-3"]
    # And the revocations live on the server, for as long as results do
    client = redis.Redis.from_url(deployment.url.split("?")[0], socket_timeout=5)
    try:
        prefix = deployment.url.split("key_prefix=")[1]
        assert client.xlen(f"{prefix}revoked") == 3
        assert 0 < client.ttl(f"{prefix}revoked") <= deployment.app.conf.result_expires
    finally:
        client.close()


def test_terminate_stops_a_running_task(deployment: RedisDeployment) -> None:
    # Given a task running (hanging) in a prefork worker
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    result = deployment.tasks.hang_once.delay("victim")
    [start] = deployment.ledger.wait_for("victim")

    # When it is revoked with terminate=True
    revoked_at = time.monotonic()
    result.revoke(terminate=True)

    # Then it ends REVOKED within about a poll, its process is replaced, and it does not
    # run again
    with pytest.raises(TaskRevokedError, match="terminated"):
        result.get(timeout=20)
    assert time.monotonic() - revoked_at < 5
    wait_until(lambda: len(live := {c.pid for c in worker.children()}) == 2
               and start.pid not in live, 20, "a replacement process")
    assert deployment.tasks.add.delay(1, 2).get(timeout=20) == 3
    deployment.wait_for_queue()
    assert len(deployment.ledger.of("victim")) == 1
