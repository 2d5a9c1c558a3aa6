"""A real worker on RabbitMQ: dead letters and their reasons, priorities, countdowns,
crashed and stopped workers. Executions are counted in the ledger.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

from rabbit_harness import QUEUE, RabbitDeployment
from worker_harness import kill_pid, wait_until

from celeriac.brokers import Outgoing, QueueStats


def test_each_dead_letter_keeps_its_reason(deployment: RabbitDeployment) -> None:
    # Given a worker that allows two deliveries per message
    deployment.start_worker("-c", "1", task_delivery_limit=2).wait_ready()

    # When it gets an unknown task, bytes that are no message, and a task that rejects
    # its message
    deployment.app.send_task("no.such.task", args=(1,))
    deployment.probe.publish([Outgoing(uuid.uuid4().hex, QUEUE, b"\x00not a message", 0)])
    deployment.app.send_task("ledger.refuse", args=("refused",))
    # (and, once those are settled, a task that kills the process running it every time:
    # a process killed before its acks went out would see those messages again)
    wait_until(lambda: len(deployment.probe.dead_letters()) >= 3, 20, "three dead letters")
    deployment.tasks.suicide.delay("killer")

    # Then each is dead-lettered once, with its reason, and the worker keeps going
    letters = wait_until(lambda: len(found := deployment.probe.dead_letters()) >= 4 and found,
                         45, "four dead letters")
    reasons = [letter.reason for letter in letters]  # newest first
    assert [reason.split(":")[0] for reason in reasons] == [
        "delivery limit exceeded", "rejected by the task", "undecodable message",
        "unknown task"]
    assert all(letter.queue == QUEUE for letter in letters)
    # The killer ran exactly as often as the limit allows, each run counted
    assert [run.delivery for run in deployment.ledger.of("killer")] == [1, 2]
    assert deployment.tasks.record.delay("still alive").get(timeout=20) == "still alive"
    assert deployment.probe.stats() == QueueStats(QUEUE, 0, 0, 0)


def test_higher_priorities_run_first(deployment: RabbitDeployment) -> None:
    # Given 40 tasks of mixed priorities waiting before any worker runs
    priorities = [(n * 7) % 10 for n in range(40)]
    for n, priority in enumerate(priorities):
        deployment.tasks.record.apply_async((f"p{priority}-{n}",), priority=priority)

    # When a worker with one slot and no prefetch beyond it drains them
    deployment.start_worker("-c", "1", "--prefetch-multiplier", "1").wait_ready()
    entries = deployment.ledger.wait_for_count(40)

    # Then they ran highest priority first, oldest first within a priority
    expected = sorted(range(40), key=lambda n: -priorities[n])
    assert [e.tag for e in entries] == [f"p{priorities[n]}-{n}" for n in expected]


def test_a_countdown_waits_in_rabbitmq_not_in_the_worker(deployment: RabbitDeployment) -> None:
    # Given a running worker
    deployment.start_worker("-c", "1").wait_ready()

    # When a task is sent with a 2 s countdown
    result = deployment.tasks.record.apply_async(("later",), countdown=2)
    sent = time.time()

    # Then, until it runs, no worker holds it and it is not ready: it waits in RabbitMQ
    samples = []
    while not deployment.ledger.of("later"):
        stats = deployment.probe.stats()
        if not deployment.ledger.of("later") and time.time() < sent + 1.9:
            samples.append(stats)
        assert time.time() < sent + 10, "the delayed task never ran"
        time.sleep(0.1)
    assert samples
    assert all((s.ready, s.in_flight) == (0, 0) for s in samples)
    # (counted as scheduled; a count read while RabbitMQ moves it from one delay queue
    # to the next can miss it)
    assert sum(s.scheduled == 1 for s in samples) > len(samples) / 2
    # And it ran at its eta, not before, and not much after
    [run] = deployment.ledger.of("later")
    assert run.eta is not None
    assert run.eta <= run.t < run.eta + 1.0
    assert result.get(timeout=5) == "later"


def test_a_task_whose_process_is_killed_runs_again_counted(
    deployment: RabbitDeployment,
) -> None:
    # Given a prefork worker with two processes, running a task that hangs the first time
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    result = deployment.tasks.hang_once.delay("victim")
    first = deployment.ledger.wait_for("victim")[0]

    # When the process running it is killed with SIGKILL, mid-task
    kill_pid(first.pid)

    # Then the task runs again in another process as its second delivery
    assert result.get(timeout=30) == "victim"
    assert [run.delivery for run in deployment.ledger.of("victim")] == [1, 2]
    assert worker.running


def test_a_warm_shutdown_hands_prefetched_tasks_back_uncounted(
    deployment: RabbitDeployment,
) -> None:
    # Given a worker running a slow task, with more tasks queued and prefetched behind it
    worker = deployment.start_worker("-c", "1", "--prefetch-multiplier", "4").wait_ready()
    tasks = deployment.tasks
    slow = tasks.sleepy.delay("slow", 1.5)
    deployment.ledger.wait_for("slow")
    queued = {f"queued-{n}": tasks.sleepy.delay(f"queued-{n}", 0.05) for n in range(8)}

    # When the worker gets SIGTERM while the task runs
    worker.signal(signal.SIGTERM)

    # Then it finishes the task and exits; nothing else is held by anyone
    assert worker.wait(30) == 0
    assert slow.get(timeout=5) == "slow"
    stats = deployment.probe.stats()
    assert stats.in_flight == 0
    assert stats.ready == len(queued) - len(set(deployment.ledger.tags()) - {"slow"})

    # And a new worker runs the rest, each exactly once and as a first delivery
    deployment.start_worker("-c", "2")
    assert {tag: r.get(timeout=30) for tag, r in queued.items()} == {t: t for t in queued}
    assert Counter(deployment.ledger.tags()) == Counter(["slow", *queued])
    assert {run.delivery for run in deployment.ledger.entries()} == {1}
