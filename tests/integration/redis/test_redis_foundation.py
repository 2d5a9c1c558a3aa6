"""The foundation's worker scenarios, run again on Redis (broker and result backend).

The tests are the integration suite's own, imported unchanged; the ``deployment``
fixture of this directory (see conftest.py) gives them a Redis deployment instead of the
embedded SQLite one. Killed and paused processes, killed workers, poison messages,
corrupt messages, priorities, countdowns, warm and cold shutdowns (the whole process
group signalled too), recycling and throughput: each holds on Redis as on SQLite.
"""

from __future__ import annotations

from test_bad_input import (
    test_a_worker_that_accepts_pickle_runs_a_pickled_task,
    test_a_worker_that_does_not_accept_pickle_dead_letters_a_pickled_task,
    test_corrupt_and_unknown_task_messages_are_dead_lettered_and_the_worker_goes_on,
)
from test_crash_recovery import (
    test_a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused,
    test_a_task_of_a_killed_worker_runs_on_a_new_worker,
    test_a_task_that_kills_its_process_every_time_is_dead_lettered,
    test_a_task_whose_process_is_killed_runs_again_in_a_replacement,
    test_an_early_acked_task_is_not_run_again_after_its_process_dies,
)
from test_pools import test_sync_and_async_tasks_run_in_the_same_worker
from test_retries import test_an_autoretried_task_runs_until_it_succeeds_and_its_result_arrives
from test_scheduling import (
    test_a_countdown_task_does_not_run_early_nor_hold_a_worker_slot,
    test_higher_priorities_run_first_and_fifo_within_a_priority,
)
from test_shutdown import (
    test_a_second_sigterm_is_a_cold_stop_that_hands_the_running_task_back,
    test_after_a_group_sigterm_a_second_sigterm_to_the_supervisor_is_a_cold_stop,
    test_max_tasks_per_child_recycles_the_process_and_loses_nothing,
    test_sigterm_lets_the_running_task_finish_and_loses_nothing,
    test_sigterm_to_the_process_group_is_a_warm_shutdown,
    test_warm_shutdown_hands_prefetched_tasks_back_at_once,
)
from test_throughput import test_20000_tasks_from_4_producers_are_each_executed_exactly_once

__all__ = [
    "test_20000_tasks_from_4_producers_are_each_executed_exactly_once",
    "test_a_countdown_task_does_not_run_early_nor_hold_a_worker_slot",
    "test_a_paused_workers_task_runs_elsewhere_and_its_late_result_is_refused",
    "test_a_second_sigterm_is_a_cold_stop_that_hands_the_running_task_back",
    "test_a_task_of_a_killed_worker_runs_on_a_new_worker",
    "test_a_task_that_kills_its_process_every_time_is_dead_lettered",
    "test_a_task_whose_process_is_killed_runs_again_in_a_replacement",
    "test_a_worker_that_accepts_pickle_runs_a_pickled_task",
    "test_a_worker_that_does_not_accept_pickle_dead_letters_a_pickled_task",
    "test_after_a_group_sigterm_a_second_sigterm_to_the_supervisor_is_a_cold_stop",
    "test_an_autoretried_task_runs_until_it_succeeds_and_its_result_arrives",
    "test_an_early_acked_task_is_not_run_again_after_its_process_dies",
    "test_corrupt_and_unknown_task_messages_are_dead_lettered_and_the_worker_goes_on",
    "test_higher_priorities_run_first_and_fifo_within_a_priority",
    "test_max_tasks_per_child_recycles_the_process_and_loses_nothing",
    "test_sigterm_lets_the_running_task_finish_and_loses_nothing",
    "test_sigterm_to_the_process_group_is_a_warm_shutdown",
    "test_sync_and_async_tasks_run_in_the_same_worker",
    "test_warm_shutdown_hands_prefetched_tasks_back_at_once",
]
