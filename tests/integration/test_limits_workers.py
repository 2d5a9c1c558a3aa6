"""Time limits and revoke with real worker processes on the embedded SQLite broker.

The tasks (``apps/limits_app.py``) write to a ledger, so the tests see which process ran
what, whether a task cleaned up, and that nothing ran twice. Times here are the
behaviour under test (a limit of 1 s fires after about 1 s), so they are asserted with
generous bounds; everything else waits for a condition with a deadline.
"""

from __future__ import annotations

import time

import pytest
from limits_app import LimitsTasks, register
from worker_harness import Deployment, WorkerProcess, wait_until

from celeriac import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded, states


class LimitsWorker(WorkerProcess):
    app_module = "limits_app"


@pytest.fixture
def tasks(deployment: Deployment) -> LimitsTasks:
    """The limits tasks on the deployment's App; its workers run ``-A limits_app``."""
    deployment.worker_class = LimitsWorker
    return register(deployment.app)


def _replaced(worker: WorkerProcess, pid: int, processes: int) -> bool:
    live = {child.pid for child in worker.children()}
    return len(live) == processes and pid not in live


def test_a_hard_time_limit_kills_only_the_offending_task(
    deployment: Deployment, tasks: LimitsTasks,
) -> None:
    # Given a prefork worker with two processes, one of them busy with a long task
    worker = deployment.start_worker("-c", "2", "--prefetch-multiplier", "1").wait_ready(2)
    neighbour = tasks.ledger.sleepy.delay("neighbour", 4.0)
    [beside] = deployment.ledger.wait_for("neighbour")

    # When a task stuck in a C call passes its hard time limit (1 s, given per call)
    # in the other process
    stuck = tasks.stuck.apply_async(("stuck",), time_limit=1.0)
    [start] = deployment.ledger.wait_for("stuck")
    assert start.pid != beside.pid

    # Then it fails with TimeLimitExceeded after about a second
    with pytest.raises(TimeLimitExceeded, match="time limit of 1s"):
        stuck.get(timeout=10)
    assert 0.9 < time.time() - start.t < 5
    assert stuck.state == states.FAILURE
    # and its process is replaced, while the neighbour finishes in its own, untouched
    wait_until(lambda: _replaced(worker, start.pid, 2), 20, "a replacement process")
    assert neighbour.get(timeout=10) == "neighbour"
    assert [e.pid for e in deployment.ledger.of("neighbour", "done")] == [beside.pid]
    assert "replacing this worker process" in worker.log()

    # And the worker keeps running; the stuck task never runs again
    assert [tasks.ledger.add.delay(n, n).get(timeout=10) for n in range(5)] == \
        [0, 2, 4, 6, 8]
    assert worker.running
    deployment.wait_for_queue()
    assert len(deployment.ledger.of("stuck")) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_soft_time_limit_lets_the_task_clean_up(
    deployment: Deployment, tasks: LimitsTasks, kind: str,
) -> None:
    # Given a worker whose settings give every task a soft limit of 0.5 s (hard 10 s)
    worker = deployment.start_worker("-c", "1", task_soft_time_limit=0.5,
                                     task_time_limit=10).wait_ready()
    task = tasks.spin if kind == "sync" else tasks.async_spin

    # When a task works for longer than that
    result = task.delay(kind, 30.0)

    # Then it sees its soft limit (an exception in its thread, or a cancellation), cleans
    # up, and fails with SoftTimeLimitExceeded, which it re-raised
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=10)
    [start] = deployment.ledger.of(kind)
    [cleanup] = deployment.ledger.of(kind, "cleanup")
    assert 0.4 < cleanup.t - start.t < 3
    assert deployment.ledger.of(kind, "done") == []
    # And the process was not replaced: the next task runs in the same one
    assert tasks.ledger.whoami.delay("after").get(timeout=10) == start.pid
    assert worker.running


def test_the_supervisor_kills_a_process_whose_event_loop_is_stuck(
    deployment: Deployment, tasks: LimitsTasks,
) -> None:
    # Given a worker with two processes and 5 s leases, one busy with a long task
    worker = deployment.start_worker("-c", "2", "--prefetch-multiplier", "1",
                                     broker_transport_options={"lease_seconds": 5.0})
    worker.wait_ready(2)
    neighbour = tasks.ledger.sleepy.delay("neighbour", 3.0)
    [beside] = deployment.ledger.wait_for("neighbour")

    # When an async task blocks the other process's event loop past its hard limit,
    # so that the process cannot enforce the limit itself
    blocker = tasks.block_loop.apply_async(("blocker",), time_limit=1.0)
    [start] = deployment.ledger.wait_for("blocker")

    # Then the supervisor kills that process a little after the deadline and stores the
    # task's failure
    with pytest.raises(TimeLimitExceeded, match="worker process was killed"):
        blocker.get(timeout=15)
    assert 2.5 < time.time() - start.t < 10
    wait_until(lambda: _replaced(worker, start.pid, 2), 20, "a replacement process")
    assert "killing it" in worker.log()
    # and the other process carried on
    assert neighbour.get(timeout=10) == "neighbour"
    assert [e.pid for e in deployment.ledger.of("neighbour", "done")] == [beside.pid]

    # And when the killed task's message comes back (its lease runs out), it is acked
    # without running again
    deployment.wait_for_queue(timeout=20)
    assert len(deployment.ledger.of("blocker")) == 1
    with pytest.raises(TimeLimitExceeded):
        deployment.app.AsyncResult(blocker.id).get(timeout=5)
    assert tasks.ledger.add.delay(2, 2).get(timeout=10) == 4


def test_a_revoke_sent_before_a_worker_starts_is_honoured(
    deployment: Deployment, tasks: LimitsTasks,
) -> None:
    # Given tasks queued while no worker runs, some of them revoked (one by its result)
    sent = [tasks.ledger.record.delay(f"task-{n}") for n in range(6)]
    revoked, kept = sent[::2], sent[1::2]
    deployment.app.control.revoke([result.id for result in revoked[1:]])
    revoked[0].revoke()
    later = tasks.ledger.record.apply_async(("later",), countdown=1.5)
    later.revoke()

    # When a worker starts
    deployment.start_worker("-c", "2").wait_ready(2)

    # Then the revoked tasks are marked REVOKED and acked without running; the rest run
    assert [r.get(timeout=10) for r in kept] == ["task-1", "task-3", "task-5"]
    for result in [*revoked, later]:
        with pytest.raises(TaskRevokedError, match="revoked before it ran"):
            result.get(timeout=10)
        assert result.state == states.REVOKED
    deployment.wait_for_queue()
    assert sorted(deployment.ledger.tags()) == ["task-1", "task-3", "task-5"]


def test_terminate_stops_a_running_task_and_the_worker_keeps_running(
    deployment: Deployment, tasks: LimitsTasks,
) -> None:
    # Given a task running (hanging) in a prefork worker
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    result = tasks.ledger.hang_once.delay("victim")
    [start] = deployment.ledger.wait_for("victim")

    # When it is revoked with terminate=True
    revoked_at = time.monotonic()
    result.revoke(terminate=True)

    # Then it ends REVOKED within about the poll interval, its process is replaced,
    # and it is not run again
    with pytest.raises(TaskRevokedError, match="terminated"):
        result.get(timeout=10)
    assert time.monotonic() - revoked_at < 5
    wait_until(lambda: _replaced(worker, start.pid, 2), 20, "a replacement process")
    assert tasks.ledger.add.delay(1, 2).get(timeout=10) == 3
    deployment.wait_for_queue()
    assert len(deployment.ledger.of("victim")) == 1
