"""Redis Sentinel: a worker and its producers follow a failover to the promoted replica.

Each test starts its own primary, replica and three sentinels (``sentinel_harness``) and
a real worker (``celeriac -A ledger_app worker -c 2``) on ``sentinel://`` URLs for the
broker and the result backend. Producers send all along, from a thread through the
blocking publish (``delay``) and from an event loop through the async one (``adelay``);
a send counts as acknowledged when it returned. Then the primary is killed with
SIGKILL, the sentinels promote the replica, and the tests show what a user relies on:

- without replication acknowledgement, the worker keeps running and consumes from the
  new master, every task sent after the failover runs and its result can be read; the
  sends that were acknowledged before the kill and lost (the replication lag) are
  counted and printed, not asserted (bench/sentinel_failover.py measures them);
- with ``wait_for_replicas=1``, no acknowledged send is lost: the replica had each one
  before its send returned.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sentinel_harness import MASTER_NAME, SentinelCluster
from worker_harness import Deployment, register, wait_until

from celeriac import App
from celeriac.errors import BrokerError, ConfigurationError

LEASE_SECONDS = 2.0


class SentinelDeployment(Deployment):
    """The ledger deployment on ``sentinel://`` URLs (broker and result backend)."""

    def __init__(self, root: Path, url: str, **producer_options: Any) -> None:
        # The workers' options; a producer's may add some (wait_for_replicas).
        self.broker_options = {"lease_seconds": LEASE_SECONDS, "master_name": MASTER_NAME}
        self.backend_options = {"master_name": MASTER_NAME}
        super().__init__(root, url, url, LEASE_SECONDS, master_name=MASTER_NAME)
        self.app.close()  # (made with the workers' options, never connected)
        self.app = App("ledger-tests", broker=url, backend=url,
                       broker_transport_options={**self.broker_options, **producer_options},
                       result_backend_transport_options=self.backend_options)
        self.tasks = register(self.app)

    def env(self, **settings: object) -> dict[str, str]:
        settings.setdefault("result_backend_transport_options", self.backend_options)
        return super().env(**settings)


class Producers:
    """Two producers sending ``record`` tasks until stopped: one thread through the
    blocking publish, one event loop through the async one. Each remembers which sends
    returned (acknowledged), when, and which raised."""

    def __init__(self, world: SentinelDeployment) -> None:
        self.world = world
        self.acknowledged: dict[str, float] = {}  # tag -> monotonic time the send returned
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._blocking, daemon=True),
                         threading.Thread(target=self._async, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _note(self, tag: str, ok: bool) -> None:
        with self._lock:
            if ok:
                self.acknowledged[tag] = time.monotonic()
            else:
                self.failed.append(tag)

    def _blocking(self) -> None:
        n = 0
        while not self._stop.is_set():
            tag = f"sync-{n}"
            n += 1
            try:
                self.world.tasks.record.delay(tag)
            except BrokerError:
                self._note(tag, False)
                time.sleep(0.05)
            else:
                self._note(tag, True)
            time.sleep(0.005)

    def _async(self) -> None:
        async def run() -> None:
            n = 0
            while not self._stop.is_set():
                tag = f"async-{n}"
                n += 1
                try:
                    await self.world.tasks.record.adelay(tag)
                except BrokerError:
                    self._note(tag, False)
                    await asyncio.sleep(0.05)
                else:
                    self._note(tag, True)
                await asyncio.sleep(0.005)

        asyncio.run(run())

    def acknowledged_between(self, start: float, end: float = float("inf")) -> set[str]:
        with self._lock:
            return {tag for tag, at in self.acknowledged.items() if start <= at < end}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    started = SentinelCluster(tmp_path / "servers")
    try:
        yield started
    except BaseException:
        print(started.logs())
        raise
    finally:
        started.stop()


def _world(cluster: SentinelCluster, tmp_path: Path, **options: Any
           ) -> Iterator[SentinelDeployment]:
    deployment = SentinelDeployment(tmp_path, cluster.url(), **options)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture
def world(cluster: SentinelCluster, tmp_path: Path) -> Iterator[SentinelDeployment]:
    yield from _world(cluster, tmp_path)


@pytest.fixture
def waiting_world(cluster: SentinelCluster, tmp_path: Path) -> Iterator[SentinelDeployment]:
    yield from _world(cluster, tmp_path, wait_for_replicas=1)


def test_a_sentinel_url_without_master_name_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        App("x", broker="sentinel://127.0.0.1:26379").broker  # noqa: B018
    with pytest.raises(ConfigurationError, match="master_name"):
        App("x", backend="sentinel://127.0.0.1:26379/1").backend  # noqa: B018


@pytest.mark.timeout(90)
def test_the_worker_and_producers_follow_the_promoted_replica(
    cluster: SentinelCluster, world: SentinelDeployment,
) -> None:
    # Given a worker under load from two producers, on sentinel:// URLs
    worker = world.start_worker("-c", "2").wait_ready(2)
    pids = {child.pid for child in worker.children()}
    producers = Producers(world)
    try:
        world.ledger.wait_for_count(100, timeout=30)

        # When the primary is killed and the sentinels promote the replica
        killed = cluster.kill_primary()
        promoted = cluster.wait_for_failover()
        # and the producers keep sending after the failover
        wait_until(lambda: len(producers.acknowledged_between(promoted)) >= 200, 30,
                   "200 sends acknowledged after the failover")
    finally:
        producers.stop()

    # Then every task sent after the failover ran (on the new master), once at least
    after = producers.acknowledged_between(promoted)
    wait_until(lambda: after <= set(world.ledger.tags()), 30,
               "every task sent after the failover to have run")
    # and the same worker processes ran them: nothing had to restart them
    assert worker.running
    assert {child.pid for child in worker.children()} == pids
    # and results stored after the failover can be read back
    assert world.tasks.record.delay("last").get(timeout=15) == "last"

    # What the failover cost: sends acknowledged before the kill that never ran.
    time.sleep(LEASE_SECONDS + 1)  # leases held on the old master come back
    before = producers.acknowledged_between(0, killed)
    lost = before - set(world.ledger.tags())
    print(f"sentinel failover without WAIT: {len(before)} sends acknowledged before the "
          f"kill, {len(lost)} lost; {len(producers.failed)} sends raised during the "
          f"failover; promoted {promoted - killed:.1f} s after the kill")


@pytest.mark.timeout(90)
def test_with_wait_for_replicas_no_acknowledged_send_is_lost(
    cluster: SentinelCluster, waiting_world: SentinelDeployment,
) -> None:
    world = waiting_world
    # Given a worker, and producers whose sends return only once the replica has them
    worker = world.start_worker("-c", "2").wait_ready(2)
    producers = Producers(world)
    try:
        world.ledger.wait_for_count(100, timeout=30)
        # When the primary is killed and the replica promoted
        killed = cluster.kill_primary()
        cluster.wait_for_failover()
    finally:
        producers.stop()

    # Then every send acknowledged (before the kill: none returned after it) ran
    acknowledged = producers.acknowledged_between(0)
    assert not producers.acknowledged_between(killed)
    assert len(acknowledged) >= 100
    wait_until(lambda: acknowledged <= set(world.ledger.tags()), 30,
               "every acknowledged send to have run")
    assert worker.running
    # The new master has no replica left: a send now cannot be acknowledged, and says so
    with pytest.raises(BrokerError, match="wait_for_replicas"):
        world.tasks.record.delay("no replica")


@pytest.mark.timeout(90)
def test_a_demoted_master_is_left_for_the_promoted_one(
    cluster: SentinelCluster, world: SentinelDeployment,
) -> None:
    # Given a worker under load from two producers, on sentinel:// URLs
    worker = world.start_worker("-c", "2").wait_ready(2)
    pids = {child.pid for child in worker.children()}
    producers = Producers(world)
    try:
        world.ledger.wait_for_count(100, timeout=30)

        # When the sentinels fail over with the primary alive: it becomes a replica and
        # answers the connections still open to it with READONLY (or UNBLOCKED)
        cluster.failover()
        promoted = cluster.wait_for_failover()
        wait_until(lambda: SentinelCluster._role(cluster.primary) == "slave", 20,
                   "the old primary to be demoted to a replica")
        demoted = time.monotonic()
        wait_until(lambda: len(producers.acknowledged_between(demoted)) >= 200, 30,
                   "200 sends acknowledged after the demotion")
    finally:
        producers.stop()

    # Then the worker and the producers went on with the promoted replica: every task
    # sent after the demotion ran, in the same worker processes
    after = producers.acknowledged_between(demoted)
    wait_until(lambda: after <= set(world.ledger.tags()), 30,
               "every task sent after the demotion to have run")
    assert worker.running
    assert {child.pid for child in worker.children()} == pids
    assert world.tasks.record.delay("last").get(timeout=15) == "last"
    time.sleep(LEASE_SECONDS + 1)
    before = producers.acknowledged_between(0, promoted)
    lost = before - set(world.ledger.tags())
    print(f"coordinated sentinel failover: {len(before)} sends acknowledged before the "
          f"promotion, {len(lost)} lost; {len(producers.failed)} sends raised")


@pytest.mark.timeout(90)
def test_a_failover_longer_than_the_connection_timeout_is_logged_and_ridden_out(
    cluster: SentinelCluster, world: SentinelDeployment,
) -> None:
    # Given a worker whose broker calls give up after 0.5 s, shorter than the failover
    worker = world.start_worker("-c", "1", broker_connection_timeout=0.5).wait_ready(1)
    pids = {child.pid for child in worker.children()}
    assert world.tasks.record.delay("before").get(timeout=15) == "before"

    # When the primary is killed and the replica promoted
    cluster.kill_primary()
    cluster.wait_for_failover()

    # Then the worker said so, one line per failed fetch, naming the cause
    worker.wait_for_log("fetch from the broker failed", timeout=20)
    assert "Redis is unavailable" in worker.log()
    # and consumes again by itself, in the same process, from the promoted replica
    assert world.tasks.record.delay("after").get(timeout=20) == "after"
    assert worker.running
    assert {child.pid for child in worker.children()} == pids
