"""The worker failure cases on Kafka (results in SQLite), real processes.

The tests are the integration suite's own, imported unchanged; this directory's
``deployment`` fixture (conftest.py) puts them on Kafka: a killed process's task
runs again in its replacement, a killed worker's task runs on a new worker, a task that
kills its process every time is dead-lettered at the delivery limit, the tasks
finished before a redelivered poison are not run again, a paused worker's task runs
elsewhere and its late result is refused, and an early-acked task is not run again.
"""

from __future__ import annotations

from test_crash_recovery import (
    test_a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused,
    test_a_task_of_a_killed_worker_runs_on_a_new_worker,
    test_a_task_that_kills_its_process_every_time_is_dead_lettered,
    test_a_task_whose_process_is_killed_runs_again_in_a_replacement,
    test_an_early_acked_task_is_not_run_again_after_its_process_dies,
)
from test_poison_neighbour import test_tasks_finished_before_a_redelivered_poison_are_not_run_again

__all__ = [
    "test_a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused",
    "test_a_task_of_a_killed_worker_runs_on_a_new_worker",
    "test_a_task_that_kills_its_process_every_time_is_dead_lettered",
    "test_a_task_whose_process_is_killed_runs_again_in_a_replacement",
    "test_an_early_acked_task_is_not_run_again_after_its_process_dies",
    "test_tasks_finished_before_a_redelivered_poison_are_not_run_again",
]
