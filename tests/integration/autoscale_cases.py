"""Autoscaling scenarios run on every broker (SQLite here, Redis and RabbitMQ in their folders).

The autoscaler reads the broker's queue lengths and the pool's numbers, so each broker
runs the same story: a backlog of slow tasks grows ``--autoscale=4,1`` to 4, the pool
goes back to 1 once idle, and every task ran exactly once. The cool-down is 1 s here
(``worker_autoscale_keepalive``) instead of Celery's 30 s.
"""

from __future__ import annotations

import uuid
from collections import Counter

from worker_harness import Deployment, Entry, WorkerProcess, wait_until

KEEPALIVE = 1.0
TASKS = 12
TASK_SECONDS = 0.8


def node_name() -> str:
    return f"autoscale-{uuid.uuid4().hex[:8]}@%h"


def start_autoscaled(deployment: Deployment, *args: str) -> WorkerProcess:
    """A worker with ``args`` that fetches one task per slot (so a backlog stays on the
    broker for the autoscaler to see) and gives idle slots back after ``KEEPALIVE``."""
    return deployment.start_worker("-n", node_name(), *args,
                                   worker_autoscale_keepalive=KEEPALIVE,
                                   worker_prefetch_multiplier=1)


def send_backlog(deployment: Deployment) -> list[str]:
    tags = [f"slow-{n}" for n in range(TASKS)]
    results = deployment.app.send_many([deployment.tasks.sleepy.s(tag, TASK_SECONDS)
                                        for tag in tags])
    for result in results:  # every task finished: none lost
        assert result.get(timeout=60) in tags
    return tags


def assert_each_ran_once(deployment: Deployment, tags: list[str]) -> None:
    starts = Counter(deployment.ledger.tags("start"))
    assert sorted(starts) == sorted(tags)
    assert set(starts.values()) == {1}, f"run twice: {[t for t, n in starts.items() if n > 1]}"
    assert sorted(deployment.ledger.tags("done")) == sorted(tags)  # none cut short


def most_at_once(entries: list[Entry]) -> int:
    """The most tasks that were running at the same moment, from start/done entries."""
    changes = sorted((e.t, 1 if e.event == "start" else -1) for e in entries)
    running = most = 0
    for _, change in changes:
        running += change
        most = max(most, running)
    return most


def prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle(
        deployment: Deployment) -> None:
    # Given a prefork worker started with --autoscale=4,1: it starts with one process
    worker = start_autoscaled(deployment, "--autoscale=4,1").wait_ready(1)
    assert len(worker.children()) == 1
    sizes: list[int] = []

    # When a backlog of slow tasks is queued
    tags = send_backlog_watching(deployment, worker, sizes)

    # Then the pool grew to 4 processes, which shared the work
    assert max(sizes) == 4, f"process counts seen: {sorted(set(sizes))}"
    assert "growing the pool from 1 to 4 process(es): queue backlog" in worker.log()
    assert len({e.pid for e in deployment.ledger.entries("start")}) > 1
    # And every task ran exactly once and to its end
    assert_each_ran_once(deployment, tags)

    # And once idle for the keepalive the pool shrinks back to 1, one process at a time
    wait_until(lambda: len(worker.children()) == 1, 30, "the pool back to 1 process")
    worker.wait_for_log("shrinking the pool from 2 to 1 process(es)")
    assert "idle for" in worker.log()
    assert "exited with code" not in worker.log()  # each shrunk process stopped cleanly
    assert worker.running


def send_backlog_watching(deployment: Deployment, worker: WorkerProcess,
                          sizes: list[int]) -> list[str]:
    """``send_backlog``, noting the number of worker processes while the tasks run."""
    tags = [f"slow-{n}" for n in range(TASKS)]
    results = deployment.app.send_many([deployment.tasks.sleepy.s(tag, TASK_SECONDS)
                                        for tag in tags])

    def finished() -> bool:
        sizes.append(len(worker.children()))
        return all(result.ready() for result in results)

    wait_until(finished, 60, f"{TASKS} tasks to finish")
    assert sorted(result.get(timeout=5) for result in results) == sorted(tags)
    return tags


def threads_grow_their_slots_under_a_backlog_and_shrink_when_idle(
        deployment: Deployment) -> None:
    # Given a threads worker started with --autoscale=4,1: one process, one slot
    worker = start_autoscaled(deployment, "-P", "threads", "--autoscale=4,1").wait_ready(1)

    # When a backlog of slow tasks is queued
    tags = send_backlog(deployment)

    # Then its one process ran 4 of them at once on the slots it grew
    entries = deployment.ledger.entries(None)
    assert most_at_once(entries) == 4
    assert len({e.pid for e in entries}) == 1
    assert "growing the pool from 1 to 4 slot(s): queue backlog" in worker.log()
    assert_each_ran_once(deployment, tags)

    # And once idle the slots go back to 1
    worker.wait_for_log("shrinking the pool from 2 to 1 slot(s)", timeout=30)
    assert len(worker.children()) == 1


def prefork_shrinks_idle_processes_and_keeps_the_busy_one(deployment: Deployment) -> None:
    # Given a prefork worker with --autoscale=3,1 running a long task on its one process
    worker = start_autoscaled(deployment, "--autoscale=3,1").wait_ready(1)
    tasks = deployment.tasks
    long = tasks.sleepy.delay("long", 10.0)
    (started,) = deployment.ledger.wait_for("long")
    # And short tasks queued behind it, which make the pool grow to 3
    short = deployment.app.send_many([tasks.sleepy.s(f"short-{n}", 0.3) for n in range(4)])
    wait_until(lambda: len(worker.children()) == 3, 30, "the pool grown to 3 processes")
    assert all(result.get(timeout=30).startswith("short") for result in short)

    # When the pool goes idle but for the long task, it shrinks back to 1 process
    wait_until(lambda: len(worker.children()) == 1, 30, "the pool back to 1 process")

    # Then the process kept is the one running the long task: it was not stopped
    assert not deployment.ledger.of("long", "done"), "the long task ended too early to tell"
    assert [child.pid for child in worker.children()] == [started.pid]
    # And the long task finishes there, once
    assert long.get(timeout=30) == "long"
    assert [entry.pid for entry in deployment.ledger.of("long")] == [started.pid]
