"""Warm shutdown, and recycling worker processes: running tasks finish, nothing is lost."""

from __future__ import annotations

import signal
from collections import Counter

from shutdown_cases import (
    group_sigterm_is_a_warm_shutdown,
    sigquit_after_a_group_sigterm_is_a_cold_stop,
)
from worker_harness import Deployment, wait_until


def test_sigterm_lets_the_running_task_finish_and_loses_nothing(
    deployment: Deployment,
) -> None:
    # Given a worker running a slow task, with more tasks queued behind it
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    tasks = deployment.tasks
    slow = tasks.sleepy.delay("slow", 2.0)
    deployment.ledger.wait_for("slow")
    queued = {f"queued-{n}": tasks.sleepy.delay(f"queued-{n}", 0.2) for n in range(12)}

    # When the worker gets SIGTERM while the task runs
    worker.signal(signal.SIGTERM)

    # Then it exits 0 once the task has finished, and the task's result is stored
    assert worker.wait(30) == 0
    assert slow.get(timeout=1) == "slow"
    # And every other task either ran to the end or is waiting in the broker, not leased
    started = deployment.ledger.tags("start")
    finished = deployment.ledger.tags("done")
    assert sorted(started) == sorted(finished)  # nothing was cut short
    stats = deployment.probe.stats()
    assert stats.in_flight == 0
    assert stats.ready == len(set(queued) - set(finished))
    assert "warm shutdown" in worker.log()

    # When a new worker starts, the rest run, each exactly once
    deployment.start_worker("-c", "2")
    assert {tag: r.get(timeout=20) for tag, r in queued.items()} == {t: t for t in queued}
    assert Counter(deployment.ledger.tags()) == Counter(["slow", *queued])


def test_a_second_sigterm_is_a_cold_stop_that_hands_the_running_task_back(
    deployment: Deployment,
) -> None:
    # Given a worker running a task that would take a minute, during a warm shutdown
    worker = deployment.start_worker("-c", "1").wait_ready()
    result = deployment.tasks.hang_once.delay("long")
    deployment.ledger.wait_for("long")
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("warm shutdown", 2)  # the supervisor's and the child's

    # When a second SIGTERM arrives
    worker.signal(signal.SIGTERM)

    # Then the worker stops now, and the unfinished task is back in the queue at once
    assert worker.wait(15) == 0
    assert "cold shutdown" in worker.log()
    stats = deployment.probe.stats()
    assert (stats.ready, stats.in_flight) == (1, 0)
    # And it runs to the end on the next worker
    deployment.start_worker("-c", "1")
    assert result.get(timeout=20) == "long"
    assert deployment.ledger.tags("done") == ["long"]


def test_warm_shutdown_hands_prefetched_tasks_back_at_once(deployment: Deployment) -> None:
    # Given a one-process worker with long leases (so a task not handed back would stay
    # "in flight" for 30 s) that prefetches 4 tasks out of 20 slow ones
    worker = deployment.start_worker("-c", "1", "--prefetch-multiplier", "4",
                                     broker_transport_options={"lease_seconds": 30})
    for n in range(20):
        deployment.tasks.sleepy.delay(f"slow-{n}", 1.0)
    first = wait_until(lambda: deployment.ledger.entries(), 20, "the first task to start")[0]
    wait_until(lambda: deployment.probe.stats().in_flight == 4, 5, "4 prefetched tasks")

    # When it gets SIGTERM while the first task runs
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0

    # Then the running task finished, and the 19 others are ready again right away
    assert deployment.ledger.tags("done") == [first.tag]
    stats = deployment.probe.stats()
    assert (stats.ready, stats.in_flight, stats.scheduled) == (19, 0, 0)
    assert "handed 3 prefetched task(s) back" in worker.log()


def test_max_tasks_per_child_recycles_the_process_and_loses_nothing(
    deployment: Deployment,
) -> None:
    # Given a one-process worker that replaces its process after 5 tasks
    worker = deployment.start_worker("-c", "1", "--max-tasks-per-child", "5")

    # When 23 tasks run
    results = [deployment.tasks.whoami.delay(f"task-{n}") for n in range(23)]
    pids = [r.get(timeout=60) for r in results]

    # Then each ran exactly once, and no process ran more than 5 of them
    assert Counter(deployment.ledger.tags()) == Counter(f"task-{n}" for n in range(23))
    per_process = Counter(pids)
    assert max(per_process.values()) <= 5
    assert len(per_process) >= 5  # ceil(23 / 5) processes at least
    assert worker.log().count("recycled") >= 4
    assert worker.running


def test_sigterm_to_the_process_group_is_a_warm_shutdown(deployment: Deployment) -> None:
    group_sigterm_is_a_warm_shutdown(deployment)


def test_after_a_group_sigterm_a_second_sigterm_to_the_supervisor_is_a_cold_stop(
    deployment: Deployment,
) -> None:
    sigquit_after_a_group_sigterm_is_a_cold_stop(deployment)
