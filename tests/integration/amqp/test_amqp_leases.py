"""RabbitMQ leases hold like the other brokers' (issue 10, part 3), on real worker processes.

AMQP has no lease: a delivery belongs to its connection until RabbitMQ closes it. The
lease is made to hold by a consumer heartbeat of at most half the lease (RabbitMQ
closes a silent connection, and hands its deliveries on, within 1 to 1.5 leases), by
``extend`` refusing a lease it cannot confirm with a round trip (fencing), by sending
returned messages back at the head of their queue, and by running a message that was
delivered before alone, so that its deaths count only itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

from fault_proxy import FaultProxy
from lease_cases import a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused
from rabbit_harness import LEASE_SECONDS, Rabbit, RabbitDeployment
from worker_harness import kill_pid, wait_until

from celeriac.brokers import Outgoing, create_broker
from celeriac.brokers.amqp import AMQPBroker

TOTAL_TIMEOUT = 30.0


def test_a_paused_workers_task_runs_elsewhere_within_the_lease_and_its_late_result_is_refused(
    deployment: RabbitDeployment,
) -> None:
    # (RabbitMQ's default heartbeat would have taken 20-30 s to hand the task on)
    a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused(
        deployment, LEASE_SECONDS)


def test_a_cut_off_workers_task_runs_elsewhere_within_the_lease_and_its_result_is_refused(
    deployment: RabbitDeployment, rabbit: Rabbit,
) -> None:
    # Given two workers, each reaching RabbitMQ through a proxy of its own
    proxies = [FaultProxy(5672), FaultProxy(5672)]
    try:
        workers = [deployment.start_worker("-c", "1",
                         broker_url=rabbit.url().replace(":5672/", f":{proxy.port}/"))
                   for proxy in proxies]
        for worker in workers:
            worker.wait_ready()
        result = deployment.tasks.nap_pid.delay("cut", 3.0)
        first = deployment.ledger.wait_for("cut")[0]
        index = next(i for i, worker in enumerate(workers)
                     if first.pid in {child.pid for child in worker.children()})

        # When the link of the one running it goes half-open (no byte passes, nothing
        # closes: a partition), while its process goes on running the task
        proxies[index].half_open()
        cut_at = time.time()

        # Then the other worker runs it within the lease and a few seconds
        second = deployment.ledger.wait_for("cut", count=2, timeout=15)[1]
        assert second.pid != first.pid
        assert second.t - cut_at < LEASE_SECONDS + 3.0
        assert result.get(timeout=10) == second.pid
        # And the cut-off worker, finishing its run, has its result refused and logged
        deployment.ledger.wait_for("cut", "done", count=2, timeout=15)
        workers[index].wait_for_log(f"lease on {result.id} lost", timeout=15)
        assert deployment.app.AsyncResult(result.id).get(timeout=5) == second.pid
    finally:
        for proxy in proxies:
            proxy.close()
    assert Counter(deployment.ledger.tags()) == {"cut": 2}


def test_an_old_lease_is_confirmed_by_a_round_trip_not_by_the_socket_looking_open(
    rabbit: Rabbit,
) -> None:
    """Fencing without help from the socket: a paused process reads nothing, so its
    connection looks open after RabbitMQ closed it; ``extend`` must ask the server."""

    async def scenario() -> None:
        broker = create_broker(rabbit.url(), {"lease_seconds": 4.0})
        assert isinstance(broker, AMQPBroker)
        loop = asyncio.get_running_loop()
        try:
            await broker.publish([Outgoing("m1", "fenced", b"body")])
            [delivery] = await broker.fetch(["fenced"], 1, 5.0)
            consumed_at = loop.time()  # consuming was the last round trip
            assert await broker.extend([delivery]) == [True]
            # Given a consumer connection that reads nothing more (as when paused) ...
            delivery.receipt.link.consumer._transport.pause_reading()
            # ... and that RabbitMQ has closed, handing its deliveries on
            await asyncio.to_thread(rabbit.ctl, "close_all_connections", "-p",
                                    rabbit.vhost, "fencing test")
            await asyncio.sleep(max(0.0, consumed_at + 2.2 - loop.time()))
            # When the lease, unconfirmed for over half a lease, is extended
            started = loop.time()
            stale = await broker.extend([delivery])
            # Then it is refused, within the check's timeout (max(1, min(5, lease/2)) = 2 s)
            assert stale == [False]
            assert loop.time() - started < 3.0
            assert not broker.holds(delivery)
        finally:
            await broker.close()

    asyncio.run(scenario())


def test_a_killed_workers_tasks_come_back_at_the_head_of_the_queue(
    deployment: RabbitDeployment,
) -> None:
    # Given a backlog behind a task that hangs the first time it runs
    tasks = deployment.tasks
    victim = tasks.hang_once.delay("victim")
    backlog = [tasks.record.delay(f"b{n}") for n in range(60)]
    worker = deployment.start_worker("-c", "1").wait_ready()
    first = deployment.ledger.wait_for("victim")[0]

    # When the process running it is killed (SIGKILL), with more tasks prefetched
    kill_pid(first.pid)

    # Then its replacement runs the victim again among the first few tasks it starts,
    # where the victim was in the queue, not after the backlog
    assert victim.get(timeout=TOTAL_TIMEOUT) == "victim"
    for result in backlog:
        result.get(timeout=TOTAL_TIMEOUT)
    after_kill = [entry for entry in deployment.ledger.entries() if entry.pid != first.pid]
    position = [entry.tag for entry in after_kill].index("victim")
    assert position < 4, [entry.tag for entry in after_kill][:10]
    # Counted as its second delivery; every task ran once, the victim twice
    assert after_kill[position].delivery == 2
    assert Counter(deployment.ledger.tags()) == Counter(
        ["victim", "victim", *(f"b{n}" for n in range(60))])
    assert worker.running
    deployment.wait_for_queue(ready=0, in_flight=0)


def test_a_poison_task_is_dead_lettered_alone_and_its_deaths_never_count_innocent_tasks(
    deployment: RabbitDeployment,
) -> None:
    # Given a task that kills every process running it, with innocent tasks behind it
    tasks = deployment.tasks
    poison = tasks.suicide.delay("poison")
    innocents = [tasks.record.delay(f"i{n}") for n in range(30)]

    # When a worker with the default delivery limit (5) and prefetch works through them
    deployment.start_worker("-c", "1")

    # Then every innocent task runs exactly once, and the poison is dead-lettered alone
    for result in innocents:
        result.get(timeout=TOTAL_TIMEOUT)
    letters = wait_until(deployment.probe.dead_letters, TOTAL_TIMEOUT, "the dead letter")
    assert [letter.id for letter in letters] == [poison.id]
    assert "delivery limit exceeded: delivered 6 times" in letters[0].reason
    ran = Counter(deployment.ledger.tags())
    assert ran == Counter({"poison": 5, **{f"i{n}": 1 for n in range(30)}})
    assert [run.delivery for run in deployment.ledger.of("poison")] == [1, 2, 3, 4, 5]
    # The bound: a task prefetched beside the poison's first run is counted once for its
    # death; later deaths (the poison runs alone then) count no innocent task.
    assert max(run.delivery for run in deployment.ledger.entries()
               if run.tag != "poison") <= 2
    deployment.wait_for_queue(ready=0, in_flight=0)


def test_after_connection_resets_only_the_tasks_running_then_run_twice(
    deployment: RabbitDeployment, rabbit: Rabbit,
) -> None:
    # Given a worker whose connections to RabbitMQ go through a proxy, working through
    # tasks of 50 ms with more prefetched
    proxy = FaultProxy(5672)
    try:
        url = rabbit.url().replace(":5672/", f":{proxy.port}/")
        deployment.start_worker("-c", "1", broker_url=url).wait_ready()
        tags = [f"t{n}" for n in range(60)]
        results = [deployment.tasks.sleepy.delay(tag, 0.05) for tag in tags]

        # When its connections are reset three times while it works
        resets = []
        for count in (10, 25, 40):
            deployment.ledger.wait_for_count(count, timeout=TOTAL_TIMEOUT)
            resets.append(time.time())
            assert proxy.reset() > 0
        for result in results:
            result.get(timeout=TOTAL_TIMEOUT)
    finally:
        proxy.close()

    # Then every task ran, and only those running when a connection was cut ran twice
    # (before: every delivery prefetched on the lost connection was started too)
    runs = deployment.ledger.entries()
    ran = Counter(run.tag for run in runs)
    assert set(ran) == set(tags)
    done = {(run.tag, run.pid, run.t) for run in deployment.ledger.entries("done")}
    for tag, count in ran.items():
        if count == 1:
            continue
        first = next(run for run in runs if run.tag == tag)
        ended = min((t for name, _, t in done if name == tag and t >= first.t),
                    default=math.inf)
        # Running at a reset: started before it, and its result not yet flushed
        # (a finished task's ack goes out within a few milliseconds).
        assert any(first.t <= cut <= ended + 0.2 for cut in resets), (tag, first, resets)
    # The bound, with one slot: per reset, the task running and the one that finished
    # just before, if its ack had not reached RabbitMQ yet (at least once).
    assert sum(ran.values()) - len(tags) <= 2 * len(resets)
