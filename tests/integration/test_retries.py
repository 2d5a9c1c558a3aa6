"""Retries on a real worker: a failing task is tried again until it succeeds."""

from __future__ import annotations

from itertools import pairwise

from worker_harness import Deployment


def test_an_autoretried_task_runs_until_it_succeeds_and_its_result_arrives(
    deployment: Deployment,
) -> None:
    # Given a worker, and a task that fails twice with an error it autoretries for
    deployment.start_worker("-c", "2").wait_ready(2)

    # When it is sent
    result = deployment.tasks.flaky.delay("flaky", 2)

    # Then its result arrives after the third attempt
    assert result.get(timeout=20) == "flaky"
    runs = deployment.ledger.of("flaky")
    assert [run.tag for run in runs] == ["flaky"] * 3
    assert {run.id for run in runs} == {result.id}  # the same task, tried again
    assert all(b.t - a.t >= 0.2 for a, b in pairwise(runs))
