"""Lease scenarios run on every broker (RabbitMQ's others are in amqp/test_amqp_leases.py).

A worker paused past its lease (SIGSTOP: a VM migrated, a process swapped out, a
debugger) loses its tasks to the other workers, and when it goes on, its late result
and ack are refused (fencing): the result that stands is the one of the worker that
took the task over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

from worker_harness import Deployment


@contextlib.contextmanager
def paused(pid: int) -> Iterator[float]:
    """SIGSTOP ``pid`` (yielding when), and SIGCONT it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused(
        deployment: Deployment, lease_seconds: float) -> None:
    # Given two worker processes, one of them running a task that takes a few seconds
    worker = deployment.start_worker("-c", "2").wait_ready(2)
    result = deployment.tasks.nap_pid.delay("napper", 2 * lease_seconds)
    first = deployment.ledger.wait_for("napper")[0]

    # When that process is paused mid-task, past its lease
    with paused(first.pid) as stopped_at:
        # Then the other process runs the task once the lease has run out
        second = deployment.ledger.wait_for("napper", count=2, timeout=15)[1]
        assert second.pid != first.pid
        assert second.t - stopped_at < lease_seconds + 3.0
        assert result.get(timeout=10) == second.pid

    # And when the paused process goes on and finishes, its stale result is refused,
    # and says so in the log
    deployment.ledger.wait_for("napper", "done", count=2, timeout=15)
    worker.wait_for_log(f"lease on {result.id} lost", timeout=15)
    assert deployment.app.AsyncResult(result.id).get(timeout=5) == second.pid
    # The task ran twice (it was running when its process was paused), nothing else ran
    assert Counter(deployment.ledger.tags()) == {"napper": 2}
    deployment.wait_for_queue(ready=0, in_flight=0)
