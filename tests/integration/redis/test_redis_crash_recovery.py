"""Workers that die or stop on Redis: the scenarios of test_crash_recovery.py and
lease_cases.py, run against a Redis broker and backend."""

from __future__ import annotations

import test_crash_recovery as scenarios
from lease_cases import a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused
from redis_harness import RedisDeployment


def test_a_task_whose_process_is_killed_runs_again_in_a_replacement(
    deployment: RedisDeployment,
) -> None:
    scenarios.test_a_task_whose_process_is_killed_runs_again_in_a_replacement(deployment)


def test_a_task_of_a_killed_worker_runs_on_a_new_worker(deployment: RedisDeployment) -> None:
    scenarios.test_a_task_of_a_killed_worker_runs_on_a_new_worker(deployment)


def test_a_task_that_kills_its_process_every_time_is_dead_lettered(
    deployment: RedisDeployment,
) -> None:
    scenarios.test_a_task_that_kills_its_process_every_time_is_dead_lettered(deployment)


def test_a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused(
    deployment: RedisDeployment,
) -> None:
    a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused(
        deployment, deployment.lease_seconds)
