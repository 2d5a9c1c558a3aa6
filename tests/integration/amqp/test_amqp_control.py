"""Inspect and control on real worker processes, on RabbitMQ (see control_cases.py), in
a vhost of each test's own (deleted after, with the bus's stream queues)."""

from __future__ import annotations

import control_cases
from rabbit_harness import Deploy


def test_two_nodes_answer_inspect_and_obey_control(deploy: Deploy) -> None:
    control_cases.two_nodes_answer_and_obey(deploy())


def test_a_duplicate_node_name_is_refused_at_start(deploy: Deploy) -> None:
    control_cases.duplicate_name_is_refused(deploy())


def test_cli_inspect_control_and_status_print_json(deploy: Deploy) -> None:
    control_cases.cli_json_shapes(deploy())
