"""Inspect and control on real worker processes, on SQLite (see control_cases.py)."""

from __future__ import annotations

import control_cases
from worker_harness import Deployment


def test_two_nodes_answer_inspect_and_obey_control(deployment: Deployment) -> None:
    control_cases.two_nodes_answer_and_obey(deployment)


def test_a_duplicate_node_name_is_refused_at_start(deployment: Deployment) -> None:
    control_cases.duplicate_name_is_refused(deployment)


def test_cli_inspect_control_and_status_print_json(deployment: Deployment) -> None:
    control_cases.cli_json_shapes(deployment)
