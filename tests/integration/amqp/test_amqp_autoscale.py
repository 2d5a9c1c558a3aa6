"""Autoscaling on RabbitMQ (tests/integration/autoscale_cases.py), in a vhost of the
test's own."""

from __future__ import annotations

from autoscale_cases import (
    prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle,
    threads_grow_their_slots_under_a_backlog_and_shrink_when_idle,
)
from rabbit_harness import Deploy


def test_prefork_autoscale_grows_under_a_backlog_and_shrinks_when_idle(
        deploy: Deploy) -> None:
    prefork_grows_to_max_under_a_backlog_and_back_to_min_when_idle(deploy())


def test_threads_autoscale_grows_slots_under_a_backlog_and_shrinks_when_idle(
        deploy: Deploy) -> None:
    threads_grow_their_slots_under_a_backlog_and_shrink_when_idle(deploy())
