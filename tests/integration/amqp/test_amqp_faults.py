"""Network faults between RabbitMQ and its clients (issue 10): resets and half-open links.

The worker processes reach RabbitMQ through a ``FaultProxy`` (``fault_proxy.py``), so a
test can cut their connections with a RST or make the link go silent without touching
the server; tasks are sent, and counted in the ledger, straight on the server. What a
user relies on:

- a connection reset under an idle or a busy worker: it resumes within seconds, no task
  is lost, and only a task that was running when the link was cut may run twice
  (prefetched deliveries of the lost connection are dropped, not started: Broker.holds);
- a half-open link (no RST, no FIN, nothing) is noticed within twice the heartbeat by the
  worker and by an async producer; when the link comes back after 30 s, the same worker
  processes go on and run what was sent meanwhile, each task once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fault_proxy import FaultProxy
from rabbit_harness import PORT, Deploy, Rabbit, RabbitDeployment
from worker_harness import Entry, wait_until

from celeriac.brokers import Outgoing, create_broker
from celeriac.brokers.amqp import AMQPBroker

HEARTBEAT = 2  # seconds, in the proxied URLs: detection is bounded by twice this
RESUME = 5.0  # a worker whose connection was reset takes tasks again within this
PARTITION = 30.0  # how long the half-open link lasts


@pytest.fixture
def faults() -> Iterator[FaultProxy]:
    proxy = FaultProxy(PORT)
    try:
        yield proxy
    finally:
        proxy.close()


def proxied(rabbit: Rabbit, proxy: FaultProxy, **query: str) -> str:
    suffix = "&".join(f"{key}={value}" for key, value in query.items())
    return (f"amqp://guest:guest@127.0.0.1:{proxy.port}/{rabbit.vhost}"
            + (f"?{suffix}" if suffix else ""))


def running_at(entries: list[Entry], done: list[Entry], moment: float) -> set[str]:
    """Tags of the executions under way at ``moment`` (started, not yet finished).

    An execution that finished just before (within 50 ms: its ack may still have been
    on its way) counts as under way too: RabbitMQ may rightly hand that one out again.
    """
    finished = {(e.tag, e.pid): e.t for e in done}
    return {e.tag for e in entries if e.t <= moment
            and finished.get((e.tag, e.pid), moment + 1) > moment - 0.05}


def test_a_reset_under_an_idle_worker_resumes_within_seconds_and_loses_nothing(
        deploy: Deploy, faults: FaultProxy) -> None:
    # Given an idle worker (two processes) whose connections go through the proxy
    deployment: RabbitDeployment = deploy()
    worker = deployment.start_worker(
        "-c", "2", broker_url=proxied(deployment.rabbit, faults)).wait_ready(2)
    children = {child.pid for child in worker.children()}
    tasks = deployment.tasks
    assert [tasks.record.delay(f"warm-{n}").get(timeout=20) for n in range(4)] == [
        f"warm-{n}" for n in range(4)]

    # When every connection is cut with a RST
    assert faults.reset() > 0
    cut_at = time.time()

    # Then 30 tasks sent right after all run, each once, starting within seconds,
    # on the same worker processes
    tags = [f"after-{n}" for n in range(30)]
    for tag in tags:
        tasks.record.delay(tag)
    entries = deployment.ledger.wait_for_count(34, timeout=RESUME + 15)
    after = [e for e in entries if str(e.tag).startswith("after-")]
    assert Counter(e.tag for e in after) == Counter(tags)
    assert min(e.t for e in after) - cut_at < RESUME
    assert {child.pid for child in worker.children()} == children
    # And the loss was logged (the log reaches its file through the supervisor: await it)
    worker.wait_for_log("consumer connection to RabbitMQ", timeout=10)


@dataclass
class BusyRun:
    """What happened when a busy worker's connections were cut twice."""

    expected: set[str]
    cuts: list[float]
    starts: list[Entry]
    done: list[Entry]


def cut_a_busy_worker(deployment: RabbitDeployment, proxy: FaultProxy) -> BusyRun:
    """Two slow tasks running and 80 quick ones queued (some prefetched) on a worker of
    two processes behind the proxy; every connection cut twice with a RST, a second
    apart; returns once every task ran (or fails: a task was lost)."""
    deployment.start_worker("-c", "2", broker_url=proxied(deployment.rabbit, proxy)
                            ).wait_ready(2)
    tasks = deployment.tasks
    slow = [tasks.sleepy.delay(f"slow-{n}", 1.5) for n in range(2)]
    quick = [f"quick-{n}" for n in range(80)]
    for tag in quick:  # 50 ms each: the ledger has their start and their end
        tasks.sleepy.delay(tag, 0.05)
    deployment.ledger.wait_for_count(4, timeout=20)  # under way
    cuts = []
    for _ in range(2):
        proxy.reset()
        cuts.append(time.time())
        time.sleep(1.0)
    for result in slow:
        assert str(result.get(timeout=30)).startswith("slow-")
    expected = {*quick, "slow-0", "slow-1"}
    wait_until(lambda: set(deployment.ledger.tags()) >= expected, 30, "every task to run")
    return BusyRun(expected, cuts, deployment.ledger.entries("start"),
                   deployment.ledger.entries("done"))


def test_a_reset_under_a_busy_worker_loses_nothing(
        deploy: Deploy, faults: FaultProxy) -> None:
    # Given a busy worker whose connections are cut twice (see cut_a_busy_worker)
    run = cut_a_busy_worker(deploy(), faults)

    # Then every task ran (lost = 0), and nothing else did
    assert {e.tag for e in run.starts} == run.expected
    # And the worker resumed within seconds of the last cut
    assert min(e.t for e in run.starts if e.t > run.cuts[-1]) - run.cuts[-1] < RESUME


def test_a_reset_under_a_busy_worker_repeats_only_the_tasks_that_were_running(
        deploy: Deploy, faults: FaultProxy) -> None:
    # Given a busy worker whose connections are cut twice (see cut_a_busy_worker)
    run = cut_a_busy_worker(deploy(), faults)

    # Then a task ran twice only if it was under way when a connection was cut
    counts = Counter(e.tag for e in run.starts)
    repeated = {tag for tag, n in counts.items() if n > 1}
    under_way = set().union(*(running_at(run.starts, run.done, cut) for cut in run.cuts))
    story = [(e.event, e.tag, e.pid, round(e.t - run.cuts[0], 3), e.delivery)
             for e in sorted([*run.starts, *run.done], key=lambda e: e.t)
             if e.tag in repeated - under_way]
    assert repeated <= under_way, f"ran twice without running at a cut: {story}"


def test_a_half_open_link_is_noticed_within_two_heartbeats_and_work_goes_on(
        deploy: Deploy, faults: FaultProxy) -> None:
    # Given a worker and an async producer, both with 2 s heartbeats through the proxy
    deployment: RabbitDeployment = deploy()
    url = proxied(deployment.rabbit, faults, heartbeat=str(HEARTBEAT))
    worker = deployment.start_worker("-c", "1", broker_url=url).wait_ready()
    child = {c.pid for c in worker.children()}
    tasks = deployment.tasks
    assert tasks.record.delay("before").get(timeout=20) == "before"
    producer = create_broker(url, {"publish_timeout": 3, "connection_timeout": 1})
    assert isinstance(producer, AMQPBroker)
    runner = asyncio.Runner()
    try:
        runner.run(producer.publish([Outgoing("p-before", "elsewhere", b"x", 0)]))

        # When the link goes silent: no RST, no FIN, nothing passes either way
        faults.half_open()
        silent_at = time.monotonic()

        # Then the producer notices within two heartbeats (its loop running meanwhile)
        noticed = runner.run(_connection_lost(producer, 4 * HEARTBEAT)) - silent_at
        assert noticed <= 2 * HEARTBEAT + 0.5, f"producer noticed after {noticed:.1f}s"
        # And so does the worker (its log says so)
        worker.wait_for_log("consumer connection to RabbitMQ", timeout=4 * HEARTBEAT)
        worker_noticed = time.monotonic() - silent_at
        assert worker_noticed <= 2 * HEARTBEAT + 1.0, f"worker: {worker_noticed:.1f}s"

        # When tasks are sent (straight to RabbitMQ) while the link stays silent for 30 s
        tags = [f"during-{n}" for n in range(10)]
        for tag in tags:
            tasks.record.delay(tag)
        time.sleep(max(0.0, PARTITION - (time.monotonic() - silent_at)))
        assert "during-0" not in deployment.ledger.tags()  # the worker really was cut off
        faults.restore()
        back_at = time.time()

        # Then the same worker process runs each of them once, within seconds
        entries = deployment.ledger.wait_for_count(11, timeout=RESUME + 15)
        assert Counter(e.tag for e in entries) == Counter(["before", *tags])
        assert max(e.t for e in entries) - back_at < RESUME + 5
        assert {c.pid for c in worker.children()} == child
        # And the producer publishes again
        runner.run(producer.publish([Outgoing("p-after", "elsewhere", b"x", 0)]))
    finally:
        faults.restore()
        runner.run(producer.close())
        runner.close()


async def _connection_lost(broker: AMQPBroker, timeout: float) -> float:
    """When (monotonic) this loop's connection of ``broker`` was found dead."""
    link = broker._link()  # the test watches the one connection it holds
    connection = link.connection
    assert connection is not None
    # (asyncio.wait: the future ends with the reason it was lost, or cancelled)
    done, _ = await asyncio.wait({connection.closing}, timeout=timeout)
    assert done, f"the producer's connection was still open after {timeout:g}s"
    return time.monotonic()
