"""redis-server restarting under a running worker: the worker reconnects and nothing is lost.

Each test starts a redis-server of its own, with an append-only file, and a real worker
(``celeriac -A ledger_app worker -c 2``) on it. The server is shut down (SHUTDOWN, which
flushes the append-only file) and started again on the same directory while the worker
runs. The ledger counts every execution.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_harness import RedisDeployment, RedisServer
from worker_harness import register, wait_until

from celeriac.errors import BrokerUnavailable

LEASE_SECONDS = 2.0
SLACK = 1.0  # a loaded machine's scheduling delays, on top of a timeout


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisDeployment]:
    deployment = RedisDeployment(tmp_path, redis_server.url, LEASE_SECONDS)
    yield deployment
    deployment.close()


@pytest.mark.timeout(60)
def test_an_idle_worker_consumes_again_after_redis_restarts(
    redis_server: RedisServer, world: RedisDeployment,
) -> None:
    # Given an idle worker, waiting on Redis for work, that has run one task
    worker = world.start_worker("-c", "2").wait_ready(2)
    assert world.tasks.record.delay("first").get(timeout=10) == "first"
    pids = {entry.pid for entry in world.ledger.entries()}

    # When redis-server is shut down and started again under it
    redis_server.restart()

    # Then a task sent afterwards runs, in the same worker processes (they reconnected;
    # nothing had to restart them)
    assert world.tasks.record.delay("after").get(timeout=20) == "after"
    children = {child.pid for child in worker.children()}
    assert {entry.pid for entry in world.ledger.of("after")} <= children
    assert pids <= children
    assert worker.running


@pytest.mark.timeout(60)
def test_nothing_sent_before_or_after_a_restart_is_lost(
    redis_server: RedisServer, world: RedisDeployment,
) -> None:
    # Given a busy worker: 300 tasks queued, some running, some prefetched, some waiting
    worker = world.start_worker("-c", "2").wait_ready(2)
    before = [f"before-{n}" for n in range(300)]
    for tag in before:
        world.tasks.sleepy.delay(tag, 0.01)
    world.ledger.wait_for_count(30)

    # When redis-server restarts in the middle of it
    downtime = redis_server.restart()
    started_at_restart = len(world.ledger.entries())
    # and 300 more tasks are sent once it is back
    after = [f"after-{n}" for n in range(300)]
    for tag in after:
        world.tasks.sleepy.delay(tag, 0.01)

    # Then every task sent ran, before and after the restart: none was lost
    sent = set(before + after)
    wait_until(lambda: sent <= set(world.ledger.tags("done")), 45,
               "every task sent to have run")
    runs = Counter(world.ledger.tags())
    assert set(runs) == sent
    # Duplicates are possible only for a task leased across the outage, never more than
    # the worker held at once (2 processes x prefetch budget 4), and here the outage is
    # shorter than the lease, so leases survive it: each ran once
    duplicates = {tag: n for tag, n in runs.items() if n > 1}
    assert downtime < LEASE_SECONDS, f"the restart took {downtime:.1f}s"
    assert duplicates == {}, duplicates
    assert started_at_restart < len(sent)  # the restart really happened mid-way
    world.wait_for_queue(ready=0, scheduled=0, in_flight=0)
    assert worker.running
    # With the append-only file nothing was lost, and no data loss is reported
    assert "Redis data loss" not in worker.log()


@pytest.mark.timeout(60)
def test_a_producer_fails_fast_while_redis_is_down_and_recovers_after(
    redis_server: RedisServer, world: RedisDeployment,
) -> None:
    # Given a producer that has sent a task, and a worker
    world.start_worker("-c", "1").wait_ready()
    assert world.tasks.record.delay("before").get(timeout=10) == "before"
    app = world.make_app(broker_transport_options={"connection_timeout": 1.0})
    tasks = register(app)
    tasks.record.delay("warm")  # its connections are open and pooled

    # When the server goes away
    redis_server.shutdown()

    # Then sending fails with BrokerUnavailable (not a hang), within the timeout
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        tasks.record.delay("lost")
    assert time.monotonic() - started < 1.0 + SLACK

    # And once the server is back, the same producer sends again, and the task runs
    redis_server.start()
    assert tasks.record.delay("after").get(timeout=20) == "after"
    assert "lost" not in world.ledger.tags()


@pytest.mark.timeout(60)
def test_a_worker_rides_out_an_outage_it_notices(
    redis_server: RedisServer, world: RedisDeployment,
) -> None:
    # Given a busy worker with 200 tasks queued
    worker = world.start_worker("-c", "2").wait_ready(2)
    sent = [f"task-{n}" for n in range(200)]
    for tag in sent:
        world.tasks.sleepy.delay(tag, 0.01)
    world.ledger.wait_for_count(20)

    # When redis-server goes away for long enough that the worker's calls fail
    redis_server.shutdown()
    wait_until(lambda: "ERROR/worker" in worker.log(), 20, "the worker to notice the outage")
    # and then comes back with its data
    redis_server.start()

    # Then the worker resumes by itself and every task runs
    wait_until(lambda: set(sent) <= set(world.ledger.tags("done")), 45,
               "every task sent to have run")
    # Only tasks that were leased during the outage may run twice: at most what the
    # worker held at once (2 processes x prefetch budget 4)
    runs = Counter(world.ledger.tags())
    assert set(runs) == set(sent)
    assert sum(n - 1 for n in runs.values()) <= 8, runs.most_common(10)
    world.wait_for_queue(ready=0, scheduled=0, in_flight=0, timeout=20)
    assert worker.running
