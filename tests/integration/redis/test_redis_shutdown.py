"""Shutdown on Redis: a process-group SIGTERM is warm (tests/integration/shutdown_cases.py)."""

from __future__ import annotations

from redis_harness import RedisDeployment
from shutdown_cases import (
    group_sigterm_is_a_warm_shutdown,
    sigquit_after_a_group_sigterm_is_a_cold_stop,
)


def test_sigterm_to_the_process_group_is_a_warm_shutdown(deployment: RedisDeployment) -> None:
    group_sigterm_is_a_warm_shutdown(deployment)


def test_after_a_group_sigterm_a_second_sigterm_to_the_supervisor_is_a_cold_stop(
    deployment: RedisDeployment,
) -> None:
    sigquit_after_a_group_sigterm_is_a_cold_stop(deployment)
