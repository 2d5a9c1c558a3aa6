"""Network faults between a worker and Redis (issue 10): resets and a half-open link.

The worker reaches its own redis-server through ``FaultProxy`` (tests/integration/
fault_proxy.py); the producer and the ledger reach the server directly, so only the
worker's link misbehaves.

- **Reset** (every connection cut with a RST, as a NAT or load balancer dropping its
  flows): an idle worker's blocked read and a busy worker's fetches, acks and lease
  extensions fail on their connection; redis-py sends the command again on a fresh one
  within the call's deadline, so the worker goes on within about a second, loses
  nothing, and runs nothing twice (its leases live on the server, untouched by a reset).
- **Half-open** (bytes stop flowing, no socket is closed: a partition): no call gets an
  answer. On Redis the heartbeat is the connection timeout: every call is bounded by it
  (``connection_timeout``, plus the blocking read's own wait of at most
  ``reclaim_interval``), and a worker makes a call at least every ``reclaim_interval``
  while idle and every third of the lease while it holds tasks. So the first call made
  after the link froze fails, and the worker logs it, within ``connection_timeout +
  reclaim_interval``: under twice the heartbeat. When the link is back, the worker's
  next fetch (retried with a backoff capped at 5 s) goes through on a new connection.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from redis_harness import RedisDeployment, RedisServer
from worker_harness import wait_until

LEASE_SECONDS = 2.0
HEARTBEAT = 2.0  # connection_timeout of the worker under test
HALF_OPEN_SECONDS = 30.0  # how long the link stays half-open, as in the issue
RESUMES_WITHIN = 2.0  # after a reset, the next task starts within this
SLACK = 1.0  # a loaded machine's scheduling (2 cores shared by several test runs)
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): (\w+)/")


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    link = FaultProxy(redis_server.port)
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def world(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisDeployment]:
    deployment = RedisDeployment(tmp_path, redis_server.url, LEASE_SECONDS)
    try:
        yield deployment
    finally:
        deployment.close()


def through(proxy: FaultProxy) -> dict[str, object]:
    """Worker settings: broker and backend reached through the proxy."""
    url = f"redis://127.0.0.1:{proxy.port}/0"
    return {"broker_url": url, "result_backend": url,
            "broker_transport_options": {"lease_seconds": LEASE_SECONDS,
                                         "connection_timeout": HEARTBEAT}}


def errors_after(log: str, since: float) -> list[tuple[float, str]]:
    """(Unix time, line) of the ERROR lines the worker logged after ``since``."""
    found = []
    for line in log.splitlines():
        match = LOG_TIME.match(line)
        if match and match.group(2) == "ERROR":
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at >= since:
                found.append((at, line))
    return found


@pytest.mark.timeout(60)
def test_an_idle_worker_goes_on_after_its_connections_are_reset(
    world: RedisDeployment, proxy: FaultProxy,
) -> None:
    # Given an idle worker, blocked in its read on Redis, through the proxy
    worker = world.start_worker("-c", "2", **through(proxy)).wait_ready(2)
    assert world.tasks.record.delay("warm").get(timeout=10) == "warm"
    for n in range(3):
        # When every connection of the link is reset
        assert proxy.reset() > 0
        # Then a task sent right after runs within a second or two
        sent = time.time()
        tag = f"after-reset-{n}"
        assert world.tasks.record.delay(tag).get(timeout=10) == tag
        [run] = world.ledger.of(tag)
        assert run.t - sent < RESUMES_WITHIN + SLACK, run.t - sent
    # And nothing ran twice; the worker's processes are the same ones
    runs = Counter(world.ledger.tags())
    assert max(runs.values()) == 1, runs
    assert worker.running


@pytest.mark.timeout(90)
def test_a_busy_worker_loses_nothing_and_repeats_nothing_across_resets(
    world: RedisDeployment, proxy: FaultProxy,
) -> None:
    # Given a busy worker: 300 tasks queued, some running, some prefetched
    worker = world.start_worker("-c", "2", **through(proxy)).wait_ready(2)
    sent = [f"task-{n}" for n in range(300)]
    for tag in sent:
        world.tasks.sleepy.delay(tag, 0.01)
    world.ledger.wait_for_count(30)

    # When its connections are reset three times, half a second apart
    for _ in range(3):
        proxy.reset()
        time.sleep(0.5)

    # Then every task runs, and it goes on at once
    wait_until(lambda: set(sent) <= set(world.ledger.tags("done")), 45,
               "every task sent to have run")
    runs = Counter(world.ledger.tags())
    assert set(runs) == set(sent)  # lost = 0
    # Duplicates would be allowed for the tasks running at a reset (2 per reset), but
    # a reset loses no lease on Redis, so there are none
    duplicates = {tag: n for tag, n in runs.items() if n > 1}
    assert duplicates == {}, duplicates
    world.wait_for_queue(ready=0, scheduled=0, in_flight=0, timeout=20)
    assert worker.running


@pytest.mark.timeout(120)
def test_a_half_open_link_is_detected_within_twice_the_heartbeat_and_recovered(
    world: RedisDeployment, proxy: FaultProxy,
) -> None:
    # Given a busy worker through the proxy, with a backlog
    worker = world.start_worker("-c", "2", **through(proxy)).wait_ready(2)
    sent = [f"task-{n}" for n in range(100)]
    for tag in sent:
        world.tasks.sleepy.delay(tag, 0.05)
    world.ledger.wait_for_count(10)

    # When the link goes half-open: nothing flows, nothing is closed
    frozen_at = time.time()
    proxy.half_open()
    running_at_freeze = len(world.ledger.entries()) - len(world.ledger.entries("done"))

    # Then the worker notices within twice the heartbeat (a call without an answer)
    wait_until(lambda: errors_after(worker.log(), frozen_at), 2 * HEARTBEAT + SLACK + 5,
               "the worker to log the link's failure")
    detected_at, line = errors_after(worker.log(), frozen_at)[0]
    assert detected_at - frozen_at < 2 * HEARTBEAT + SLACK, (detected_at - frozen_at, line)
    assert "Redis is unavailable" in worker.log()

    # And after 30 s the link is back: the worker resumes on new connections, and
    # every task runs
    remaining = HALF_OPEN_SECONDS - (time.time() - frozen_at)
    time.sleep(max(0.0, remaining))  # the fault's duration itself, not a wait for an event
    done_at_restore = len(world.ledger.entries("done"))
    proxy.restore()
    restored_at = time.time()
    wait_until(lambda: len(world.ledger.entries("done")) > done_at_restore + 5, 20,
               "the worker to run tasks again")
    resumed_after = world.ledger.entries("start")[-1].t - restored_at
    wait_until(lambda: set(sent) <= set(world.ledger.tags("done")), 60,
               "every task sent to have run")
    runs = Counter(world.ledger.tags())
    assert set(runs) == set(sent)  # lost = 0
    duplicates = sum(n - 1 for n in runs.values())
    assert duplicates <= max(running_at_freeze, 2), runs.most_common(5)
    assert worker.running
    print(f"detected after {detected_at - frozen_at:.2f}s; resumed within "
          f"{resumed_after:.2f}s of the restore; {duplicates} duplicate(s)")


@pytest.mark.timeout(90)
def test_a_cut_off_workers_tasks_are_taken_over_and_its_late_results_refused(
    world: RedisDeployment, proxy: FaultProxy,
) -> None:
    # Given a busy worker through the proxy, with a backlog
    cut = world.start_worker("-c", "2", **through(proxy)).wait_ready(2)
    sent = [f"task-{n}" for n in range(200)]
    for tag in sent:
        world.tasks.sleepy.delay(tag, 0.05)
    world.ledger.wait_for_count(10)

    # When its link goes half-open for three leases, while a healthy worker runs
    proxy.half_open()
    frozen_at = time.time()
    healthy = world.start_worker("-c", "2").wait_ready(2)
    wait_until(lambda: len(world.ledger.entries()) > 30, 20, "the healthy worker to run")
    remaining = 3 * LEASE_SECONDS - (time.time() - frozen_at)
    time.sleep(max(0.0, remaining))  # the fault's duration itself
    proxy.restore()

    # Then every task runs (lost = 0); the healthy worker took over what the cut-off
    # one held once its leases ran out, so the only tasks run twice are those the
    # cut-off worker held (its prefetch budget: 2 processes x 4, plus finished tasks
    # whose acks it could not send, at most as many again)
    wait_until(lambda: set(sent) <= set(world.ledger.tags("done")), 60,
               "every task sent to have run")
    runs = Counter(world.ledger.tags())
    assert set(runs) == set(sent)
    twice = {tag for tag, n in runs.items() if n > 1}
    assert max(runs.values()) <= 2, runs.most_common(3)
    assert len(twice) <= 2 * 2 * 4, twice
    # Each of those ran first in the cut-off worker, which was cut off at the time
    cut_pids = {child.pid for child in cut.children()}
    for tag in twice:
        first, second = world.ledger.of(tag)
        assert first.pid in cut_pids, (tag, first, second)
        assert second.pid not in cut_pids, (tag, first, second)
        assert second.delivery == 2, (tag, first, second)
    # and its late results and acks were refused (fencing), and said so
    if twice:
        wait_until(lambda: "lease on" in cut.log(), 10, "the cut-off worker's fencing")
    assert cut.running
    assert healthy.running
